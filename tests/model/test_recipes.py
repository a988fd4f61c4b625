"""Recipes instead of saved tensors: the gated MLP's product, the RMSNorms' float32 copies and, in the LoRA adapters
that keep them, the norms' and the attention's outputs are not kept for the backward pass but made again from what
is kept anyway, for the same loss and gradients bit for bit."""

from __future__ import annotations

import gc
import weakref

import pytest


def _model(model_dir, precision: str, finetuning: str, lighter: bool):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lmforge.model.mlp import keep_gate_and_up_only
    from lmforge.model.norm import keep_narrow_norm_inputs

    torch.manual_seed(0)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    if finetuning == "lora":
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    if lighter:
        keep_gate_and_up_only(model)
        keep_narrow_norm_inputs(model)
    return model


def _step(model, batch_rows: int = 2):
    import torch

    ids = torch.arange(10, 10 + 16 * batch_rows).reshape(batch_rows, 16)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


class Recorded:
    """Weak references to the tensors recipes stood in for (`recipe_for`, or `note_recipe` with `noted`), and how
    many there were."""

    def __init__(self, monkeypatch, noted: bool = False):
        from lmforge.model import attention, mlp, norm, recipes

        self.refs: list = []
        name = "note_recipe" if noted else "recipe_for"
        original = getattr(recipes, name)

        def record(tensor, make, *more):
            self.refs.append(weakref.ref(tensor))
            return original(tensor, make, *more)

        for module in (mlp, norm, attention):  # where the recipes are used
            if hasattr(module, name):
                monkeypatch.setattr(module, name, record)

    def alive(self) -> int:
        gc.collect()
        return sum(ref() is not None for ref in self.refs)


@pytest.mark.parametrize("model_fixture", ["tiny_llama_dir", "tiny_qwen_dir"])
@pytest.mark.parametrize("precision, finetuning", [("bf16", "lora"), ("bf16", "full"), ("float32", "lora")])
def test_the_step_is_the_same_and_keeps_no_product_or_float32_copy(model_fixture, precision, finetuning, request,
                                                                   monkeypatch):
    import torch

    model_dir = request.getfixturevalue(model_fixture)
    plain_loss, plain_grads = _step(_model(model_dir, precision, finetuning, lighter=False))
    recorded = Recorded(monkeypatch)
    model = _model(model_dir, precision, finetuning, lighter=True)
    ids = torch.arange(10, 42).reshape(2, 16)
    loss = model(input_ids=ids, labels=ids).loss
    layers = model.config.num_hidden_layers
    # One product per layer; in bf16 a float32 copy per norm whose input is differentiated: all but the first
    # layer's first norm under LoRA (the frozen embeddings' output needs no gradient), and the final norm.
    widened = (2 * layers if finetuning == "full" else 2 * layers - 1) + 1 if precision == "bf16" else 0
    assert len(recorded.refs) == layers + widened
    assert recorded.alive() == 0  # the graph holds recipes, not these tensors
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert torch.equal(loss.detach(), plain_loss)
    assert grads.keys() == plain_grads.keys()
    assert all(torch.equal(grads[name], plain_grads[name]) for name in grads)


def test_other_saved_tensor_hooks_and_checkpointing_take_precedence(tiny_qwen_dir, monkeypatch):
    """Under activation checkpointing (or any other saved-tensor hooks) the recipes stand aside: the step is
    checkpointing's own, and still the same."""
    import torch

    plain_loss, plain_grads = _step(_model(tiny_qwen_dir, "bf16", "lora", lighter=False))
    recorded = Recorded(monkeypatch)
    model = _model(tiny_qwen_dir, "bf16", "lora", lighter=True)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.train()
    loss, grads = _step(model)
    assert len(recorded.refs) == 1  # the final norm only: it runs outside the checkpointed layers
    assert torch.equal(loss, plain_loss)
    assert all(torch.equal(grads[name], plain_grads[name]) for name in grads)
    recorded.refs.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        _step(_model(tiny_qwen_dir, "bf16", "lora", lighter=True))
    assert recorded.refs == []


def test_norms_without_gradients_or_in_float32_give_their_own_output(tiny_qwen_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from lmforge.model.norm import keep_narrow_norm_inputs

    for dtype in (torch.bfloat16, torch.float32):
        model = AutoModelForCausalLM.from_pretrained(str(tiny_qwen_dir), dtype=dtype)
        norm = model.model.layers[0].input_layernorm
        x = torch.randn(2, 5, model.config.hidden_size, dtype=dtype, requires_grad=True)
        expected = norm(x)
        assert keep_narrow_norm_inputs(model) == 2 * model.config.num_hidden_layers + 1
        assert norm.forward.__name__ == "_norm_forward"
        got = norm(x)
        assert torch.equal(got, expected) and got.dtype == dtype
        with torch.no_grad():
            assert torch.equal(norm(x), expected.detach())


def test_other_norms_keep_their_forward():
    import torch
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from lmforge.model.norm import is_llama_rms_norm, keep_narrow_norm_inputs

    assert is_llama_rms_norm(LlamaRMSNorm(16))
    assert not is_llama_rms_norm(GemmaRMSNorm(16))  # 1 + weight, computed in float32 throughout
    assert not is_llama_rms_norm(torch.nn.LayerNorm(16))

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gemma, self.layer = GemmaRMSNorm(16), torch.nn.LayerNorm(16)

    assert keep_narrow_norm_inputs(Block()) == 0


def test_training_loads_with_the_lighter_norms(tiny_llama_dir, tmp_path):
    from lmforge.commands.common import load_config
    from lmforge.model.tokenizer import load_tokenizer_and_template
    from lmforge.train.common import load_trainable_model
    from tests.train.conftest import tiny_args

    cfg = load_config("train", tiny_args(tiny_llama_dir, tmp_path / "out"))
    tokenizer, template = load_tokenizer_and_template(cfg.model, cfg.data)
    model = load_trainable_model(cfg, tokenizer, template)
    layer = model.base_model.model.model.layers[0]
    assert layer.input_layernorm.forward.__name__ == "_norm_forward"
    assert model.base_model.model.model.norm.forward.__name__ == "_norm_forward"




@pytest.fixture()
def cpu_bf16_attention(monkeypatch):
    """transformers' "sdpa" attention as bf16 training on a CPU has it (`lmforge.model.attention`), and recipes for
    tensors of any size (the tiny models' activations are all under `RECIPE_MIN_VALUES`)."""
    from transformers import AttentionInterface

    from lmforge.model import recipes
    from lmforge.model.attention import use_float32_sdpa_for_short_cpu_bf16

    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", AttentionInterface._global_mapping["sdpa"])
    use_float32_sdpa_for_short_cpu_bf16()
    monkeypatch.setattr(recipes, "RECIPE_MIN_VALUES", 1)


def _lora_as_trained(model_dir, precision: str):
    """A LoRA model with the forwards training gives it: lighter MLPs and norms, and lmforge's LoRA layers."""
    from lmforge.model.adapters import (
        cast_inputs_outside_autocast_only,
        scale_lora_weights_not_outputs,
    )

    model = _model(model_dir, precision, "lora", lighter=True)
    cast_inputs_outside_autocast_only(model)
    scale_lora_weights_not_outputs(model)
    return model


def _autocast_step(model):
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=next(model.parameters()).dtype == torch.bfloat16):
        loss = _forward(model)
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


def _forward(model):
    import torch

    ids = torch.arange(10, 42).reshape(2, 16)
    return model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss


@pytest.mark.parametrize("model_fixture", ["tiny_llama_dir", "tiny_qwen_dir"])
@pytest.mark.parametrize("precision", ["bf16", "float32"])
def test_lora_keeps_recipes_for_the_norm_and_attention_outputs(model_fixture, precision, request, monkeypatch,
                                                              cpu_bf16_attention):
    """The LoRA adapters after a norm (q, k, v; gate, up) and after attention (o) keep a recipe for their input:
    none of those tensors outlives the forward pass, and the step is the same bit for bit."""
    import torch

    from lmforge.model import adapters

    model_dir = request.getfixturevalue(model_fixture)
    with monkeypatch.context() as patched:
        patched.setattr(adapters, "noted_recipe", lambda tensor: None)  # every adapter keeps its input
        plain_loss, plain_grads = _autocast_step(_lora_as_trained(model_dir, precision))
    recorded = Recorded(monkeypatch, noted=True)
    model = _lora_as_trained(model_dir, precision)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = _forward(model)
    layers = model.config.num_hidden_layers
    # bf16: the norms whose input is differentiated (all but the first layer's first, under LoRA; and the final
    # norm), and each layer's attention (the tiny models group 4 query heads over 2 key/value heads).
    assert len(recorded.refs) == (2 * layers - 1 + 1 + layers if precision == "bf16" else 0)
    assert recorded.alive() == 0
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert torch.equal(loss.detach(), plain_loss)
    assert grads.keys() == plain_grads.keys()
    assert all(torch.equal(grads[name], plain_grads[name]) for name in grads)


def test_notes_and_recipes_go_with_their_step_without_the_garbage_collector(tiny_qwen_dir, monkeypatch,
                                                                            cpu_bf16_attention):
    """A note goes with its tensor, and a recipe with the backward pass that used it, by reference counting
    alone: no cycle keeps the tensors recipes are made from alive after the step; each recipe ran once."""
    from lmforge.model import recipes

    made, calls = [], []
    original = recipes._once

    def once(make):
        def counted():
            calls.append(1)
            return make()

        made.append(weakref.ref(counted))
        return original(counted)

    monkeypatch.setattr(recipes, "_once", once)
    model = _lora_as_trained(tiny_qwen_dir, "bf16")
    gc.collect()
    gc.disable()
    try:
        _autocast_step(model)
        alive = sum(ref() is not None for ref in made)
        notes = len(recipes._noted())
    finally:
        gc.enable()
    layers = model.config.num_hidden_layers
    assert len(made) == 3 * layers  # the notes of the norms and attention of the layers, and the final norm's
    assert alive == notes == 0
    # Each noted tensor kept by its adapters was made again once, however many adapters kept it (q, k and v;
    # gate and up); the final norm's output is kept by no adapter.
    assert len(calls) == 3 * layers - 1


def _saves(y):
    """What the matrix product's backward finds for its saved input (a recipe's value, or the tensor kept)."""
    return y.grad_fn._saved_self


def test_a_noted_recipe_is_found_only_for_the_living_tensor_it_was_noted_for(monkeypatch):
    """A recipe is found by the memory of its tensor: once that tensor is gone, another one over the same memory
    (here a new view of the same storage) is not given the old recipe, nor is a copy or another layout."""
    import torch

    from lmforge.model import recipes
    from lmforge.model.recipes import note_recipe, noted_recipe, recipe_for

    monkeypatch.setattr(recipes, "RECIPE_MIN_VALUES", 32)

    base = torch.randn(4, 8)
    marker = torch.full((4, 8), 7.0)
    noted = base.view(4, 8)
    note_recipe(noted, lambda: marker)
    assert noted_recipe(base.view(32)) is not None  # all of it, contiguous: linear layers save such views
    weight = torch.randn(8, 3, requires_grad=True)
    with recipe_for(noted, noted_recipe(noted)):
        assert torch.equal(_saves(noted @ weight), marker)  # inside the block, the recipe stands in for it
    assert torch.equal(_saves(noted @ weight), base)  # outside, the tensor is kept
    del noted
    assert noted_recipe(base.view(4, 8)) is None
    transposed = base.t()
    note_recipe(transposed, lambda: marker.t())
    assert noted_recipe(transposed) is not None
    assert noted_recipe(base.t().contiguous()) is None
    assert noted_recipe(base) is None  # the same memory, seen with other strides
    assert noted_recipe(base.t()[:, :2]) is None  # a part of it


def test_small_tensors_get_no_noted_recipe():
    """Under `RECIPE_MIN_VALUES` values a recipe costs more time than its memory is worth: none is noted."""
    import torch

    from lmforge.model.recipes import (
        RECIPE_MIN_VALUES,
        note_recipe,
        noted_recipe,
        worth_a_recipe,
    )

    small, large = torch.randn(RECIPE_MIN_VALUES - 1), torch.randn(RECIPE_MIN_VALUES)
    for tensor in (small, large):
        note_recipe(tensor, lambda tensor=tensor: tensor)
    assert noted_recipe(small) is None and noted_recipe(large) is not None
    with torch.no_grad():  # no gradients, no recipes
        other = torch.randn(RECIPE_MIN_VALUES)
        note_recipe(other, lambda: other)
        assert noted_recipe(other) is None
    on_meta = torch.empty(RECIPE_MIN_VALUES, device="meta")  # another device than the CPU: not measured there
    assert not worth_a_recipe(on_meta) and worth_a_recipe(large)

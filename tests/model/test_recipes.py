"""Recipes instead of saved tensors: the gated MLP's product, the RMSNorms' float32 copies and, within each decoder
layer's recipe book, the norms' and the attention's outputs are not kept for the backward pass but made again from
what is kept anyway, for the same loss and gradients bit for bit."""

from __future__ import annotations

import gc
import weakref

import pytest


def _model(model_dir, precision: str, finetuning: str, lighter: bool, books: bool = False):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lmforge.model.mlp import keep_gate_and_up_only
    from lmforge.model.norm import keep_narrow_norm_inputs
    from lmforge.model.recipes import open_books_per_layer

    torch.manual_seed(0)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    if finetuning == "lora":
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    if lighter:
        keep_gate_and_up_only(model)
        keep_narrow_norm_inputs(model)
    if books:
        assert open_books_per_layer(model) == model.config.num_hidden_layers
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
    """transformers' "sdpa" attention as bf16 training on a CPU has it (`lmforge.model.attention`)."""
    from transformers import AttentionInterface

    from lmforge.model.attention import use_float32_sdpa_for_short_cpu_bf16

    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", AttentionInterface._global_mapping["sdpa"])
    use_float32_sdpa_for_short_cpu_bf16()


@pytest.mark.parametrize("model_fixture", ["tiny_llama_dir", "tiny_qwen_dir"])
@pytest.mark.parametrize("precision, finetuning", [("bf16", "lora"), ("bf16", "full"), ("float32", "lora")])
def test_layer_books_keep_no_norm_or_attention_output(model_fixture, precision, finetuning, request, monkeypatch,
                                                      cpu_bf16_attention):
    """Within each decoder layer's book, what the projections keep of the norms' outputs and of the attention's
    output is a recipe: none of those tensors outlives the forward pass, and the step is the same bit for bit."""
    import torch

    model_dir = request.getfixturevalue(model_fixture)
    plain_loss, plain_grads = _step(_model(model_dir, precision, finetuning, lighter=True))
    recorded = Recorded(monkeypatch, noted=True)
    model = _model(model_dir, precision, finetuning, lighter=True, books=True)
    ids = torch.arange(10, 42).reshape(2, 16)
    loss = model(input_ids=ids, labels=ids).loss
    layers = model.config.num_hidden_layers
    # bf16: the two norms of each layer whose input is differentiated (all but the first layer's first under
    # LoRA), each layer's attention (the tiny models group 4 query heads over 2 key/value heads), and the final
    # norm, which is outside the layers: no book takes its recipe.
    noted = (3 * layers if finetuning == "full" else 3 * layers - 1) + 1 if precision == "bf16" else 0
    assert len(recorded.refs) == noted
    gc.collect()
    assert all(ref() is None for ref in recorded.refs[:-1])  # the layers' (the final norm's is last)
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert torch.equal(loss.detach(), plain_loss)
    assert grads.keys() == plain_grads.keys()
    assert all(torch.equal(grads[name], plain_grads[name]) for name in grads)


def test_a_book_is_freed_with_its_graph_without_the_garbage_collector(tiny_qwen_dir, monkeypatch,
                                                                      cpu_bf16_attention):
    """The hooks a book leaves with autograd refer to its recipes, not to the book: no reference cycle keeps a
    layer's recipes (and the tensors they were made from) alive after the step."""
    from lmforge.model import recipes

    books, makes = [], []
    original = recipes._Book.add

    def add(self, tensor, make):
        books.append(weakref.ref(self))
        makes.append(weakref.ref(make))
        return original(self, tensor, make)

    monkeypatch.setattr(recipes._Book, "add", add)
    model = _model(tiny_qwen_dir, "bf16", "lora", lighter=True, books=True)
    gc.collect()
    gc.disable()
    try:
        _step(model)
        books_alive = sum(ref() is not None for ref in books)
        makes_alive = sum(ref() is not None for ref in makes)
    finally:
        gc.enable()
    # Per layer: the q/k/v copies, the attention output, the norms' copies and outputs, the MLP's product.
    assert len(makes) >= 8 * model.config.num_hidden_layers
    assert books_alive == makes_alive == 0  # freed by reference counting alone


def _saves(y):
    """What the matrix product's backward finds for its saved input (a recipe's value, or the tensor kept)."""
    return y.grad_fn._saved_self


def test_a_noted_recipe_matches_only_the_living_tensor_it_was_noted_for():
    """A recipe is found by the memory of its tensor: once that tensor is gone, another one over the same memory
    (here a new view of the same storage) is kept as itself, not replaced by the old recipe."""
    import torch

    from lmforge.model.recipes import note_recipe, recipe_book

    base = torch.randn(4, 8)
    weight = torch.randn(8, 3, requires_grad=True)
    marker = torch.full((4, 8), 7.0)
    with recipe_book():
        noted = base.view(4, 8)
        note_recipe(noted, lambda: marker)
        assert torch.equal(_saves(noted @ weight), marker)  # while it lives, the recipe stands in for it
        del noted
        again = base.view(4, 8)
        assert torch.equal(_saves(again @ weight), base)
    with recipe_book():
        transposed = base.t()
        note_recipe(transposed, lambda: marker.t())
        assert torch.equal(_saves(transposed @ torch.randn(4, 2, requires_grad=True)), marker.t())
        # A copy elsewhere, or the same memory seen with other strides, is not the noted tensor.
        assert torch.equal(_saves(base.t().contiguous() @ torch.randn(4, 2, requires_grad=True)), base.t())
        assert torch.equal(_saves(base.view(8, 4) @ torch.randn(4, 2, requires_grad=True)), base.view(8, 4))
    note_recipe(base, lambda: marker)  # no book open: nothing happens
    assert torch.equal(_saves(base @ weight), base)


def test_training_opens_a_book_per_layer(tiny_llama_dir, tmp_path):
    from lmforge.commands.common import load_config
    from lmforge.model.tokenizer import load_tokenizer_and_template
    from lmforge.train.common import load_trainable_model
    from tests.train.conftest import tiny_args

    cfg = load_config("train", tiny_args(tiny_llama_dir, tmp_path / "out"))
    tokenizer, template = load_tokenizer_and_template(cfg.model, cfg.data)
    model = load_trainable_model(cfg, tokenizer, template)
    layers = model.base_model.model.model.layers
    assert [layer.forward.__name__ for layer in layers] == ["_layer_forward"] * len(layers)

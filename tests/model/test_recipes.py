"""Recipes instead of saved tensors: the gated MLP's product and the RMSNorms' float32 copies are not kept for the
backward pass but made again from what is kept anyway, for the same loss and gradients bit for bit."""

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
    """Weak references to the tensors recipes stood in for, and how many there were."""

    def __init__(self, monkeypatch):
        from lmforge.model import mlp, norm, recipes

        self.refs: list = []
        original = recipes.recipe_for

        def recipe_for(tensor, make):
            self.refs.append(weakref.ref(tensor))
            return original(tensor, make)

        for module in (mlp, norm):  # where the recipes are used
            monkeypatch.setattr(module, "recipe_for", recipe_for)

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

"""Llama-style SiLU MLPs keep the gate and up projections for the backward pass, not silu(gate) as well: the
same loss and gradients bit for bit, one intermediate-size tensor per token and layer less."""

from __future__ import annotations

import pytest


def _step(model_dir, keep_two: bool, precision: str, finetuning: str = "lora"):
    """One training step of a tiny model: the loss, every gradient, the model, the bytes kept for backward."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lmforge.model.mlp import keep_gate_and_up_only

    torch.manual_seed(0)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    if finetuning == "lora":
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    changed = keep_gate_and_up_only(model) if keep_two else 0
    kept = {}

    def pack(tensor):
        kept.setdefault(tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        return tensor

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    ids = torch.arange(10, 42).reshape(2, 16)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    saved = sum(size for ptr, size in kept.items() if ptr not in params)
    return loss.detach(), grads, model, changed, saved


@pytest.mark.parametrize("model_fixture", ["tiny_llama_dir", "tiny_qwen_dir"])
@pytest.mark.parametrize("precision", ["bf16", "float32"])
def test_the_step_is_the_same_with_one_tensor_less_per_layer(model_fixture, precision, request):
    import torch

    model_dir = request.getfixturevalue(model_fixture)
    loss, grads, model, changed, saved = _step(model_dir, True, precision)
    plain_loss, plain_grads, _, _, plain_saved = _step(model_dir, False, precision)
    config = model.config
    assert changed == config.num_hidden_layers
    assert model.base_model.model.model.layers[0].mlp.forward.__name__ == "_mlp_forward"
    assert torch.equal(loss, plain_loss)
    assert grads.keys() == plain_grads.keys() and len(grads) == config.num_hidden_layers * 7 * 2
    assert all(torch.equal(grads[name], plain_grads[name]) for name in grads)
    # silu(gate) is no longer kept: 2 x 16 tokens x intermediate_size values per layer.
    element = 2 if precision == "bf16" else 4
    assert plain_saved - saved == config.num_hidden_layers * 32 * config.intermediate_size * element


def test_full_finetuning_gets_the_same_gradients(tiny_llama_dir):
    import torch

    loss, grads, _, changed, _ = _step(tiny_llama_dir, True, "float32", finetuning="full")
    plain_loss, plain_grads, _, _, _ = _step(tiny_llama_dir, False, "float32", finetuning="full")
    assert changed > 0 and torch.equal(loss, plain_loss)
    assert grads["model.layers.0.mlp.gate_proj.weight"] is not None
    assert all(torch.equal(grads[name], plain_grads[name]) for name in grads)


def test_without_gradients_the_output_is_the_mlps_own(tiny_qwen_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from lmforge.model.mlp import keep_gate_and_up_only

    model = AutoModelForCausalLM.from_pretrained(str(tiny_qwen_dir), dtype=torch.float32)
    mlp = model.model.layers[0].mlp
    x = torch.randn(2, 5, model.config.hidden_size)
    with torch.no_grad():
        expected = mlp(x)
        keep_gate_and_up_only(model)
        got = mlp(x)
    assert torch.equal(got, expected)
    assert got.grad_fn is None


def test_other_mlps_keep_their_forward():
    """GELU MLPs, and MLPs whose forward is not the plain expression, are left alone."""
    import torch
    from transformers import GemmaConfig, LlamaConfig
    from transformers.models.gemma.modeling_gemma import GemmaMLP
    from transformers.models.llama.modeling_llama import LlamaMLP

    from lmforge.model.mlp import is_gated_silu_mlp, keep_gate_and_up_only

    small = {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8}
    assert is_gated_silu_mlp(LlamaMLP(LlamaConfig(**small)))
    assert not is_gated_silu_mlp(GemmaMLP(GemmaConfig(**small)))  # gelu
    assert not is_gated_silu_mlp(LlamaMLP(LlamaConfig(hidden_act="relu", **small)))

    class ScaledMLP(LlamaMLP):
        def forward(self, x):
            down_proj = self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
            return 2 * down_proj

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scaled, self.gelu = ScaledMLP(LlamaConfig(**small)), GemmaMLP(GemmaConfig(**small))

    block = Block()
    assert keep_gate_and_up_only(block) == 0
    assert "forward" not in vars(block.scaled) and "forward" not in vars(block.gelu)


def test_training_loads_with_the_lighter_mlp(tiny_llama_dir, tmp_path):
    from lmforge.commands.common import load_config
    from lmforge.model.tokenizer import load_tokenizer_and_template
    from lmforge.train.common import load_trainable_model
    from tests.train.conftest import tiny_args

    cfg = load_config("train", tiny_args(tiny_llama_dir, tmp_path / "out"))
    tokenizer, template = load_tokenizer_and_template(cfg.model, cfg.data)
    model = load_trainable_model(cfg, tokenizer, template)
    assert model.base_model.model.model.layers[0].mlp.forward.__name__ == "_mlp_forward"

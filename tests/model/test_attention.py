"""bf16 training on a CPU: attention over short sequences goes through SDPA's float32 kernel, with the values that
kernel gives on the same inputs; everything else (long sequences, no gradients, float32) is left as it was."""

from __future__ import annotations

import pytest


@pytest.fixture()
def wrapped_sdpa(monkeypatch):
    """transformers' "sdpa" attention after `use_float32_sdpa_for_short_cpu_bf16`; the original is restored after."""
    from transformers import AttentionInterface

    from lmforge.model.attention import use_float32_sdpa_for_short_cpu_bf16

    current = AttentionInterface._global_mapping["sdpa"]
    original = getattr(current, "lmforge_wrapped", current)  # a training run in this process may have wrapped it
    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", original)
    use_float32_sdpa_for_short_cpu_bf16()
    use_float32_sdpa_for_short_cpu_bf16()  # a second call does not wrap the wrapper
    wrapped = AttentionInterface._global_mapping["sdpa"]
    assert wrapped is not original and wrapped.lmforge_wrapped is original
    return wrapped, original


class _Attention:
    """What transformers' SDPA function reads from an attention module (Qwen2.5-0.5B's 14 heads over 2 kv heads)."""
    num_key_value_groups = 7
    is_causal = True
    training = True


def _qkv(length: int, batch: int = 2, requires_grad: bool = True):
    import torch

    generator = torch.Generator().manual_seed(length)
    shapes = [(batch, 14, length, 16), (batch, 2, length, 16), (batch, 2, length, 16)]
    return [torch.randn(s, generator=generator).bfloat16().requires_grad_(requires_grad) for s in shapes]


def _run(function, tensors, mask=None, autocast=True):
    """Output and input gradients of one attention call, as a bf16 training step makes it."""
    import torch

    leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in tensors]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        output, _ = function(_Attention(), *leaves, mask, scaling=0.25)
    if not output.requires_grad:
        return output, []
    output.float().square().sum().backward()
    return output, [t.grad for t in leaves]


def _reference_float32(original, tensors, mask=None):
    """The same attention in float32 from the same bf16 inputs, rounded to bf16: what the wrapper must give."""
    import torch

    def float32_attention(module, q, k, v, attention_mask, **kwargs):
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.float()
        output, weights = original(module, q.float(), k.float(), v.float(), attention_mask, **kwargs)
        return output.to(torch.bfloat16), weights

    return _run(float32_attention, tensors, mask, autocast=False)


@pytest.mark.parametrize("mask_kind", [None, "bool", "additive"])
def test_short_bf16_attention_with_gradients_is_computed_in_float32(wrapped_sdpa, mask_kind):
    import torch

    wrapped, original = wrapped_sdpa
    tensors = _qkv(40)
    mask = None
    if mask_kind is not None:  # the second row is left-padded by 5 tokens
        keep = torch.ones(2, 1, 40, 40, dtype=torch.bool).tril()
        keep[1, :, :, :5] = False
        keep[1, :, :5, :5] = torch.eye(5, dtype=torch.bool)  # padding rows see themselves (no empty softmax)
        mask = keep if mask_kind == "bool" else torch.zeros(keep.shape, dtype=torch.bfloat16).masked_fill(
            ~keep, torch.finfo(torch.bfloat16).min)
    output, grads = _run(wrapped, tensors, mask)
    expected, expected_grads = _reference_float32(original, tensors, mask)
    assert output.dtype == torch.bfloat16 and output.shape == (2, 40, 14, 16)
    assert torch.equal(output, expected)
    assert all(torch.equal(g, e) for g, e in zip(grads, expected_grads, strict=True))
    # ...and it is the same attention as the bf16 kernel's, within bf16 rounding.
    bf16_output, bf16_grads = _run(original, tensors, mask)
    assert not torch.equal(output, bf16_output)
    torch.testing.assert_close(output, bf16_output, atol=0.02, rtol=0.02)
    for g, e in zip(grads, bf16_grads, strict=True):
        torch.testing.assert_close(g, e, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("case", ["192 keys", "no gradients wanted", "grad mode off", "float32"])
def test_other_attention_keeps_transformers_own_kernel(wrapped_sdpa, case):
    import torch

    wrapped, original = wrapped_sdpa
    tensors = _qkv(192 if case == "192 keys" else 40, requires_grad=case != "no gradients wanted")
    if case == "float32":
        tensors = [t.detach().float().requires_grad_() for t in tensors]
    autocast = case != "float32"  # float32 training runs without autocast
    with torch.set_grad_enabled(case != "grad mode off"):
        output, grads = _run(wrapped, tensors, autocast=autocast)
        expected, expected_grads = _run(original, tensors, autocast=autocast)
    assert output.dtype == tensors[0].dtype
    assert torch.equal(output, expected)
    assert len(grads) == (3 if case in ("192 keys", "float32") else 0)
    assert all(torch.equal(g, e) for g, e in zip(grads, expected_grads, strict=True))


def _sdpa_node(output):
    """The attention kernel's backward node behind `output`."""
    pending = [output.grad_fn]
    while pending:
        node = pending.pop()
        if "ScaledDotProduct" in type(node).__name__:
            return node
        pending.extend(next_node for next_node, _ in node.next_functions if next_node is not None)
    raise AssertionError("no attention kernel in the graph")


@pytest.mark.parametrize("length", [40, 192])
def test_grouped_query_attention_keeps_the_key_value_heads_only(wrapped_sdpa, length):
    """transformers repeats the 2 key/value heads to the 14 query heads whenever there is a mask, and the kernel
    keeps the copies for its backward pass; the wrapper lets the kernel group the heads itself."""
    import torch

    wrapped, original = wrapped_sdpa
    mask = torch.ones(2, 1, length, length, dtype=torch.bool).tril()
    kept = {}
    for name, function in (("wrapped", wrapped), ("original", original)):
        leaves = [t.detach().clone().requires_grad_() for t in _qkv(length)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output, _ = function(_Attention(), *leaves, mask, scaling=0.25)
        node = _sdpa_node(output)
        kept[name] = [tuple(node._saved_key.shape), tuple(node._saved_value.shape)]
    assert kept["wrapped"] == [(2, 2, length, 16)] * 2
    assert kept["original"] == [(2, 14, length, 16)] * 2


def test_a_bf16_training_step_sees_the_float32_attention(wrapped_sdpa, tiny_qwen_dir):
    """A whole model: the loss and the adapters' gradients of a bf16 LoRA step equal those of the same model whose
    attention is the float32 reference, and differ from the bf16 kernel's only by rounding."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AttentionInterface, AutoModelForCausalLM

    wrapped, original = wrapped_sdpa

    def step(attention):
        AttentionInterface._global_mapping["sdpa"] = attention
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(str(tiny_qwen_dir), dtype=torch.bfloat16,
                                                    attn_implementation="sdpa")
        model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.float()
        ids = torch.arange(10, 58).reshape(2, 24)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), [p.grad for p in model.parameters() if p.requires_grad]

    def float32_reference(module, q, k, v, mask, **kwargs):
        with torch.autocast("cpu", enabled=False):
            output, weights = original(module, q.float(), k.float(), v.float(), mask, **kwargs)
        return output.to(q.dtype), weights

    loss, grads = step(wrapped)
    expected_loss, expected_grads = step(float32_reference)
    bf16_loss, bf16_grads = step(original)
    assert torch.equal(loss, expected_loss)
    assert all(torch.equal(g, e) for g, e in zip(grads, expected_grads, strict=True))
    assert not all(torch.equal(g, e) for g, e in zip(grads, bf16_grads, strict=True))  # the kernels differ...
    assert float(loss) == pytest.approx(float(bf16_loss), rel=1e-2)  # ...by rounding
    assert len(grads) == len(bf16_grads) > 0


def test_bf16_training_on_a_cpu_installs_it(monkeypatch, tiny_qwen_dir, tmp_path):
    from transformers import AttentionInterface

    from lmforge.commands.common import load_config
    from lmforge.model.tokenizer import load_tokenizer_and_template
    from lmforge.train.common import load_trainable_model
    from lmforge.utils import hardware
    from tests.train.conftest import tiny_args

    current = AttentionInterface._global_mapping["sdpa"]
    original = getattr(current, "lmforge_wrapped", current)  # a training run in this process may have wrapped it
    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", original)
    monkeypatch.setattr(hardware, "cpu_only", lambda: True)  # the same answer on a machine with a GPU

    def sdpa_after_loading(**keys):
        AttentionInterface._global_mapping["sdpa"] = original
        cfg = load_config("train", tiny_args(tiny_qwen_dir, tmp_path / "out", template="qwen", **keys))
        tokenizer, template = load_tokenizer_and_template(cfg.model, cfg.data)
        load_trainable_model(cfg, tokenizer, template)
        return AttentionInterface._global_mapping["sdpa"]

    assert sdpa_after_loading(bf16="false") is original
    assert sdpa_after_loading(pure_bf16="true").lmforge_wrapped is original

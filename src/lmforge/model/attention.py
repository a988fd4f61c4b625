"""SDPA for bf16 training on a CPU: short sequences go through the float32 kernel.

torch's CPU flash-attention kernel is fast in bf16 for the forward pass, but its bf16 backward pass is slow on
short sequences: at 96 keys (14 heads of 64) forward and backward take 2.3 ms in bf16 against 1.0 ms with the
inputs cast to float32, and below 192 keys bf16 is slower at every length measured (64 to 184, batch 1 and 4,
with and without a padding mask; from 192 keys on, bf16 is as fast or faster). On a 0.5B model trained on
samples of about 100 tokens that is about 5% of the step. The float32 kernel computes the same attention in
higher precision; the output is rounded back to bf16, so the model sees the dtype it expects.

Only attention that will be differentiated takes that path: inference and no-grad forward passes (evaluation,
generation, a frozen reference model) keep the bf16 kernel, which is faster without a backward pass.
"""

from __future__ import annotations

# Keys below this length use the float32 kernel (measured crossover, see the module docstring).
FP32_BELOW_KEYS = 192


def _wants_float32(query, key, value) -> bool:
    import torch

    return (query.device.type == "cpu" and query.dtype == torch.bfloat16 and key.shape[-2] < FP32_BELOW_KEYS
            and torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad))


def _float32_for_short_cpu_bf16(sdpa):
    """Wrap transformers' SDPA attention function (see the module docstring)."""
    import torch

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        if not _wants_float32(query, key, value):
            return sdpa(module, query, key, value, attention_mask, *args, **kwargs)
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.float()  # an additive mask must match the query's dtype
        bias = kwargs.get("position_bias")
        if bias is not None and bias.is_floating_point():
            kwargs["position_bias"] = bias.float()
        # Autocast would cast the float32 inputs straight back to bf16 (SDPA is on its lower-precision list).
        with torch.autocast("cpu", enabled=False):
            output, weights = sdpa(module, query.float(), key.float(), value.float(), attention_mask, *args, **kwargs)
        return output.to(query.dtype), weights

    attention.lmforge_wrapped = sdpa
    return attention


def use_float32_sdpa_for_short_cpu_bf16() -> None:
    """Route transformers' "sdpa" attention through `_float32_for_short_cpu_bf16` in this process (idempotent).

    The choice is made per call from the tensors (CPU, bf16, under 192 keys, gradients wanted), so models that do
    not train in bf16 on a CPU are unaffected.
    """
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    current = ALL_ATTENTION_FUNCTIONS["sdpa"]
    if getattr(current, "lmforge_wrapped", None) is None:
        AttentionInterface.register("sdpa", _float32_for_short_cpu_bf16(current))

"""SDPA for bf16 training on a CPU: short sequences go through the float32 kernel, grouped-query attention
through the kernel's own grouping.

torch's CPU flash-attention kernel is fast in bf16 for the forward pass, but its bf16 backward pass is slow on
short sequences: at 96 keys (14 heads of 64) forward and backward take 2.3 ms in bf16 against 1.0 ms with the
inputs cast to float32, and below 192 keys bf16 is slower at every length measured (64 to 184, batch 1 and 4,
with and without a padding mask; from 192 keys on, bf16 is as fast or faster). On a 0.5B model trained on
samples of about 100 tokens that is about 5% of the step. The float32 kernel computes the same attention in
higher precision; the output is rounded back to bf16, so the model sees the dtype it expects.

The kernel keeps its inputs and output for the backward pass. Of the float32 inputs it keeps recipes (the bf16
tensors, widened again when asked: `lmforge.model.recipes`), and the output projection's adapter keeps a recipe
for its copy of the output (`note_recipe`). Where query heads share key/value heads (Qwen2.5-0.5B: 14 over 2),
transformers repeats the key/value heads whenever there is a padding mask, and the kernel keeps those copies;
here the kernel groups the heads itself (`enable_gqa`), which is also faster (0.5B shapes at batch 2, forward
and backward: 2.1 -> 1.7 ms at 96 keys in float32, 13.4 -> 10.5 ms at 256 keys in bf16). Per layer and token of
the 0.5B model that is 10 KB kept less (6.5 KB of float32 key/value copies, 1.8 KB of float32 queries, 1.8 KB
of attention output), 0.24 MB per token over its 24 layers.

Only attention that will be differentiated takes that path: inference and no-grad forward passes (evaluation,
generation, a frozen reference model) keep transformers' own, which is faster without a backward pass.
"""

from __future__ import annotations

from contextlib import nullcontext

from lmforge.model.recipes import note_recipe, recipe_for, worth_a_recipe

# Keys below this length use the float32 kernel (measured crossover, see the module docstring).
FP32_BELOW_KEYS = 192
# Keyword arguments of transformers' SDPA attention that `_grouped_attention` does not reproduce.
_SPECIAL_KEYS = ("softcap", "position_bias", "output_attentions")


def _trains_in_bf16_on_cpu(query, key, value) -> bool:
    import torch

    return (query.device.type == "cpu" and query.dtype == torch.bfloat16 and torch.is_grad_enabled()
            and (query.requires_grad or key.requires_grad or value.requires_grad))


def _groups_natively(module, query, key, args, kwargs) -> bool:
    """Whether this call is a plain grouped-query self-attention that `_grouped_attention` computes as
    transformers' function would."""
    groups = getattr(module, "num_key_value_groups", 1)
    special = [kwargs.get(name) for name in _SPECIAL_KEYS]
    return (not args and all(value is None or value is False for value in special) and groups > 1
            and query.shape[1] == key.shape[1] * groups and query.shape[2] == key.shape[2] > 1)


def _grouped_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                       **_kwargs):
    """transformers' SDPA attention before its final transpose, with the kernel's own grouped-query attention.

    transformers repeats the key and value heads to the query heads' number on a CPU whenever there is a mask
    (any padded batch), and autograd keeps those copies: for 14 query heads over 2 key/value heads, 7 times the
    keys and values. The kernel's own GQA (`enable_gqa`) reads the key/value heads where they are; its outputs
    are the same and the key/value gradients differ only by the order of a sum over the group.
    """
    import torch

    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    return torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
        is_causal=query.shape[2] > 1 and attention_mask is None and is_causal, enable_gqa=True)


def _cpu_bf16_training(sdpa):
    """Wrap transformers' SDPA attention function (see the module docstring)."""
    import torch

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        if not _trains_in_bf16_on_cpu(query, key, value):
            return sdpa(module, query, key, value, attention_mask, *args, **kwargs)
        grouped = _groups_natively(module, query, key, args, kwargs)
        inputs = query, key, value
        keep = nullcontext()
        if key.shape[-2] < FP32_BELOW_KEYS:
            if attention_mask is not None and attention_mask.is_floating_point():
                attention_mask = attention_mask.float()  # an additive mask must match the query's dtype
            bias = kwargs.get("position_bias")
            if bias is not None and bias.is_floating_point():
                kwargs["position_bias"] = bias.float()
            inputs = query.float(), key.float(), value.float()
            if worth_a_recipe(query):
                # The kernel keeps its float32 inputs for the backward pass: recipes from the bf16 ones instead,
                # half the size (`lmforge.model.recipes`; widening gives the same bits again).
                keep = recipe_for(inputs[0], lambda: query.float(), (inputs[1], lambda: key.float()),
                                  (inputs[2], lambda: value.float()))
        # Autocast would cast float32 inputs straight back to bf16 (SDPA is on its lower-precision list).
        with torch.autocast("cpu", enabled=False) if inputs[0] is not query else nullcontext(), keep:
            if not grouped:
                output, weights = sdpa(module, *inputs, attention_mask, *args, **kwargs)
                return output.to(query.dtype), weights
            heads_first = _grouped_attention(module, *inputs, attention_mask, **kwargs)
        output = heads_first.transpose(1, 2).contiguous().to(query.dtype)
        # The output projection's adapter keeps its input: a recipe for it, the same copy again from the
        # kernel's output, which the kernel keeps for its own backward pass.
        note_recipe(output, lambda: heads_first.transpose(1, 2).contiguous().to(query.dtype))
        return output, None

    attention.lmforge_wrapped = sdpa
    return attention


def use_float32_sdpa_for_short_cpu_bf16() -> None:
    """Route transformers' "sdpa" attention through `_cpu_bf16_training` in this process (idempotent).

    The choice is made per call from the tensors (CPU, bf16, gradients wanted; float32 under 192 keys; the
    kernel's own grouping for plain grouped-query calls), so models that do not train in bf16 on a CPU are
    unaffected.
    """
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    current = ALL_ATTENTION_FUNCTIONS["sdpa"]
    if getattr(current, "lmforge_wrapped", None) is None:
        AttentionInterface.register("sdpa", _cpu_bf16_training(current))

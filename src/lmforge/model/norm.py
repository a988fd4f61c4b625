"""RMSNorms that keep their bf16 input for the backward pass instead of its float32 copy.

Llama-style RMSNorms (Llama, Qwen2/2.5/3, Mistral, Qwen2-VL's text model) widen a bf16 input to float32 before
normalising it, and autograd keeps that float32 copy (for the square's and the product's backward): four bytes
per value where the input itself has two. The copy is an exact function of the input, so the norm keeps a
recipe instead (`lmforge.model.recipes`): the input, widened again in the backward pass. The values and
gradients are the same bit for bit; a 0.5B model keeps 49 norms x 896 x 2 bytes, 88 KB per token, less.
The norm also notes a recipe for its output, which the LoRA adapters of the projections after it keep: the same
operations again from the input and the scale (kept for the norm's own backward pass), another 88 KB.

Only modules whose forward is exactly transformers' Llama RMSNorm are changed (Gemma's `1 + weight`, layer
norms and other variants keep their own), and only for inputs narrower than float32.
"""

from __future__ import annotations

from contextlib import nullcontext

from lmforge.model.recipes import (
    forward_source_is,
    note_recipe,
    recipe_for,
    recipes_apply,
    replace_forwards,
)

# The body of the forward this module reproduces (transformers' LlamaRMSNorm and its copies, verbatim).
_STANDARD_BODY = (
    "input_dtype = hidden_states.dtype",
    "hidden_states = hidden_states.to(torch.float32)",
    "variance = hidden_states.pow(2).mean(-1, keepdim=True)",
    "hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)",
    "return self.weight * hidden_states.to(input_dtype)",
)


def is_llama_rms_norm(module) -> bool:
    """Whether `module` is a Llama-style RMSNorm whose forward `keep_narrow_norm_inputs` can take over."""
    return (hasattr(module, "weight") and hasattr(module, "variance_epsilon")
            and forward_source_is(type(module), "hidden_states", _STANDARD_BODY))


def _norm_forward(self, hidden_states):
    import torch

    input_dtype = hidden_states.dtype
    widened = hidden_states.to(torch.float32)
    narrow = widened is not hidden_states and hidden_states.requires_grad and recipes_apply()
    with recipe_for(widened, lambda: hidden_states.to(torch.float32)) if narrow else nullcontext():
        variance = widened.pow(2).mean(-1, keepdim=True)
        scale = torch.rsqrt(variance + self.variance_epsilon)
        normed = widened * scale
    output = self.weight * normed.to(input_dtype)
    if narrow:
        # The adapters of the projections after the norm keep its output: a recipe for it, the same operations
        # again from the input and the scale, which the norm keeps anyway.
        note_recipe(output, lambda: self.weight * (hidden_states.to(torch.float32) * scale).to(input_dtype))
    return output


def keep_narrow_norm_inputs(model) -> int:
    """Give each Llama-style RMSNorm of `model` a forward that keeps its bf16/fp16 input rather than the float32
    copy for the backward pass; return how many were changed."""
    return replace_forwards(model, is_llama_rms_norm, _norm_forward)

"""Gated MLPs that keep two intermediate-size tensors per token for the backward pass instead of four.

Llama-style decoders (Llama, Qwen2/2.5/3, Mistral, Qwen2-VL and most others in transformers) compute
`down_proj(act_fn(gate_proj(x)) * up_proj(x))` with SiLU. Through autograd that keeps, per token and layer,
the gate projection (for SiLU's backward), SiLU's output and the up projection (for the product's) and the
product itself (for down_proj's adapter or weight gradient): four intermediate-size tensors, about three
quarters of what a layer keeps. SiLU's output is cheap to recompute from the gate, so `SiluMul` keeps the gate
and the up projection only and recomputes it in the backward pass, with the same kernels autograd uses; and
down_proj keeps a recipe for the product (`lmforge.model.recipes`), SiluMul's forward run again on the gate
and up it keeps anyway. The values and gradients are the same bit for bit, and a layer keeps two
intermediate-size tensors per token less (0.5B model: 24 layers x 2 x 4864 bf16 values, 467 KB per token).

Only modules whose forward is exactly that expression, with SiLU as the activation, are changed; any other
MLP (GELU, fused gate_up projections, mixtures of experts) keeps its own forward.
"""

from __future__ import annotations

import functools
from contextlib import nullcontext

from lmforge.model.recipes import (
    forward_source_is,
    recipe_for,
    recipes_apply,
    replace_forwards,
)

# The body of the forward this module reproduces (transformers' Llama-style MLPs, verbatim).
_STANDARD_BODY = ("down_proj = self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))",
                  "return down_proj")


def _is_silu(act) -> bool:
    import torch
    from transformers.activations import SiLUActivation

    return type(act) in (torch.nn.SiLU, SiLUActivation)


def is_gated_silu_mlp(module) -> bool:
    """Whether `module` is a Llama-style SiLU MLP whose forward `keep_gate_and_up_only` can take over."""
    return (all(hasattr(module, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn"))
            and _is_silu(module.act_fn) and forward_source_is(type(module), "x)", _STANDARD_BODY))


@functools.cache
def _silu_mul():
    import torch

    class SiluMul(torch.autograd.Function):
        """silu(gate) * up, keeping gate and up for the backward pass (not silu(gate))."""

        @staticmethod
        def forward(ctx, gate, up):
            ctx.save_for_backward(gate, up)
            return torch.nn.functional.silu(gate) * up

        @staticmethod
        def backward(ctx, grad):
            gate, up = ctx.saved_tensors
            grad_gate = grad_up = None
            if ctx.needs_input_grad[0]:
                # Autograd's own steps: the product's gradient for silu's output, then silu's backward.
                grad_gate = torch.ops.aten.silu_backward(grad * up, gate)
            if ctx.needs_input_grad[1]:
                grad_up = grad * torch.nn.functional.silu(gate)
            return grad_gate, grad_up

    return SiluMul


def _mlp_forward(self, x):
    import torch

    gate, up = self.gate_proj(x), self.up_proj(x)
    if torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad):
        product = _silu_mul().apply(gate, up)
        # down_proj's adapter (or weight) keeps its input, the product, for its gradient: a recipe from the
        # gate and up that SiluMul keeps anyway, recomputed with SiluMul's own forward (the same bits).
        keep = recipe_for(product, lambda: torch.nn.functional.silu(gate) * up) if recipes_apply() else nullcontext()
        with keep:
            return self.down_proj(product)
    return self.down_proj(self.act_fn(gate) * up)


def keep_gate_and_up_only(model) -> int:
    """Give each Llama-style SiLU MLP of `model` a forward that recomputes silu(gate) and the product in the
    backward pass; return how many were changed."""
    return replace_forwards(model, is_gated_silu_mlp, _mlp_forward)

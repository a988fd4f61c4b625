"""Keep a recipe instead of a tensor for the backward pass, where the recipe's inputs are kept anyway.

Autograd keeps every tensor a backward formula needs until that formula has run. Some of those tensors are a
cheap, exact function of tensors autograd keeps regardless: a gated MLP's product silu(gate) * up (gate and up
are kept for the product's own backward), an RMSNorm's float32 copy of its bf16 input. `recipe_for` keeps the
function instead, and runs it again when the backward pass asks: the same operations on the same values give
the same bits, so the gradients do not change, and the step keeps less memory.

Only where no other saved-tensor hooks are active: activation checkpointing and offloading install their own
(and recompute or move everything anyway), and a compiled graph plans its own saved tensors.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class _Recipe:
    make: Callable[[], torch.Tensor]
    shape: tuple


def recipes_apply() -> bool:
    """Whether `recipe_for` can take effect here: gradients on, no other saved-tensor hooks, not compiling."""
    import torch

    if torch.compiler.is_compiling():  # first: what follows is not for the compiler to trace
        return False
    autograd = torch._C._autograd
    top = getattr(autograd, "_top_saved_tensors_default_hooks", None)
    enabled = getattr(autograd, "_saved_tensors_hooks_is_enabled", lambda: True)
    return top is not None and torch.is_grad_enabled() and enabled() and top(False) is None


def _identity(tensor) -> tuple | None:
    """What a saved tensor must match to be all of `tensor` (None when `tensor` is not contiguous).

    Not the tensor itself: autograd keeps the pack hook with every tensor it packed, and a hook holding the
    tensor would keep alive exactly what the recipe is there to let go.
    """
    if not tensor.is_contiguous():
        return None
    return tensor.device, tensor.dtype, tensor.numel(), tensor.untyped_storage().data_ptr(), tensor.storage_offset()


def _whole(saved, identity) -> bool:
    """Whether `saved` is all of the tensor `identity` describes, contiguous, possibly viewed with another shape
    (as linear layers do)."""
    return identity is not None and saved.is_contiguous() and identity == (
        saved.device, saved.dtype, saved.numel(), saved.untyped_storage().data_ptr(), saved.storage_offset())


@contextlib.contextmanager
def recipe_for(tensor: torch.Tensor, make: Callable[[], torch.Tensor]):
    """Within the block, whenever autograd saves `tensor` (or a view of all of it), keep `make` instead.

    `make()` must return `tensor`'s exact values, from tensors autograd keeps anyway (or the recipe would keep
    them alive for nothing); callers check `recipes_apply()` first.
    """
    import torch

    identity = _identity(tensor)  # the storage is not reused while `tensor` lives, which it does in the block

    def pack(saved):
        return _Recipe(make, tuple(saved.shape)) if _whole(saved, identity) else saved

    def unpack(packed):
        return packed.make().view(packed.shape) if isinstance(packed, _Recipe) else packed

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield


@functools.cache
def forward_source_is(cls, signature: str, body: tuple[str, ...]) -> bool:
    """Whether `cls.forward` is `def forward(self, <signature>...` with exactly `body`, statement for statement
    (comments, decorators and blank lines aside): the forwards a recipe reproduces are recognised verbatim."""
    try:
        source = textwrap.dedent(inspect.getsource(cls.forward))
    except (OSError, TypeError):
        return False
    lines = [line.strip() for line in source.splitlines()
             if line.strip() and not line.strip().startswith(("#", "@"))]
    return (len(lines) == len(body) + 1 and lines[0].startswith(f"def forward(self, {signature}")
            and tuple(lines[1:]) == body)


def replace_forwards(model, matches: Callable[[object], bool], forward) -> int:
    """Bind `forward` as the forward of every module of `model` that `matches`; return how many there were."""
    from types import MethodType

    changed = 0
    for module in model.modules():
        if matches(module):
            module.forward = MethodType(forward, module)
            changed += 1
    return changed

"""Keep a recipe instead of a tensor for the backward pass, where the recipe's inputs are kept anyway.

Autograd keeps every tensor a backward formula needs until that formula has run. Some of those tensors are a
cheap, exact function of tensors autograd keeps regardless: a gated MLP's product silu(gate) * up (gate and up
are kept for the product's own backward), an RMSNorm's float32 copy of its bf16 input. `recipe_for` keeps the
function instead, and runs it again when the backward pass asks: the same operations on the same values give
the same bits, so the gradients do not change, and the step keeps less memory.

Some tensors are made in one place and kept by another: a norm's output by the LoRA adapters of the projections
after it, attention's output by the output projection's. The maker notes a recipe (`note_recipe`), which lasts
as long as the tensor; the keeper asks for it (`noted_recipe`) and keeps it inside its own `recipe_for` block.
The hooks are only on around the few operations that keep such a tensor: saved-tensor hooks around a whole
layer cost about a millisecond per layer and step on a CPU (every tensor the layer keeps passes through them).

Only where no other saved-tensor hooks are active: activation checkpointing and offloading install their own
(and recompute or move everything anyway), and a compiled graph plans its own saved tensors. Blocks do not
nest either (only the innermost hooks are asked), so a block inside another stands aside.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import textwrap
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


# Tensors of fewer values are not worth a recipe kept by a block of its own (`note_recipe`, attention's float32
# inputs): entering the hooks, packing, and making the tensor again cost about 0.1 ms per tensor and step on a
# CPU, whatever its size, and spare under 128 KB of bf16. Measured: on the tiny test model (128 wide) such
# recipes made a LoRA step 5% slower; on the 0.5B model (112 tokens x 896) they cost about 2% and spare 0.2 MB
# per token.
RECIPE_MIN_VALUES = 1 << 16


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


def _identity(tensor) -> tuple:
    """What a saved tensor must match to be all of `tensor`.

    Not the tensor itself: autograd keeps the pack hook with every tensor it packed, and a hook holding the
    tensor would keep alive exactly what the recipe is there to let go. A contiguous tensor is matched by its
    memory (linear layers save a view of it with another shape); any other layout by its shape and strides too.
    """
    layout = tensor.numel() if tensor.is_contiguous() else (tuple(tensor.shape), tensor.stride())
    return tensor.device, tensor.dtype, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), layout


def _whole(saved, identity) -> bool:
    """Whether `saved` is all of the tensor `identity` describes, seen the same way (or, for a contiguous one,
    contiguously with another shape)."""
    device, dtype, pointer, offset, layout = identity
    if saved.dtype != dtype or saved.device != device:
        return False
    if isinstance(layout, int):
        if not (saved.is_contiguous() and saved.numel() == layout):
            return False
    elif (tuple(saved.shape), saved.stride()) != layout:
        return False
    return saved.untyped_storage().data_ptr() == pointer and saved.storage_offset() == offset


def _unpack(packed):
    if not isinstance(packed, _Recipe):
        return packed
    made = packed.make()
    return made if tuple(made.shape) == packed.shape else made.view(packed.shape)


@contextlib.contextmanager
def recipe_for(tensor: torch.Tensor, make: Callable[[], torch.Tensor], *more):
    """Within the block, whenever autograd saves `tensor` (or a view of all of it), keep `make` instead; `more`
    are further (tensor, make) pairs.

    `make()` must return `tensor`'s exact values, from tensors autograd keeps anyway (or the recipe would keep
    them alive for nothing); callers check `recipes_apply()` first.
    """
    import torch

    # The storages are not reused while the tensors live, which they do in the block.
    recipes = [(_identity(t), m) for t, m in ((tensor, make), *more)]

    def pack(saved):
        for identity, recipe in recipes:
            if _whole(saved, identity):
                return _Recipe(recipe, tuple(saved.shape))
        return saved

    with torch.autograd.graph.saved_tensors_hooks(pack, _unpack):
        yield


# Noted recipes on this thread, by the address of their tensor's data.
_notes = threading.local()


def _noted() -> dict:
    notes = getattr(_notes, "by_address", None)
    if notes is None:
        notes = _notes.by_address = {}
    return notes


def worth_a_recipe(tensor: torch.Tensor) -> bool:
    """Whether `tensor` is large enough for a recipe of its own (`RECIPE_MIN_VALUES`) where recipes apply.

    On a CPU only, where it was measured: on a GPU the step is shorter against the same Python cost of the hooks,
    and that has not been measured.
    """
    return tensor.device.type == "cpu" and tensor.numel() >= RECIPE_MIN_VALUES and recipes_apply()


def note_recipe(tensor: torch.Tensor, make: Callable[[], torch.Tensor]) -> None:
    """Remember `make` as the recipe for `tensor` for as long as `tensor` lives (`make` as for `recipe_for`);
    nothing for a tensor not `worth_a_recipe`."""
    if not worth_a_recipe(tensor):  # also empty tensors, which share address 0
        return
    notes = _noted()
    key = tensor.data_ptr()

    def forget(ref):
        if notes.get(key, (None, None))[1] is ref:
            del notes[key]

    # A weak reference: the note must not keep the tensor, and dies with it (its memory may go to another).
    notes[key] = (_identity(tensor), weakref.ref(tensor, forget), _once(make))


def _once(make: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """`make`, run at most once: a noted tensor has several keepers (a norm's output, the q, k and v adapters),
    whose backward passes run one after the other; the tensor made for the first serves the others, and goes
    with the recipe when the last of them has run."""
    made = []

    def once():
        if not made:
            made.append(make())
        return made[0]

    return once


def noted_recipe(tensor: torch.Tensor) -> Callable[[], torch.Tensor] | None:
    """The recipe noted for `tensor` (or for the living tensor it is all of, viewed otherwise), or None."""
    notes = _noted()
    if not notes:
        return None
    entry = notes.get(tensor.data_ptr())
    if entry is None or entry[1]() is None or not _whole(tensor, entry[0]):
        return None
    return entry[2]


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

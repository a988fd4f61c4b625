"""Keep a recipe instead of a tensor for the backward pass, where the recipe's inputs are kept anyway.

Autograd keeps every tensor a backward formula needs until that formula has run. Some of those tensors are a
cheap, exact function of tensors autograd keeps regardless: a gated MLP's product silu(gate) * up (gate and up
are kept for the product's own backward), an RMSNorm's float32 copy of its bf16 input. `recipe_for` keeps the
function instead, and runs it again when the backward pass asks: the same operations on the same values give
the same bits, so the gradients do not change, and the step keeps less memory.

Some tensors are made in one place and saved in another: a norm's output by the projections after it,
attention's output by the output projection. `recipe_book` opens one set of hooks for a whole decoder layer's
call, and `note_recipe` adds to it a recipe that lasts until the layer returns; `recipe_for` blocks inside the
layer add theirs to the same book (saved-tensor hooks do not nest: only the innermost set is asked).

Only where no other saved-tensor hooks are active: activation checkpointing and offloading install their own
(and recompute or move everything anyway), and a compiled graph plans its own saved tensors.
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


@dataclass(frozen=True)
class _Recipe:
    make: Callable[[], torch.Tensor]
    shape: tuple


# The recipe books open on this thread, innermost last.
_open = threading.local()


def _books() -> list:
    books = getattr(_open, "books", None)
    if books is None:
        books = _open.books = []
    return books


def _top_hooks():
    """The innermost saved-tensor hooks' (pack, unpack), or None; a placeholder where torch cannot say."""
    import torch

    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    return top(False) if top is not None else ("unknown",)


def _open_book() -> _Book | None:
    """The recipe book whose hooks are the innermost ones, if any."""
    books = _books()
    if not books:
        return None
    top = _top_hooks()
    return books[-1] if top is not None and top[0] is books[-1].pack else None


def recipes_apply() -> bool:
    """Whether `recipe_for` can take effect here: gradients on, not compiling, and no saved-tensor hooks but a
    recipe book's."""
    import torch

    if torch.compiler.is_compiling():  # first: what follows is not for the compiler to trace
        return False
    enabled = getattr(torch._C._autograd, "_saved_tensors_hooks_is_enabled", lambda: True)
    if not (torch.is_grad_enabled() and enabled()):
        return False
    return _top_hooks() is None or _open_book() is not None


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


class _Book:
    """Recipes by the memory of the tensors they stand for, under one pair of saved-tensor hooks."""

    def __init__(self):
        import torch

        entries: dict[tuple, tuple] = {}

        # A closure over the entries, not a method: autograd keeps the pack hook as long as what it packed, and a
        # hook referring to its book would make a reference cycle that only the garbage collector breaks.
        def pack(saved):
            if saved.layout != torch.strided or not entries or saved.numel() == 0:
                return saved
            try:
                entry = entries.get((saved.untyped_storage().data_ptr(), saved.storage_offset()))
            except (RuntimeError, NotImplementedError):  # a tensor subclass without storage of its own
                return saved
            if entry is None or entry[1]() is None or not _whole(saved, entry[0]):
                return saved
            return _Recipe(entry[2], tuple(saved.shape))

        self.entries = entries
        self.pack = pack

    def add(self, tensor, make) -> tuple | None:
        if tensor.numel() == 0:  # empty tensors share address 0: no recipe can tell them apart
            return None
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        # A weak reference: a tensor that died may have left its memory to another one, which must not match.
        self.entries[key] = (_identity(tensor), weakref.ref(tensor), make)
        return key


@contextlib.contextmanager
def recipe_for(tensor: torch.Tensor, make: Callable[[], torch.Tensor], *more):
    """Within the block, whenever autograd saves `tensor` (or a view of all of it), keep `make` instead; `more`
    are further (tensor, make) pairs.

    `make()` must return `tensor`'s exact values, from tensors autograd keeps anyway (or the recipe would keep
    them alive for nothing); callers check `recipes_apply()` first.
    """
    import torch

    pairs = ((tensor, make), *more)
    book = _open_book()
    if book is not None:  # the layer's book takes them for the block
        keys = [book.add(t, m) for t, m in pairs]
        try:
            yield
        finally:
            for key in keys:
                book.entries.pop(key, None)
        return
    book = _Book()
    for t, m in pairs:
        book.add(t, m)
    with torch.autograd.graph.saved_tensors_hooks(book.pack, _unpack):
        yield


def note_recipe(tensor: torch.Tensor, make: Callable[[], torch.Tensor]) -> None:
    """Keep `make` for `tensor` wherever autograd saves it until the open recipe book closes (nothing when none
    is open); `make` as for `recipe_for`."""
    book = _open_book()
    if book is not None:
        book.add(tensor, make)


@contextlib.contextmanager
def recipe_book():
    """One set of saved-tensor hooks for the block, which `note_recipe` and `recipe_for` add recipes to; nothing
    where recipes do not apply."""
    if not recipes_apply():
        yield
        return
    import torch

    book = _Book()
    books = _books()
    books.append(book)
    try:
        with torch.autograd.graph.saved_tensors_hooks(book.pack, _unpack):
            yield
    finally:
        books.pop()


def _layer_forward(self, *args, **kwargs):
    with recipe_book():
        return type(self).forward(self, *args, **kwargs)


def open_books_per_layer(model) -> int:
    """Give each decoder layer of `model` (transformers' checkpointable layers) a recipe book for its calls;
    return how many there were. Layers whose forward is already replaced are left as they are."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return replace_forwards(model, lambda module: isinstance(module, GradientCheckpointingLayer)
                            and "forward" not in vars(module), _layer_forward)


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

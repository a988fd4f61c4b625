"""`torch_compile`: each decoder layer compiled with torch.compile (regional compilation), the rest eager.

The decoder layers are where the step's time goes, and they all run the same code, so compiling them one
by one costs about one layer's compilation, where compiling the whole model would trace every layer and
the loss. The model's own forward, its hooks and lmforge's supervised-positions loss stay eager.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmforge.errors import UserError
from lmforge.utils.logging import get_logger

if TYPE_CHECKING:
    from lmforge.config.train import TrainArguments

logger = get_logger(__name__)


def wanted(train: TrainArguments) -> bool:
    """transformers' rule: setting a backend or a mode turns compilation on."""
    return bool(train.torch_compile or train.torch_compile_backend or train.torch_compile_mode)


def compile_layers(model, train: TrainArguments) -> int:
    """Compile every decoder layer of `model` (PEFT-wrapped or not) in place; return how many."""
    import torch

    from lmforge.train.loss import core_model

    core = core_model(model)
    decoder = core.get_decoder() if callable(getattr(core, "get_decoder", None)) else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or not len(layers):
        raise UserError(f"torch_compile: no decoder layers found in {type(core).__name__}; remove torch_compile.")
    backend = train.torch_compile_backend or "inductor"
    for layer in layers:
        layer.compile(backend=backend, mode=train.torch_compile_mode)
    logger.info(f"torch.compile ({backend}{', ' + train.torch_compile_mode if train.torch_compile_mode else ''}): "
                f"{len(layers)} decoder layers, compiled on their first step.")
    return len(layers)

"""Vision-language models: which ones lmforge trains, their parts, and which parts stay frozen.

A Qwen2-VL checkpoint is three parts: the vision tower (`visual.patch_embed`, `visual.blocks`), the
projector that merges patches into the text model's width (`visual.merger`), and the language model
(`language_model`, `lm_head`). LLaMA-Factory's flags decide which parts train: `freeze_vision_tower`
(default true), `freeze_multi_modal_projector` (true) and `freeze_language_model` (false). A frozen
part gets no LoRA adapter and no gradient; by default only the language model is adapted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmforge.config import FinetuningArguments


@dataclass(frozen=True)
class VisionParts:
    """Module-name fragments of a model family's parts (matched as substrings of full module names)."""

    vision_tower: tuple[str, ...]
    projector: tuple[str, ...]
    language_model: tuple[str, ...]


_QWEN2_VL = VisionParts(
    vision_tower=("visual.patch_embed", "visual.blocks"),
    projector=("visual.merger",),
    language_model=("language_model", "lm_head"),
)
PARTS = {"qwen2_vl": _QWEN2_VL, "qwen2_5_vl": _QWEN2_VL}


def model_type(model_or_config) -> str | None:
    """The `model_type` of a model or config (None when it has none)."""
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "model_type", None)


def is_multimodal(model_or_config) -> bool:
    """Whether lmforge trains this model as a vision-language model (with its processor and plugin)."""
    return model_type(model_or_config) in PARTS


def frozen_modules(model, ft: FinetuningArguments) -> tuple[str, ...]:
    """The name fragments of the parts the finetuning flags keep frozen (none for a text model)."""
    parts = PARTS.get(model_type(model))
    if parts is None:
        return ()
    frozen: tuple[str, ...] = ()
    if ft.freeze_vision_tower:
        frozen += parts.vision_tower
    if ft.freeze_multi_modal_projector:
        frozen += parts.projector
    if ft.freeze_language_model:
        frozen += parts.language_model
    return frozen


def lora_target_names(model, targets: list[str], ft: FinetuningArguments) -> list[str]:
    """Full module names of the LoRA targets outside the frozen parts.

    Leaf names alone would also match the vision tower (Qwen2.5-VL's vision blocks have their own
    gate_proj/up_proj/down_proj), so a multimodal model's targets are spelt out in full, as
    LLaMA-Factory's `patch_target_modules` does.
    """
    frozen = frozen_modules(model, ft)
    return [
        name for name, module in model.named_modules()
        if name.split(".")[-1] in targets and "Linear" in type(module).__name__
        and not any(fragment in name for fragment in frozen)
    ]


def freeze_parts(model, ft: FinetuningArguments) -> None:
    """Stop the gradients of the frozen parts (for full and freeze fine-tuning; LoRA never adapts them)."""
    frozen = frozen_modules(model, ft)
    for name, param in model.named_parameters():
        if any(fragment in name for fragment in frozen):
            param.requires_grad_(False)

"""Preference training (`stage: dpo` with any `pref_loss`, `stage: kto`): tokenizer -> template -> pairs or
feedback rows -> policy (+ reference) -> collator -> PreferenceTrainer -> outputs."""

from __future__ import annotations

from typing import TYPE_CHECKING


from lmforge.data.collator import FeedbackDataCollator, PairwiseDataCollator
from lmforge.data.pipeline import get_dataset
from lmforge.model.loader import check_model_path
from lmforge.model.tokenizer import load_tokenizer_and_template
from lmforge.train.common import build_trainer, compute_dtype, finish, load_trainable_model, pad_multiple
from lmforge.train.pref_losses import NO_REFERENCE
from lmforge.train.preference import PreferenceTrainer
from lmforge.utils.logging import get_logger

if TYPE_CHECKING:
    from lmforge.config import RunConfig

logger = get_logger(__name__)


def needs_reference(cfg: RunConfig) -> bool:
    """kto and every dpo loss but orpo and simpo compare the policy with a reference model."""
    return cfg.finetune.stage == "kto" or cfg.finetune.pref_loss not in NO_REFERENCE


def load_reference_model(cfg: RunConfig, tokenizer):
    """The frozen reference: `ref_model` (+ `ref_model_adapters`), else None for LoRA (the policy with its
    adapters switched off serves), else a copy of the base model for freeze and full training."""
    import dataclasses

    from lmforge.model.adapters import load_adapters
    from lmforge.model.loader import load_model
    from lmforge.model.tokenizer import with_model_path

    ft = cfg.finetune
    if ft.ref_model is None and ft.finetuning_type in ("lora", "oft"):
        return None
    path = ft.ref_model or cfg.model.model_name_or_path
    model_args = dataclasses.replace(with_model_path(cfg.model, path), quantization_bit=ft.ref_model_quantization_bit)
    model = load_model(model_args, tokenizer, compute_dtype(cfg), trainable=False)
    adapters = [a.strip() for a in (ft.ref_model_adapters or "").split(",") if a.strip()]
    model = load_adapters(model, adapters, path, merge=True)
    logger.info(f"Reference model: {path}" + (f" with {', '.join(adapters)}" if adapters else ""))
    return model


def run_preference(cfg: RunConfig, resume_from: str | None, callbacks=()) -> dict:
    """Run dpo or kto training and/or evaluation; return the metrics."""
    stage = cfg.finetune.stage
    if cfg.finetune.ref_model and needs_reference(cfg):
        check_model_path(cfg.finetune.ref_model, "ref_model")  # before the policy loads
    tokenizer, template = load_tokenizer_and_template(cfg.model, cfg.data)
    tokenizer.chat_template = template.to_jinja(tokenizer)  # saved with every checkpoint and the result
    dataset = get_dataset(cfg, tokenizer, template, stage=stage)
    model = load_trainable_model(cfg, tokenizer, template)
    ref_model = load_reference_model(cfg, tokenizer) if needs_reference(cfg) else None
    collator_class = FeedbackDataCollator if stage == "kto" else PairwiseDataCollator
    collator = collator_class.from_tokenizer(tokenizer, pad_to_multiple_of=pad_multiple(cfg))
    trainer = build_trainer(
        PreferenceTrainer, cfg, resume_from, callbacks, dataset=dataset, model=model, processing_class=tokenizer,
        data_collator=collator, stage=stage, ref_model=ref_model)
    if ref_model is not None:
        ref_model.to(trainer.args.device)
    return finish(cfg, trainer, tokenizer, template, dataset, resume_from)

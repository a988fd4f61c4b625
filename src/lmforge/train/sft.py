"""Supervised fine-tuning (`stage: sft`): tokenizer -> template -> dataset -> model -> collator -> trainer."""

from __future__ import annotations

from typing import TYPE_CHECKING


from lmforge.data.collator import MultiModalDataCollator, SFTDataCollator
from lmforge.data.templates.mm_plugin import get_mm_plugin
from lmforge.data.pipeline import get_dataset
from lmforge.model.loader import ATTENTION
from lmforge.model.tokenizer import load_mm_processor, load_tokenizer_and_template, processor_folder
from lmforge.train.common import build_trainer, compute_dtype, finish, load_trainable_model, pad_multiple
from lmforge.train.trainer import ForgeTrainer

if TYPE_CHECKING:
    from lmforge.config import RunConfig


def run_sft(cfg: RunConfig, resume_from: str | None, callbacks=()) -> dict:
    """Run sft training and/or evaluation; return the metrics."""
    tokenizer, template = load_tokenizer_and_template(cfg.model, cfg.data)
    tokenizer.chat_template = template.to_jinja(tokenizer)  # saved with every checkpoint and the result
    mm_processor = load_mm_processor(cfg.model)  # None for a text model
    dataset = get_dataset(cfg, tokenizer, template, stage="sft", mm_processor=mm_processor)
    model = load_trainable_model(cfg, tokenizer, template)
    collator = SFTDataCollator.from_tokenizer(
        tokenizer,
        pad_to_multiple_of=pad_multiple(cfg),
        block_diag_attn=cfg.data.neat_packing,
        attn_implementation=ATTENTION[cfg.model.flash_attn],
        compute_dtype=compute_dtype(cfg),
    )
    if mm_processor is not None:
        # The rows keep their image paths; the pixels are made per batch, as LLaMA-Factory does.
        collator = MultiModalDataCollator(collator, get_mm_plugin(getattr(template, "mm_plugin", None)),
                                          mm_processor, cfg.data, tokenizer)
    metric_kwargs = {}
    if cfg.finetune.compute_accuracy:
        from lmforge.train.metrics import argmax_logits, token_accuracy

        metric_kwargs = dict(compute_metrics=token_accuracy, preprocess_logits_for_metrics=argmax_logits)
    trainer = build_trainer(ForgeTrainer, cfg, resume_from, callbacks, dataset=dataset, model=model,
                            data_collator=collator, processing_class=tokenizer, **metric_kwargs)
    if cfg.finetune.use_asft_loss and cfg.finetune.finetuning_type in ("full", "freeze") and cfg.train.do_train:
        # ASFT's KL term needs the model as it was; a LoRA/OFT policy has it with its adapters switched off.
        from lmforge.model.loader import load_model

        trainer.ref_model = load_model(cfg.model, tokenizer, compute_dtype(cfg), trainable=False).to(trainer.args.device)
    if mm_processor is not None:
        trainer.processor_source = processor_folder(cfg.model)  # its configs are saved with every checkpoint
    return finish(cfg, trainer, tokenizer, template, dataset, resume_from)

"""Supervised fine-tuning (`stage: sft`): tokenizer -> template -> dataset -> model -> collator -> trainer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from transformers import PrinterCallback

from lmforge.data.collator import SFTDataCollator
from lmforge.data.pipeline import get_dataset
from lmforge.model.loader import ATTENTION
from lmforge.model.tokenizer import load_tokenizer_and_template
from lmforge.train.args import build_training_args
from lmforge.train.common import training_callbacks, compute_dtype, finish, load_trainable_model
from lmforge.train.trainer import ForgeTrainer

if TYPE_CHECKING:
    from lmforge.config import RunConfig


def run_sft(cfg: RunConfig, resume_from: str | None, callbacks=()) -> dict:
    """Run sft training and/or evaluation; return the metrics."""
    tokenizer, template = load_tokenizer_and_template(cfg.model, cfg.data)
    tokenizer.chat_template = template.to_jinja(tokenizer)  # saved with every checkpoint and the result
    dataset = get_dataset(cfg, tokenizer, template, stage="sft")
    model = load_trainable_model(cfg, tokenizer, template)
    collator = SFTDataCollator.from_tokenizer(
        tokenizer,
        pad_to_multiple_of=8,
        block_diag_attn=cfg.data.neat_packing,
        attn_implementation=ATTENTION[cfg.model.flash_attn],
        compute_dtype=compute_dtype(cfg),
    )
    metric_kwargs = {}
    if cfg.finetune.compute_accuracy:
        from lmforge.train.metrics import argmax_logits, token_accuracy

        metric_kwargs = dict(compute_metrics=token_accuracy, preprocess_logits_for_metrics=argmax_logits)
    trainer = ForgeTrainer(
        model=model,
        args=build_training_args(cfg, resume_from),
        train_dataset=dataset.train_dataset,
        eval_dataset=dataset.eval_dataset,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=training_callbacks(cfg, resume_from, callbacks),
        finetuning_args=cfg.finetune,
        **metric_kwargs,
    )
    trainer.remove_callback(PrinterCallback)  # LogCallback prints progress; no raw dicts on the console
    return finish(cfg, trainer, tokenizer, template, dataset, resume_from)

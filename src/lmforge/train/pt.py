"""Pre-training (`stage: pt`): plain text, packed into cutoff_len blocks by default."""

from __future__ import annotations

from typing import TYPE_CHECKING

from transformers import PrinterCallback

from lmforge.data.collator import PretrainDataCollator
from lmforge.data.pipeline import get_dataset
from lmforge.model.tokenizer import load_tokenizer_and_template
from lmforge.train.args import build_training_args
from lmforge.train.common import training_callbacks, finish, load_trainable_model
from lmforge.train.trainer import ForgeTrainer

if TYPE_CHECKING:
    from lmforge.config import RunConfig


def run_pt(cfg: RunConfig, resume_from: str | None, callbacks=()) -> dict:
    """Run pt training and/or evaluation; return the metrics."""
    tokenizer, template = load_tokenizer_and_template(cfg.model, cfg.data)
    dataset = get_dataset(cfg, tokenizer, template, stage="pt")
    model = load_trainable_model(cfg, tokenizer, template)
    trainer = ForgeTrainer(
        model=model,
        args=build_training_args(cfg, resume_from),
        train_dataset=dataset.train_dataset,
        eval_dataset=dataset.eval_dataset,
        data_collator=PretrainDataCollator.from_tokenizer(tokenizer, pad_to_multiple_of=8),
        processing_class=tokenizer,
        callbacks=training_callbacks(cfg, resume_from, callbacks),
        finetuning_args=cfg.finetune,
    )
    trainer.remove_callback(PrinterCallback)  # LogCallback prints progress; no raw dicts on the console
    return finish(cfg, trainer, tokenizer, template, dataset, resume_from)

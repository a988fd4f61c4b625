"""Pre-training (`stage: pt`): plain text, packed into cutoff_len blocks by default."""

from __future__ import annotations

from typing import TYPE_CHECKING


from lmforge.data.collator import PretrainDataCollator
from lmforge.data.pipeline import get_dataset
from lmforge.model.tokenizer import load_tokenizer_and_template
from lmforge.train.common import build_trainer, finish, load_trainable_model, pad_multiple
from lmforge.train.trainer import ForgeTrainer

if TYPE_CHECKING:
    from lmforge.config import RunConfig


def run_pt(cfg: RunConfig, resume_from: str | None, callbacks=()) -> dict:
    """Run pt training and/or evaluation; return the metrics."""
    tokenizer, template = load_tokenizer_and_template(cfg.model, cfg.data)
    dataset = get_dataset(cfg, tokenizer, template, stage="pt")
    model = load_trainable_model(cfg, tokenizer, template)
    trainer = build_trainer(
        ForgeTrainer, cfg, resume_from, callbacks, dataset=dataset, model=model, processing_class=tokenizer,
        data_collator=PretrainDataCollator.from_tokenizer(tokenizer, pad_to_multiple_of=pad_multiple(cfg)))
    return finish(cfg, trainer, tokenizer, template, dataset, resume_from)

"""Reward modelling (`stage: rm`): tokenizer -> template -> pairs -> model + value head -> RewardTrainer -> outputs.

The reward model is the language model (LoRA, freeze or full) with a scalar value head
(`train/value_head.py`); a text's reward is the value at its last token. It learns from preference
pairs with the pairwise loss -log sigmoid(r_chosen - r_rejected). Evaluation reports `eval_accuracy`,
the share of pairs whose chosen answer scores above the rejected one (a tie counts half: an untrained
head scores every text alike and gets 0.5); `do_predict` writes both scores of every eval pair to
`generated_predictions.jsonl`, as LLaMA-Factory does.

The output folder is what stage ppo loads as `reward_model`: the adapter (lora) or the weights
(freeze, full) and `value_head.safetensors`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from lmforge.data.collator import PairwiseDataCollator
from lmforge.data.pipeline import get_dataset
from lmforge.model.tokenizer import load_tokenizer_and_template
from lmforge.train.common import build_trainer, finish, load_trainable_model, pad_multiple
from lmforge.train.trainer import ForgeTrainer
from lmforge.train.value_head import ValueHeadModel, last_token_index, load_value_head
from lmforge.utils.logging import get_logger

if TYPE_CHECKING:
    from lmforge.config import RunConfig

logger = get_logger(__name__)

PREDICTIONS_FILE = "generated_predictions.jsonl"


def pair_scores(model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen scores, rejected scores) of a pairwise batch (its B chosen rows first, then the B rejected)."""
    mask = inputs["attention_mask"]
    _, values = model(input_ids=inputs["input_ids"], attention_mask=mask)
    scores = values.gather(1, last_token_index(mask).unsqueeze(1)).squeeze(1).float()
    half = scores.shape[0] // 2
    return scores[:half], scores[half:]


def pair_accuracy(eval_prediction) -> dict[str, float]:
    """`compute_metrics`: the share of pairs scored chosen > rejected (ties count half)."""
    import numpy as np

    scores = np.asarray(eval_prediction.predictions)
    chosen, rejected = scores[:, 0], scores[:, 1]
    return {"accuracy": float(np.mean((chosen > rejected) + 0.5 * (chosen == rejected)))}


class RewardTrainer(ForgeTrainer):
    """ForgeTrainer for a ValueHeadModel: pairwise loss, scores as predictions, the value head saved beside."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The loss is a mean over pairs, not a sum over tokens: the Trainer must divide it by the accumulation steps.
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        chosen, rejected = pair_scores(model, inputs)
        loss = -F.logsigmoid(chosen - rejected).mean()
        return (loss, (chosen, rejected)) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, (chosen, rejected) = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        scores = torch.stack([chosen, rejected], dim=-1)
        # The Trainer computes metrics only when there are labels: a placeholder per pair.
        return loss.detach(), scores, torch.zeros(scores.shape[0], device=scores.device)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        self.accelerator.unwrap_model(self.model).save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, Path(output_dir) / "training_args.bin")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        wrapper = self.accelerator.unwrap_model(self.model if model is None else model)
        super()._load_from_checkpoint(resume_from_checkpoint, model=wrapper.pretrained_model)
        head = load_value_head(resume_from_checkpoint)
        if head is not None:
            wrapper.v_head.load_state_dict(head.state_dict())


def trained_value_head_source(cfg: RunConfig) -> str:
    """Where a trained head would be: the last adapter (an rm LoRA run), else the model folder (a full rm)."""
    adapters = cfg.model.adapter_name_or_path or []
    return adapters[-1] if adapters else cfg.model.model_name_or_path


def run_rm(cfg: RunConfig, resume_from: str | None, callbacks=()) -> dict:
    """Train and/or evaluate a reward model, and write its scores with do_predict; return the metrics."""
    tokenizer, template = load_tokenizer_and_template(cfg.model, cfg.data)
    tokenizer.chat_template = template.to_jinja(tokenizer)  # saved with every checkpoint and the result
    dataset = get_dataset(cfg, tokenizer, template, stage="rm")
    model = ValueHeadModel(load_trainable_model(cfg, tokenizer, template))
    source = trained_value_head_source(cfg)
    head = load_value_head(source) if Path(source).is_dir() else None
    if head is not None:  # evaluating or continuing a trained reward model
        model.v_head.load_state_dict(head.state_dict())
        logger.info(f"Value head loaded from {source}")
    trainer = build_trainer(
        RewardTrainer, cfg, resume_from, callbacks, dataset=dataset, model=model, processing_class=tokenizer,
        data_collator=PairwiseDataCollator.from_tokenizer(tokenizer, pad_to_multiple_of=pad_multiple(cfg)),
        compute_metrics=pair_accuracy)
    return finish(cfg, trainer, tokenizer, template, dataset, resume_from,
                  predict=lambda: write_predictions(trainer, dataset.eval_dataset, Path(cfg.train.output_dir)))


def write_predictions(trainer: RewardTrainer, eval_dataset, output_dir: Path) -> dict:
    """Score every eval pair: `generated_predictions.jsonl` ({"chosen", "rejected"} per pair, in order) and
    `predict_results.json` (predict_loss, predict_accuracy); return the metrics."""
    from datasets import concatenate_datasets

    if isinstance(eval_dataset, dict):  # eval_on_each_dataset: one file, the datasets in their order
        eval_dataset = concatenate_datasets(list(eval_dataset.values()))
    result = trainer.predict(eval_dataset, metric_key_prefix="predict")
    output_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"chosen": round(float(c), 4), "rejected": round(float(r), 4)})
             for c, r in result.predictions]
    (output_dir / PREDICTIONS_FILE).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    trainer.log_metrics("predict", result.metrics)
    trainer.save_metrics("predict", result.metrics)
    logger.info(f"Scores of {len(lines)} pairs written to {output_dir / PREDICTIONS_FILE}")
    return result.metrics

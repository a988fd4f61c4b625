"""Batch prediction: `lmforge train` with `do_predict` and `predict_with_generate` (stage sft).

The eval dataset's prompts (rendered by the template without the answer) are generated in
batches with left padding by the same engine that serves `chat` and `api`, so an adapter, stop
strings and generation settings behave the same everywhere. Every batch is appended to
`generated_predictions.jsonl` and flushed as soon as it is decoded: a run stopped after 900 of
1000 samples keeps 900. `predict_results.json` (BLEU-4, ROUGE-1/2/L, runtime) is written last,
atomically, so its presence says that the predictions file is complete.

A row that cannot be predicted and scored (no reference answer, a blank one, a blank prompt, or a
row dropped when read) is not predicted: it is left out of both files, counted in
`predict_dropped_samples`, and named with its reason and row number in the log.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.chat.base import Media
from lmforge.errors import UserError
from lmforge.eval.similarity import SimilarityScorer, require_metric_packages
from lmforge.utils.logging import get_logger

if TYPE_CHECKING:
    from lmforge.config import RunConfig

logger = get_logger(__name__)

PREDICTIONS_FILE = "generated_predictions.jsonl"
RESULTS_FILE = "predict_results.json"
ALL_RESULTS_FILE = "all_results.json"


def run_predict(cfg: RunConfig) -> dict:
    """Generate an answer for every eval sample, write them as they come, score them; return the metrics."""
    require_metric_packages()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = Path(cfg.train.output_dir)
    target = out / PREDICTIONS_FILE
    if target.exists() and not cfg.train.overwrite_output_dir:
        raise UserError(
            f"{target} already exists. Set overwrite_output_dir: true to replace it, or choose another output_dir."
        )
    from lmforge.chat.hf_engine import HFEngine
    from lmforge.data.pipeline import get_dataset

    from transformers import set_seed

    set_seed(cfg.train.seed)
    engine = HFEngine(cfg)
    module = get_dataset(cfg, engine.tokenizer, engine.template, stage="sft", generate_eval=True,
                         mm_processor=engine.mm_processor)
    dataset = _one_dataset(module.eval_dataset)
    dropped = _log_not_predicted(cfg, module.report)
    out.mkdir(parents=True, exist_ok=True)
    # An old results file would vouch for the new, unfinished predictions.
    (out / RESULTS_FILE).unlink(missing_ok=True)

    metrics = _generate_all(cfg, engine, dataset, target)
    metrics["predict_dropped_samples"] = dropped
    _print_metrics(metrics)
    _write_results(out, metrics)
    logger.info(f"Predictions written to {target}")
    return metrics


def _log_not_predicted(cfg: RunConfig, report) -> int:
    """Log the eval rows that are not predicted, by dataset, reason and row; return how many.

    They are the rows dropped while building the prompts, and, for `eval_dataset`, the rows dropped
    when read (with `val_size` those cannot be told from the training rows; the data log names them).
    """
    from lmforge.data.reasons import CONVERT, PREDICT
    from lmforge.data.registry import get_dataset_specs
    from lmforge.data.report import DropReport

    names = {spec.name for spec in get_dataset_specs(cfg.data.eval_dataset, cfg.data.dataset_dir)}
    skipped = DropReport(max_rows=report.max_rows)
    for entry in report.entries():
        if entry.stage == PREDICT or (entry.stage == CONVERT and entry.dataset in names):
            skipped.record(entry.dataset, entry.reason, entry.rows, stage=entry.stage, count=entry.count)
    if skipped:
        logger.warning(f"{skipped.count()} eval rows are not predicted, so they are neither in {PREDICTIONS_FILE} "
                       f"nor scored: {'; '.join(skipped.drop_lines())}. `lmforge data check` explains the reasons.")
    return skipped.count()


def _one_dataset(eval_dataset):
    """Per-dataset eval splits (eval_on_each_dataset) are predicted one after another, in order."""
    if isinstance(eval_dataset, dict):
        from datasets import concatenate_datasets

        return concatenate_datasets(list(eval_dataset.values()))
    return eval_dataset


def _generate_all(cfg: RunConfig, engine, dataset, target: Path) -> dict:
    from tqdm.auto import tqdm

    from lmforge.data.processors import IGNORE_INDEX

    tokenizer = engine.tokenizer
    batch_size = max(1, cfg.train.per_device_eval_batch_size)
    # The answer length is max_new_tokens, which wins over generation_max_length as in transformers.
    overrides = {}
    if cfg.train.generation_num_beams:
        overrides["num_beams"] = cfg.train.generation_num_beams
    scorer = SimilarityScorer()
    total = len(dataset)
    started = time.perf_counter()
    steps = generated = 0
    with open(target, "w", encoding="utf-8") as handle, tqdm(
        total=total, desc="Predicting", unit="sample", file=sys.stderr, dynamic_ncols=True
    ) as bar:
        for start in range(0, total, batch_size):
            batch = dataset[start : start + batch_size]
            prompts = [list(ids) for ids in batch["input_ids"]]
            responses = engine.generate_batch(prompts, media=_media(batch, len(prompts)), **overrides)
            lines = []
            for ids, labels, response in zip(prompts, batch["labels"], responses):
                generated += response.response_length
                label = tokenizer.decode([t for t in labels if t != IGNORE_INDEX], skip_special_tokens=True)
                scorer.score(response.text, label)
                record = {"prompt": tokenizer.decode(ids, skip_special_tokens=False), "predict": response.text,
                          "label": label}
                lines.append(json.dumps(record, ensure_ascii=False) + "\n")
            handle.write("".join(lines))
            handle.flush()
            steps += 1
            bar.update(len(lines))
    runtime = time.perf_counter() - started
    metrics = scorer.means("predict_")
    metrics.update(
        predict_runtime=round(runtime, 4),
        predict_samples_per_second=round(total / runtime, 3) if runtime else 0.0,
        predict_steps_per_second=round(steps / runtime, 3) if runtime else 0.0,
        predict_tokens_per_second=round(generated / runtime, 2) if runtime else 0.0,  # generated tokens
        predict_samples=total,
    )
    return metrics


def _media(batch: dict, rows: int) -> list[Media | None] | None:
    """Each row's images and videos (the paths the data pipeline kept), for a multimodal model."""
    if "images" not in batch and "videos" not in batch:
        return None
    images = batch.get("images") or [[]] * rows
    videos = batch.get("videos") or [[]] * rows
    return [Media(tuple(i or ()), tuple(v or ())) or None for i, v in zip(images, videos)]


def _print_metrics(metrics: dict) -> None:
    width = max(len(k) for k in metrics)
    print("***** predict metrics *****")
    for key, value in metrics.items():
        print(f"  {key:<{width}} = {value}")


def _write_results(out: Path, metrics: dict) -> None:
    from lmforge.utils.atomic import write_json_atomic

    write_json_atomic(out / RESULTS_FILE, metrics)
    combined = {}
    all_results = out / ALL_RESULTS_FILE
    if all_results.is_file():
        try:
            combined = json.loads(all_results.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            combined = {}
    combined.update(metrics)
    write_json_atomic(all_results, combined)

"""From a run's settings to tokenized train/eval datasets, with every dropped row accounted for.

dataset_info.json -> load + convert (aligned rows) -> fill placeholders -> mix/split ->
tokenize with the stage's processor -> count drops -> (save to tokenized_path).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.data.columns import DROPPED_TOKENS, EVAL_SPLIT, META_COLUMNS, TRAIN_SPLIT, WARN_COLUMN
from lmforge.data.reasons import PREDICT, TOKENIZE
from lmforge.data.report import DropReport, collect_drops, count_rows_seen
from lmforge.errors import UserError
from lmforge.utils.logging import get_logger

if TYPE_CHECKING:
    from lmforge.config import DataArguments, RunConfig

logger = get_logger(__name__)



@dataclass
class DatasetModule:
    """Tokenized datasets of one run and what happened to the rows on the way."""

    train_dataset: Any = None
    eval_dataset: Any = None  # one dataset, or {name: dataset} with eval_on_each_dataset
    report: DropReport = field(default_factory=DropReport)
    packing_dropped_tokens: int = 0

    def summary_lines(self) -> list[str]:
        lines = self.report.summary_lines()
        if self.packing_dropped_tokens:
            lines.append(f"packing: {self.packing_dropped_tokens} tokens after the last full block were not used")
        return lines


def fill_placeholders(dataset, values: dict[str, Any] | None):
    """Replace `{{key}}` in every message, system prompt and tool text by the configured value."""
    if not values:
        return dataset
    pairs = [("{{" + str(k) + "}}", str(v)) for k, v in values.items()]

    def fill(text: str) -> str:
        for old, new in pairs:
            text = text.replace(old, new)
        return text

    def apply(batch):
        for column in ("_prompt", "_response"):
            batch[column] = [[{**m, "content": fill(m["content"])} for m in messages] for messages in batch[column]]
        for column in ("_system", "_tools"):
            batch[column] = [fill(text) if text else text for text in batch[column]]
        return batch

    return dataset.map(apply, batched=True, **_map_kwargs_for(dataset, "Filling placeholders"))


def _map_kwargs_for(dataset, desc: str) -> dict:
    from datasets import IterableDataset

    if isinstance(dataset, IterableDataset):
        # No progress description or cache there; the columns are unchanged, and saying so keeps
        # `column_names` known for the tokenizing map that removes them.
        return {"features": dataset.features} if dataset.features is not None else {}
    return {"load_from_cache_file": False, "desc": desc}


def load_aligned(cfg: RunConfig, report: DropReport, stage: str):
    """The aligned (untokenized) splits of the run: train and validation (or validation_<name>)."""
    from lmforge.data.loader import get_aligned_splits

    splits = get_aligned_splits(cfg.data, seed=cfg.train.seed, report=report, stage=stage)
    return {name: fill_placeholders(ds, cfg.data.placeholders) for name, ds in splits.items()}


def tokenize_split(dataset, data_args: DataArguments, processor, report: DropReport, name: str,
                   stage: str = TOKENIZE):
    """Run the processor over one split; return (valid rows with model columns only, dropped packing tokens).

    Drops and warnings are counted into `report` under `stage` (`predict` for prediction prompts).
    """
    from datasets import IterableDataset

    from lmforge.data.processors import PACKING_REMAINDER
    from lmforge.data.processors.pretrain import dropped_tail_tokens

    kwargs: dict[str, Any] = dict(batched=True, remove_columns=list(dataset.column_names or []))
    streaming = isinstance(dataset, IterableDataset)
    if not streaming:
        kwargs.update(
            batch_size=data_args.preprocessing_batch_size,
            num_proc=data_args.preprocessing_num_workers if (data_args.preprocessing_num_workers or 0) > 1 else None,
            load_from_cache_file=not data_args.overwrite_cache,
            features=processor.features,
            desc=f"Tokenizing {name}",
        )
    else:
        # A streamed map wants Python lists back, not the pyarrow table that `processor(batch)` gives.
        kwargs.update(batch_size=data_args.preprocessing_batch_size, features=processor.features)
    packing_pass = not streaming and getattr(processor, "packing", False) and hasattr(processor, "defer_packing")
    if packing_pass:
        processor.defer_packing = True  # tokenize in parallel, pack below in one ordered pass
    tokenized = dataset.map(processor.process if streaming else processor, **kwargs)
    if packing_pass:
        from lmforge.data.processors.pretrain import BlockPacker

        tokenized = tokenized.map(
            BlockPacker(processor, len(tokenized)), batched=True, with_indices=True, batch_size=kwargs["batch_size"],
            features=processor.features, load_from_cache_file=False, desc=f"Packing {name}",
        )
    dropped_tokens = 0
    if not streaming and DROPPED_TOKENS in tokenized.column_names:
        dropped_tokens = dropped_tail_tokens(tokenized)
        # The packed remainder is a token count, not a dropped row: keep it out of the row report.
        tokenized = tokenized.filter(lambda drops: [d != PACKING_REMAINDER for d in drops], input_columns="_drop",
                                     batched=True, desc="Collecting drops")
    elif streaming:
        tokenized = tokenized.filter(lambda drop: drop != PACKING_REMAINDER, input_columns="_drop")
    if not streaming:
        # The rows seen are the input rows: a packed output row is a block of several.
        count_rows_seen(dataset, report, stage)
    valid = collect_drops(tokenized, report, stage=stage, count_seen=False)
    present = valid.column_names or []
    meta = [c for c in (*META_COLUMNS, WARN_COLUMN, DROPPED_TOKENS) if c in present]
    return (valid.remove_columns(meta) if meta else valid), dropped_tokens


def get_dataset(cfg: RunConfig, tokenizer, template, stage: str | None = None, generate_eval: bool = False,
                mm_processor=None) -> DatasetModule:
    """Tokenized train/eval datasets for the run (loaded from `tokenized_path` when it exists).

    `mm_processor`: a multimodal model's processor; sft rows with images or videos are then kept.
    In a multi-process run the main process prepares them first; the others then read its caches.
    """
    from lmforge.utils.distributed import main_process_first

    with main_process_first():
        return _get_dataset(cfg, tokenizer, template, stage, generate_eval, mm_processor)


def _get_dataset(cfg: RunConfig, tokenizer, template, stage: str | None, generate_eval: bool,
                 mm_processor=None) -> DatasetModule:
    from lmforge.data.processors import get_processor

    data = cfg.data
    stage = stage or cfg.finetune.stage
    if data.tokenized_path and Path(data.tokenized_path).exists() and not data.overwrite_cache:
        return _load_saved(data, stage, template, tokenizer, generate_eval, mm_processor)
    if data.tokenized_path and data.streaming:
        # Refuse before loading and tokenizing anything.
        raise UserError("tokenized_path cannot be used with streaming: a stream cannot be saved.")

    module = DatasetModule()
    aligned = load_aligned(cfg, module.report, stage)
    tokenized: dict[str, Any] = {}
    for name, dataset in aligned.items():
        predicting = generate_eval and name != TRAIN_SPLIT
        processor = get_processor(stage, data, template, tokenizer, do_generate=predicting, mm_processor=mm_processor)
        tokenized[name], dropped = tokenize_split(dataset, data, processor, module.report, name,
                                                  stage=PREDICT if predicting else TOKENIZE)
        module.packing_dropped_tokens += dropped
        if not data.streaming and len(tokenized[name]) == 0:
            details = "; ".join(module.report.summary_lines()) or "no rows were loaded"
            if dropped:  # every row was read; together they do not fill one block
                details = "; ".join([f"the {len(dataset)} rows give {dropped} tokens, fewer than one packed block, so "
                                     "lower cutoff_len or add text", *module.report.summary_lines()])
            raise UserError(
                f"No valid {'training' if name == TRAIN_SPLIT else 'evaluation'} samples are left after tokenization "
                f"(cutoff_len {data.cutoff_len}): {details}. Run `lmforge data check` on this config for details."
            )
    # Every drop, warning and unread column reaches the training (and prediction) log, one line each (once).
    from lmforge.utils.distributed import is_main_process

    for line in module.summary_lines() if is_main_process() else ():
        logger.warning(line)

    if data.tokenized_path:
        from lmforge.data.tokenized import save_tokenized

        save_tokenized(tokenized, data.tokenized_path, overwrite=True)
        logger.info(f"Saved the tokenized dataset to {data.tokenized_path}.")

    module.train_dataset = tokenized.get(TRAIN_SPLIT)
    evals = {k[len(EVAL_SPLIT) + 1:]: v for k, v in tokenized.items() if k.startswith(EVAL_SPLIT + "_")}
    module.eval_dataset = evals or tokenized.get(EVAL_SPLIT)
    return module


def _load_saved(data: DataArguments, stage: str, template, tokenizer, generate_eval: bool,
                mm_processor=None) -> DatasetModule:
    """The splits saved in `tokenized_path`, refused when their columns do not fit this run's processors."""
    from lmforge.data.processors import get_processor
    from lmforge.data.tokenized import load_tokenized

    logger.info(f"Loading the tokenized dataset from {data.tokenized_path} (dataset settings are not used).")
    saved = load_tokenized(data.tokenized_path)
    evals = {f"{EVAL_SPLIT}_{name}": ds for name, ds in saved.eval_by_name.items()}
    if saved.eval is not None:
        evals[EVAL_SPLIT] = saved.eval
    for name, dataset in ((TRAIN_SPLIT, saved.train), *evals.items()):
        if dataset is None:
            continue
        # A folder saved by a run with another stage or packing setting would fail later, in the collator.
        processor = get_processor(stage, data, template, tokenizer, do_generate=generate_eval and name != TRAIN_SPLIT,
                                  mm_processor=mm_processor)
        kept = [*processor.model_columns, *processor.media_columns, *processor.extra_features]  # what save_tokenized keeps
        expected = sorted(column for column in kept if not column.startswith("_"))
        if sorted(dataset.column_names) != expected:
            raise UserError(
                f"tokenized_path '{data.tokenized_path}' split '{name}' was saved with columns "
                f"{sorted(dataset.column_names)}, but this run (stage {stage}) needs {expected}. "
                "Delete the folder, set overwrite_cache: true to rebuild it, or choose another tokenized_path."
            )
    return DatasetModule(train_dataset=saved.train, eval_dataset=saved.eval_by_name or saved.eval)

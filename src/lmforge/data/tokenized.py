"""`tokenized_path`: save preprocessed splits once, load them on later runs without the raw data.

A save goes to a temporary folder next to the target and is renamed into place at the end, so an
interrupted save never leaves a folder that looks like a complete dataset.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.data.columns import EVAL_SPLIT, TRAIN_SPLIT
from lmforge.errors import UserError



@dataclass
class TokenizedSplits:
    """The splits of a tokenized dataset: `train`, and `eval` (one dataset, or one per eval dataset name)."""

    train: object | None = None
    eval: object | None = None
    eval_by_name: dict[str, object] = field(default_factory=dict)


def save_tokenized(dataset_dict: Mapping[str, object], path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Save the splits (`train`, `validation`, `validation_<name>`) with only their model columns.

    Keeps the columns a trainer reads (`input_ids`, `attention_mask`, `labels`, `position_ids`, a
    stage's own: `chosen_input_ids`, `kto_tags`, grpo's `prompt` and `answer`, ...) and drops the
    bookkeeping columns, whose names start with `_` (`_dataset`, `_row`, `_drop`, ...). Refuses to
    replace an existing folder unless `overwrite`. Returns the path written.
    """
    from datasets import DatasetDict

    target = Path(path)
    if target.exists() and not overwrite:
        raise UserError(
            f"tokenized_path '{target}' already exists. Delete it, choose another tokenized_path, "
            "or set overwrite_cache: true to replace it."
        )
    splits = {}
    for name, dataset in dataset_dict.items():
        drop = [column for column in dataset.column_names if column.startswith("_")]
        splits[name] = dataset.remove_columns(drop) if drop else dataset
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.saving-", dir=target.parent))
    try:
        DatasetDict(splits).save_to_disk(str(staging / "data"))
        if target.exists():
            # Move the old copy aside first: rename cannot replace a non-empty folder.
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "data")
            os.replace(staging / "data", target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging / "data", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_tokenized(path: str | os.PathLike, columns: Iterable[str] | None = None) -> TokenizedSplits:
    """Load a folder written by `save_tokenized`.

    With `columns`, every split must have exactly these columns (for example `position_ids` for a
    packed run), otherwise the folder was made for another configuration and a UserError says so.
    """
    from datasets import DatasetDict, load_from_disk

    source = Path(path)
    if not source.is_dir() or not (source / "dataset_dict.json").is_file():
        what = "is not a folder" if not source.is_dir() else "is not a saved tokenized dataset (no dataset_dict.json)"
        raise UserError(
            f"tokenized_path '{source}' {what}. Point tokenized_path at a folder written by an earlier run, "
            "or at a path that does not exist yet to create it."
        )
    loaded = load_from_disk(str(source))
    if not isinstance(loaded, DatasetDict):
        raise UserError(f"tokenized_path '{source}' holds a single dataset, not train/validation splits.")

    if columns is not None:
        expected = sorted(columns)
        for name, dataset in loaded.items():
            if sorted(dataset.column_names) != expected:
                raise UserError(
                    f"tokenized_path '{source}' split '{name}' was saved with columns {sorted(dataset.column_names)}, "
                    f"but this run needs {expected} (a different stage or packing setting). "
                    "Delete the folder or choose another tokenized_path."
                )

    splits = TokenizedSplits(train=loaded.get(TRAIN_SPLIT))
    splits.eval = loaded.get(EVAL_SPLIT)
    prefix = f"{EVAL_SPLIT}_"
    splits.eval_by_name = {name[len(prefix) :]: ds for name, ds in loaded.items() if name.startswith(prefix)}
    if splits.train is None and splits.eval is None and not splits.eval_by_name:
        raise UserError(
            f"tokenized_path '{source}' has no '{TRAIN_SPLIT}' or '{EVAL_SPLIT}' split (found: {', '.join(loaded)})."
        )
    return splits

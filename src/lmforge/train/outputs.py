"""The output_dir of a training run: refuse, resume or start; write results atomically.

A run is finished when `lmforge_run.json` exists: it is written last, after the weights, so a
run killed at any moment never looks finished. Checkpoints are written into a hidden staging
folder and renamed into place (see `trainer.py`), so every `checkpoint-N/` is complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.errors import UserError
from lmforge.utils.logging import get_logger

if TYPE_CHECKING:
    from lmforge.config import RunConfig

logger = get_logger(__name__)

RUN_FILE = "lmforge_run.json"
LOG_FILE = "trainer_log.jsonl"
STAGING_PREFIX = ".staging-"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints in step order."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def prepare_output_dir(cfg: RunConfig) -> str | None:
    """Decide how the run starts; return the checkpoint to resume from, or None for a fresh start."""
    train = cfg.train
    out = Path(train.output_dir)
    for partial in out.glob(f"{STAGING_PREFIX}*") if out.is_dir() else []:
        # A staging folder is a checkpoint or export interrupted before its rename: never complete.
        shutil.rmtree(partial, ignore_errors=True)
    if train.resume_from_checkpoint:
        path = Path(train.resume_from_checkpoint)
        if not (path / "trainer_state.json").is_file():
            raise UserError(f"resume_from_checkpoint '{path}' is not a checkpoint folder (no trainer_state.json in it).")
        return str(path)
    if not train.do_train:
        return None
    finished = (out / RUN_FILE).is_file()
    if train.overwrite_output_dir:
        if out.is_dir() and any(out.iterdir()):
            logger.info(f"overwrite_output_dir: replacing the previous results in {out}")
            shutil.rmtree(out)
        return None
    if finished:
        raise UserError(
            f"output_dir '{out}' already holds a finished training run. Set overwrite_output_dir: true to replace it, "
            "or choose another output_dir."
        )
    found = checkpoints(out)
    if found:
        logger.info(f"Resuming from {found[-1]} (found in output_dir); set overwrite_output_dir: true to start over.")
        return str(found[-1])
    leftovers = [p.name for p in out.iterdir()] if out.is_dir() else []
    unknown = [n for n in leftovers if n not in (LOG_FILE, "runs", "running_log.txt", "training_args.yaml")]
    if unknown:
        raise UserError(
            f"output_dir '{out}' is not empty ({', '.join(sorted(unknown)[:5])}) and holds no checkpoint to resume. "
            "Set overwrite_output_dir: true to replace it, or choose another output_dir."
        )
    return None


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers see either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False, default=str)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def staging_dir(output_dir: Path, name: str) -> Path:
    """A fresh hidden folder next to the final location (same file system, so rename is atomic)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"{STAGING_PREFIX}{name}"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir()
    return path


def publish_files(staging: Path, output_dir: Path) -> list[str]:
    """Move every file of `staging` into `output_dir` (each move atomic), then remove `staging`."""
    names = []
    for item in sorted(staging.iterdir()):
        target = output_dir / item.name
        if target.is_dir() and item.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
        names.append(item.name)
    staging.rmdir()
    return names


def publish_dir(staging: Path, target: Path) -> None:
    """Put the finished `staging` folder in place of `target` (renames only: never a partial folder)."""
    if not target.exists():
        os.rename(staging, target)
        return
    previous = staging.with_name(f"{staging.name}.previous")
    if previous.exists():
        shutil.rmtree(previous)
    os.rename(target, previous)
    os.rename(staging, target)
    if previous.is_dir():
        shutil.rmtree(previous, ignore_errors=True)
    else:
        previous.unlink(missing_ok=True)


def write_run_file(cfg: RunConfig, output_dir: Path, template_name: str | None, extra: dict | None = None) -> None:
    """The run's self-description, written last: chat, api and export read the template from it."""
    from lmforge import __version__

    data = {
        "lmforge_version": __version__,
        "stage": cfg.finetune.stage,
        "finetuning_type": cfg.finetune.finetuning_type,
        "model_name_or_path": cfg.model.model_name_or_path,
        "adapter_name_or_path": cfg.model.adapter_name_or_path,
        "template": template_name,
        "config": cfg.to_flat_dict(),
    }
    if extra:
        data.update(extra)
    write_json_atomic(output_dir / RUN_FILE, data)


def read_run_file(path: str | os.PathLike) -> dict | None:
    """The run description of a training output_dir, or None when `path` is not one."""
    file = Path(path) / RUN_FILE
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise UserError(f"{file} is not valid JSON; the run folder is damaged.") from None

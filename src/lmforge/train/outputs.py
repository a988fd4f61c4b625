"""The output_dir of a training run: refuse, resume or start; the run file that marks it finished.

A run is finished when `lmforge_run.json` exists: it is written last, after the weights, so a
run killed at any moment never looks finished. Checkpoints are written into a hidden staging
folder and renamed into place (see `trainer.py`), so every `checkpoint-N/` is complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.errors import UserError
from lmforge.model.resolve import RUN_FILE, absolute_if_local
from lmforge.utils.atomic import STAGING_PREFIX, remove_partial_json, remove_staging, write_json_atomic
from lmforge.utils.logging import get_logger
from lmforge.utils.secrets import without_secrets

if TYPE_CHECKING:
    from lmforge.config import RunConfig

logger = get_logger(__name__)

LOG_FILE = "trainer_log.jsonl"
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
    # A staging folder is a checkpoint or final save interrupted before its rename: never complete;
    # so is the temporary file of a JSON write interrupted before its rename.
    remove_staging(out)
    remove_partial_json(out)
    check_output_dir(cfg)
    if train.resume_from_checkpoint:
        path = Path(train.resume_from_checkpoint)
        trim_log(out, path)
        return str(path)
    if not train.do_train:
        return None
    if train.overwrite_output_dir:
        if out.is_dir() and any(out.iterdir()):
            logger.info(f"overwrite_output_dir: replacing the previous results in {out}")
            shutil.rmtree(out)
        return None
    found = checkpoints(out)
    if found:
        logger.info(f"Resuming from {found[-1]} (found in output_dir); set overwrite_output_dir: true to start over.")
        trim_log(out, found[-1])
        return str(found[-1])
    return None


def check_output_dir(cfg: RunConfig) -> None:
    """UserError when the run cannot start in its output_dir; changes nothing (the launcher asks before the ranks
    start, so that a refusal is one line instead of one per rank)."""
    train = cfg.train
    out = Path(train.output_dir)
    if train.resume_from_checkpoint:
        path = Path(train.resume_from_checkpoint)
        if not (path / "trainer_state.json").is_file():
            raise UserError(f"resume_from_checkpoint '{path}' is not a checkpoint folder (no trainer_state.json in it).")
        return
    if not train.do_train or train.overwrite_output_dir:
        return
    if (out / RUN_FILE).is_file():
        raise UserError(
            f"output_dir '{out}' already holds a finished training run. Set overwrite_output_dir: true to replace it, "
            "or choose another output_dir."
        )
    if checkpoints(out):
        return
    leftovers = [p.name for p in out.iterdir()] if out.is_dir() else []
    staged = [n for n in leftovers if n.startswith(STAGING_PREFIX) or (n.startswith(".") and n.endswith(".tmp"))]
    unknown = [n for n in leftovers if n not in (LOG_FILE, "runs", "running_log.txt", "training_args.yaml")
               and n not in staged]
    if unknown:
        raise UserError(
            f"output_dir '{out}' is not empty ({', '.join(sorted(unknown)[:5])}) and holds no checkpoint to resume. "
            "Set overwrite_output_dir: true to replace it, or choose another output_dir."
        )


def trim_log(output_dir: Path, checkpoint: Path) -> None:
    """Keep the log lines written up to the checkpoint: the resumed run logs what came after it again.

    Without this, the steps between the checkpoint and the kill would appear twice in
    trainer_log.jsonl (and in the loss curves read from it). The Trainer records every log in its
    state's `log_history` as LogCallback writes it as one line, so the checkpoint's history length
    is the number of lines that belong to it. A last line cut short by the kill goes too.
    """
    path, state_file = output_dir / LOG_FILE, checkpoint / "trainer_state.json"
    if not path.is_file() or not state_file.is_file():
        return
    state = json.loads(state_file.read_text(encoding="utf-8"))
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            json.loads(line)
        except ValueError:
            continue
        kept.append(line + "\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(kept[: len(state.get("log_history", []))]), encoding="utf-8")
    os.replace(tmp, path)


def write_run_file(cfg: RunConfig, output_dir: Path, template_name: str | None, extra: dict | None = None) -> None:
    """The run's self-description, written last: chat, api and export read the template from it."""
    from lmforge import __version__

    data = {
        "lmforge_version": __version__,
        "stage": cfg.finetune.stage,
        "finetuning_type": cfg.finetune.finetuning_type,
        # Local paths are recorded absolute, so the run folder works from any directory; hub ids as given.
        "model_name_or_path": absolute_if_local(cfg.model.model_name_or_path),
        "adapter_name_or_path": [absolute_if_local(p) for p in cfg.model.adapter_name_or_path or []] or None,
        "template": template_name,
        "processes": int(os.environ.get("WORLD_SIZE", "1") or 1),  # the ranks that trained it (torchrun)
        "config": without_secrets(cfg.to_flat_dict()),  # tokens never reach a file
    }
    if extra:
        data.update(extra)
    write_json_atomic(output_dir / RUN_FILE, data)

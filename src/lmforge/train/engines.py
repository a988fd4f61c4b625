"""DeepSpeed and FSDP: what must hold before a run starts, checked in one line before anything loads.

FSDP runs on GPUs and, as FSDP2, on CPUs too (see `train/fsdp.py`).

DeepSpeed compiles a few operators the first time they are used (a communication op on CPUs, the
CPU Adam of the offload configs), for a minute or so. Its cache goes to `TORCH_EXTENSIONS_DIR`; unless
the user set it, lmforge points it at a folder of the Python environment, so the build is reused by
every run of that environment and never lands in the home folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.errors import UserError

if TYPE_CHECKING:
    from lmforge.config import RunConfig

INSTALL_DEEPSPEED = 'DS_BUILD_OPS=0 pip install --no-build-isolation "lmforge[deepspeed]"'


def check(cfg: RunConfig) -> None:
    """The DeepSpeed/FSDP settings of `cfg`, early: in the launcher and in each rank, before any data or model."""
    train = cfg.train
    check_settings(getattr(train, "deepspeed", None), getattr(train, "fsdp", None) or train.hf_passthrough.get("fsdp"),
                   cfg.finetune.stage)


def check_settings(deepspeed, fsdp, stage: str | None = None) -> None:
    """Refuse what cannot run here, in one line, before the Trainer fails deep inside."""
    if deepspeed:
        if isinstance(deepspeed, str) and not os.path.isfile(deepspeed):
            raise UserError(f"deepspeed: '{deepspeed}' is not a file; give a DeepSpeed JSON config, e.g. "
                            "examples/deepspeed/ds_z2_config.json.")
        if importlib.util.find_spec("deepspeed") is None:
            raise UserError(f"deepspeed is set, but the DeepSpeed package is not installed. Install it "
                            f"({INSTALL_DEEPSPEED}), or remove deepspeed.")
        if isinstance(deepspeed, str):
            _check_deepspeed_file(deepspeed)
        extensions_dir()
    if fsdp:
        if int(os.environ.get("WORLD_SIZE", "1") or 1) < 2 and not _launching():
            raise UserError("fsdp shards the model across processes: launch several, e.g. FORCE_TORCHRUN=1 "
                            "NPROC_PER_NODE=2 lmforge train ..., or remove fsdp.")
        if stage == "ppo":
            raise UserError("fsdp is not supported by stage ppo; use deepspeed or plain DDP (FORCE_TORCHRUN=1).")


def zero_stage(deepspeed) -> int | None:
    if isinstance(deepspeed, dict):
        config = deepspeed
    elif isinstance(deepspeed, str) and os.path.isfile(deepspeed):
        try:
            config = json.loads(Path(deepspeed).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
    else:
        return None
    zero = config.get("zero_optimization") if isinstance(config, dict) else None
    return zero.get("stage") if isinstance(zero, dict) else None


def _launching() -> bool:
    """Whether this process is the launcher that is about to start the ranks (not a rank itself)."""
    from lmforge.train import launcher

    return launcher.wanted()


def _check_deepspeed_file(path: str) -> None:
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"deepspeed: '{path}' is not valid JSON: {err.msg} at line {err.lineno}, "
                        f"column {err.colno}.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"deepspeed: cannot read '{path}': {err}.") from None
    stage = config.get("zero_optimization", {}).get("stage", 0) if isinstance(config, dict) else None
    if stage not in (0, 1, 2, 3):
        raise UserError(f"deepspeed: '{path}' must be a JSON object whose zero_optimization.stage is 0, 1, 2 or 3 "
                        f"(found {stage!r}); see examples/deepspeed/.")


def extensions_dir() -> str:
    """Where DeepSpeed keeps its compiled operators: the user's TORCH_EXTENSIONS_DIR, else a folder of this
    Python environment (else a private temporary one); set in the environment, so that the ranks inherit it."""
    chosen = os.environ.get("TORCH_EXTENSIONS_DIR")
    if chosen:
        return chosen
    for folder in (Path(sys.prefix) / "var" / "lmforge" / "torch_extensions",
                   Path(tempfile.gettempdir()) / f"lmforge-{os.getuid()}" / "torch_extensions"):
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError:
            continue
        # A compiled operator is loaded into the process: never from a folder another user could write.
        if folder.stat().st_uid == os.getuid() and os.access(folder, os.W_OK):
            os.environ["TORCH_EXTENSIONS_DIR"] = str(folder)
            return str(folder)
    raise UserError("DeepSpeed needs a folder for its compiled operators: set TORCH_EXTENSIONS_DIR to a writable "
                    "folder of yours.")

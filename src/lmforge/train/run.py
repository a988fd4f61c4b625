"""Run one training configuration: check the output_dir, then the stage's workflow (pt, sft, rm, ppo, dpo, kto, grpo)."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from lmforge.utils.logging import quiet_known_warnings

if TYPE_CHECKING:
    from lmforge.config import RunConfig


def run(cfg: RunConfig, callbacks=()) -> dict:
    """Run one training configuration in this process; return its metrics (validation refused other stages)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_known_warnings()
    from lmforge.train.outputs import prepare_output_dir
    from lmforge.utils import distributed

    # A launched run joins its process group first; only the main process touches output_dir.
    from lmforge.train.args import check_engines

    check_engines(cfg)
    distributed.init(cfg.train.ddp_timeout)
    resume_from = prepare_output_dir(cfg) if distributed.is_main_process() else None
    resume_from = distributed.broadcast(resume_from)
    from transformers import set_seed

    set_seed(cfg.train.seed)
    with _tensorboard_dir(cfg.train.logging_dir):
        try:
            return _run_stage(cfg, resume_from, callbacks)
        except RuntimeError as err:
            if not distributed.peer_is_gone(err):
                raise
            # The launcher names the rank that failed first; this one says why it stops, without a traceback.
            from lmforge.errors import UserError

            raise UserError(f"Another rank stopped, so this one ({os.environ.get('RANK', '?')}) stops too: "
                            f"{str(err).splitlines()[0][:200]}") from None


@contextlib.contextmanager
def _tensorboard_dir(logging_dir: str | None):
    """transformers 5 reads the TensorBoard folder from TENSORBOARD_LOGGING_DIR; scope it to this run, so that the
    next run in the same process (LLaMA Board, tests) does not write its events into this run's folder."""
    before = os.environ.get("TENSORBOARD_LOGGING_DIR")
    if logging_dir:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(logging_dir)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        else:
            os.environ["TENSORBOARD_LOGGING_DIR"] = before


def _run_stage(cfg: RunConfig, resume_from: str | None, callbacks) -> dict:
    if cfg.finetune.stage == "sft":
        from lmforge.train.sft import run_sft

        return run_sft(cfg, resume_from, callbacks)
    if cfg.finetune.stage in ("dpo", "kto"):
        from lmforge.train.dpo import run_preference

        return run_preference(cfg, resume_from, callbacks)
    if cfg.finetune.stage == "rm":
        from lmforge.train.reward import run_rm

        return run_rm(cfg, resume_from, callbacks)
    if cfg.finetune.stage == "ppo":
        from lmforge.train.ppo import run_ppo

        return run_ppo(cfg, resume_from, callbacks)
    if cfg.finetune.stage == "grpo":
        from lmforge.train.grpo import run_grpo

        return run_grpo(cfg, resume_from, callbacks)
    from lmforge.train.pt import run_pt

    return run_pt(cfg, resume_from, callbacks)

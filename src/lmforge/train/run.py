"""Run one training configuration: check the output_dir, then the stage's workflow (pt, sft, dpo, kto)."""

from __future__ import annotations

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

    resume_from = prepare_output_dir(cfg)
    from transformers import set_seed

    set_seed(cfg.train.seed)
    if cfg.finetune.stage == "sft":
        from lmforge.train.sft import run_sft

        return run_sft(cfg, resume_from, callbacks)
    if cfg.finetune.stage in ("dpo", "kto"):
        from lmforge.train.dpo import run_preference

        return run_preference(cfg, resume_from, callbacks)
    from lmforge.train.pt import run_pt

    return run_pt(cfg, resume_from, callbacks)

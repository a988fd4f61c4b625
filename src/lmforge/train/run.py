"""`lmforge train CONFIG`: parse, check the output_dir, and run the stage's workflow."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from lmforge.errors import UserError
from lmforge.utils.logging import quiet_known_warnings

if TYPE_CHECKING:
    from lmforge.config import RunConfig

SUPPORTED = ("sft", "pt")


def run(cfg: RunConfig, callbacks=()) -> dict:
    """Run one training configuration in this process; return its metrics."""
    if cfg.finetune.stage not in SUPPORTED:
        raise UserError(f"stage '{cfg.finetune.stage}' is not supported yet; supported stages: {', '.join(SUPPORTED)}.")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_known_warnings()
    from lmforge.train.outputs import prepare_output_dir

    resume_from = prepare_output_dir(cfg)
    from transformers import set_seed

    set_seed(cfg.train.seed)
    if cfg.train.do_predict:
        # Generation with the serving engine; validation allows it only on its own, in stage sft.
        from lmforge.eval.predict import run_predict

        return run_predict(cfg)
    if cfg.finetune.stage == "sft":
        from lmforge.train.sft import run_sft

        return run_sft(cfg, resume_from, callbacks)
    from lmforge.train.pt import run_pt

    return run_pt(cfg, resume_from, callbacks)


def main(argv: list[str]) -> int:
    from lmforge.config import parse_config

    run(parse_config("train", argv))
    return 0

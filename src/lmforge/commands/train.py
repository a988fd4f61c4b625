"""`lmforge train CONFIG`: train (stage pt or sft), evaluate, or predict with generation (`do_predict`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmforge.commands.common import load_config

if TYPE_CHECKING:
    from lmforge.config import RunConfig


def run(cfg: RunConfig) -> dict:
    """Run a validated train config in this process; return its metrics."""
    if cfg.train.do_predict:
        # Generation with the serving engine; validation allows it only on its own, in stage sft.
        from lmforge.eval.predict import run_predict

        return run_predict(cfg)
    from lmforge.train.run import run as run_training

    return run_training(cfg)


def main(argv: list[str]) -> int:
    run(load_config("train", argv))
    return 0

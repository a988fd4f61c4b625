"""`lmforge eval CONFIG`: MMLU / CMMLU / C-Eval style multiple-choice accuracy (see `lmforge.eval.run`)."""

from __future__ import annotations

from lmforge.commands.common import load_config


def main(argv: list[str]) -> int:
    cfg = load_config("eval", argv)
    from lmforge.eval.run import run_eval

    run_eval(cfg)
    return 0

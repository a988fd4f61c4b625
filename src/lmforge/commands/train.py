"""`lmforge train CONFIG`: train (stage pt or sft), evaluate, or predict with generation (`do_predict`)."""

from __future__ import annotations

from lmforge.commands.common import load_config


def main(argv: list[str]) -> int:
    cfg = load_config("train", argv)
    if cfg.train.do_predict:
        # Generation with the serving engine; validation allows it only on its own, in stage sft.
        from lmforge.eval.predict import run_predict

        run_predict(cfg)
    else:
        from lmforge.train.run import run

        run(cfg)
    return 0

"""`lmforge train CONFIG`: train (any stage), evaluate, or predict (`do_predict`: generation in sft, scores in rm)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from lmforge.commands.common import load_config
from lmforge.config.environment import env_choice
from lmforge.utils import allocator

if TYPE_CHECKING:
    from lmforge.config import RunConfig


def run(cfg: RunConfig) -> dict:
    """Run a validated train config in this process; return its metrics."""
    if cfg.train.do_predict and cfg.finetune.stage == "sft":
        # Generation with the serving engine; validation allows it only on its own, in stage sft.
        # (A reward model's do_predict scores pairs in its own workflow.)
        from lmforge.eval.predict import run_predict

        return run_predict(cfg)
    from lmforge.train.run import run as run_training

    return run_training(cfg)


def main(argv: list[str]) -> int:
    cfg = load_config("train", argv)  # checked once, before any process starts
    if env_choice(os.environ, allocator.ENV, allocator.CHOICES) == "jemalloc":
        # Here, before torch is imported: the process starts again under jemalloc (lmforge.utils.allocator).
        allocator.restart_with_jemalloc(["train", *argv], on_cpu=cfg.train.use_cpu or not allocator.gpu_device_present())
    from lmforge.train import engines, launcher, ray_cluster
    from lmforge.train.outputs import check_output_dir

    engines.check(cfg)
    if ray_cluster.wanted():
        check_output_dir(cfg)  # one line here rather than one per worker
        return ray_cluster.launch(cfg)
    if launcher.wanted(deepspeed=bool(cfg.train.deepspeed)):
        check_output_dir(cfg)
        return launcher.launch(argv)
    from lmforge.utils import distributed

    run(cfg)
    distributed.shutdown()  # a launched worker leaves its process group before the interpreter exits
    return 0

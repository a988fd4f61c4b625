"""DeepSpeed ZeRO-3: models loaded already partitioned across the processes, and frozen models made usable."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from lmforge.train.engines import zero_stage

if TYPE_CHECKING:
    from lmforge.config import RunConfig


@contextlib.contextmanager
def loading(cfg: RunConfig, resume_from: str | None):
    """Under DeepSpeed ZeRO-3, load the models already partitioned across the processes.

    transformers partitions the weights while it loads them only when the training arguments of a ZeRO-3 run
    exist at that moment; lmforge builds them after the model, so without this every process would first hold
    the whole model (on CPUs: twice the memory of a ZeRO-2 process; with a model larger than one device: out
    of memory). The arguments are kept alive for the block: transformers holds them by weak reference."""
    if zero_stage(cfg.train.deepspeed) != 3:
        yield
        return
    import deepspeed.comm
    import torch.distributed as dist

    from lmforge.train.args import build_training_args

    if dist.is_initialized() and not deepspeed.comm.is_initialized():
        # DeepSpeed sizes the partitions by its own view of the process group: give it the one that runs.
        deepspeed.comm.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False)
    args = build_training_args(cfg, resume_from)
    try:
        yield
    finally:
        del args


def frozen_for_zero3(model, accelerator):
    """A frozen model (a DPO/KTO reference) that a ZeRO-3 run loaded partitioned, made usable: wrapped in a DeepSpeed
    engine that gathers each layer's weights for its forward, without optimizer. Any other model is returned as is."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None or zero_stage(plugin.deepspeed_config) != 3:
        return model
    import copy

    import deepspeed

    config = copy.deepcopy(plugin.deepspeed_config)
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    zero = config["zero_optimization"]
    # The sizes the Trainer fills in for the policy from the model's width ("auto" in the shipped configs).
    for key, value in (("reduce_bucket_size", hidden * hidden if hidden else None),
                       ("stage3_prefetch_bucket_size", int(0.9 * hidden * hidden) if hidden else None),
                       ("stage3_param_persistence_threshold", 10 * hidden if hidden else None)):
        if zero.get(key) == "auto":
            zero[key] = value if value else 0
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine

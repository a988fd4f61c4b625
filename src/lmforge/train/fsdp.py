"""FSDP2 on CPUs (gloo): make the Trainer shard the model instead of silently running plain DDP.

With CUDA GPUs accelerate turns `fsdp` / `fsdp_config` (or `accelerate launch --config_file` with an FSDP
config) into FSDP. On CPUs its state stays MULTI_CPU, and the Trainer wraps the model in DDP with nothing
sharded, saying nothing. FSDP2 itself (`torch.distributed.fsdp.fully_shard`) works on CPUs, so lmforge sets
the FSDP plugin on accelerate's state the way accelerate does for GPUs, before the Trainer reads it; the
Trainer then prepares, clips, checkpoints and gathers the model through its own FSDP2 path.
"""

from __future__ import annotations

import os

from transformers import TrainerCallback

from lmforge.errors import UserError
from lmforge.utils.logging import get_logger

logger = get_logger(__name__)


def requested(args) -> bool:
    """Whether the run asks for FSDP: the `fsdp` training argument, or `accelerate launch` with an FSDP config."""
    return getattr(args, "fsdp_plugin_args", None) is not None or (
        os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true")


def shard_on_cpu(trainer) -> bool:
    """Called once the Trainer made its Accelerator: on CPUs, switch accelerate's state to FSDP (version 2).
    Whether it did (the trainer then adds `ReportSharding`)."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU or not requested(trainer.args):
        return False
    plugin = FullyShardedDataParallelPlugin(**(trainer.args.fsdp_plugin_args or {}))
    if plugin.fsdp_version != 2:
        raise UserError("FSDP version 1 needs CUDA GPUs; on CPUs lmforge runs FSDP2: set fsdp_config: "
                        "{fsdp_version: 2} (fsdp_version: 2 in an accelerate config).")
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    # What AcceleratorState.__init__ sets for a GPU run with an FSDP plugin (the states share their fields).
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    trainer.is_fsdp_enabled = True
    return True


class ReportSharding(TrainerCallback):
    """Say, once training starts, how much of the model this process holds: the proof that FSDP shards it."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            return
        from torch.distributed.tensor import DTensor, Shard

        params = list(model.parameters())
        sharded = [p for p in params if isinstance(p, DTensor) and any(isinstance(x, Shard) for x in p.placements)]
        local = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params)
        whole = sum(p.numel() for p in params)
        if state.is_world_process_zero:
            logger.info(f"FSDP2: {len(sharded)} of {len(params)} parameter tensors sharded over "
                        f"{args.world_size} processes; this process holds {100 * local / whole:.1f}% of the "
                        "model's elements.")

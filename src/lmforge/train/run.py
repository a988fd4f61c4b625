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
    from lmforge.train import engines, optimizers, zero3

    check_fp8(cfg)  # first: an fp8 config's DeepSpeed/FSDP settings are fp8's own
    engines.check(cfg)
    optimizers.check(cfg)  # a missing optimizer package, before any data or model is loaded
    choose_precision(cfg)
    say_allocator(cfg)
    distributed.init(cfg.train.ddp_timeout)
    resume_from = _prepare_output_dir(cfg, prepare_output_dir, distributed)
    from transformers import set_seed

    set_seed(cfg.train.seed)
    with _tensorboard_dir(cfg.train.logging_dir), zero3.loading(cfg, resume_from):
        try:
            return _run_stage(cfg, resume_from, callbacks)
        except RuntimeError as err:
            if not distributed.peer_is_gone(err):
                raise
            # The launcher names the rank that failed first; this one says why it stops, without a traceback.
            from lmforge.errors import UserError

            raise UserError(f"Another rank stopped, so this one ({os.environ.get('RANK', '?')}) stops too: "
                            f"{str(err).splitlines()[0][:200]}") from None


def check_fp8(cfg: RunConfig) -> None:
    """`fp8: true` (LLaMA-Factory's FP8 training) is refused in one line, saying what it would need."""
    if not cfg.train.fp8:
        return
    import torch

    from lmforge.errors import UserError

    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        raise UserError("fp8 needs an NVIDIA GPU with FP8 units (compute capability 8.9 or newer: Ada, Hopper or "
                        "Blackwell), and this machine has none. Remove fp8; bf16 trains on any recent GPU.")
    raise UserError("fp8 training is not available in lmforge yet. Remove fp8; bf16 trains at full quality on this GPU.")


# The smallest hidden size at which bf16 on an AMX CPU was measured faster than float32 (a Qwen2.5-0.5B-shaped
# model: x1.6); on the 128-wide test model it is 1.75x slower, per-operation overhead outweighing the matmuls.
CPU_BF16_MIN_HIDDEN = 896


def choose_precision(cfg: RunConfig) -> None:
    """Settle `bf16` (True or False) before anything reads it; say in one line what was chosen for the user.

    Unset, it is on where it is faster at the same recipe (bf16 autocast, float32 trained weights), unless fp16 or
    pure_bf16 is set: on CUDA GPUs that compute bf16 natively (Ampere and newer: what LLaMA-Factory's configs ask
    for), and on CPUs with AMX for models of at least CPU_BF16_MIN_HIDDEN hidden units, not quantized; float32
    elsewhere. Set on a CPU-only machine, it is kept only where the CPU computes bf16 natively: emulated bf16 is
    about 30x slower than float32, so such a run trains in float32 instead (`pure_bf16`, asked for explicitly,
    stays).
    """
    from lmforge.utils import hardware
    from lmforge.utils.logging import get_logger

    if cfg.train.bf16 is None:
        cfg.train.bf16 = False
        if cfg.train.fp16 or cfg.finetune.pure_bf16:
            return
        if hardware.cuda_has_bf16():
            cfg.train.bf16 = True
            get_logger(__name__).info("bf16: not set, and this GPU computes bf16 natively: training in bf16 mixed "
                                      "precision (set bf16: false for float32).")
        elif hardware.cpu_only() and not cfg.model.quantization_bit and hardware.cpu_has_amx():
            from lmforge.model.loader import hidden_size

            hidden = hidden_size(cfg.model)
            if hidden and hidden >= CPU_BF16_MIN_HIDDEN:
                cfg.train.bf16 = True
                get_logger(__name__).info(
                    f"bf16: not set, and this CPU computes bf16 with AMX: training this model (hidden size {hidden}) "
                    "in bf16 mixed precision (set bf16: false for float32).")
        return
    if not cfg.train.bf16 or cfg.finetune.pure_bf16 or not hardware.cpu_only():
        return
    if hardware.cpu_has_bf16():
        get_logger(__name__).info("bf16: this CPU computes bf16 natively (AVX512-BF16 or AMX); training in bf16.")
        return
    cfg.train.bf16 = False
    get_logger(__name__).info("bf16: this CPU has no native bf16 (AVX512-BF16 or AMX); training in float32 instead.")


def say_allocator(cfg: RunConfig) -> None:
    """Name the memory allocator of a CPU run in one line (`lmforge.utils.allocator`), once per machine."""
    from lmforge.config.environment import env_choice
    from lmforge.utils import allocator, hardware
    from lmforge.utils.logging import get_logger

    if os.environ.get("LOCAL_RANK", "0") != "0" or not (cfg.train.use_cpu or hardware.cpu_only()):
        return
    kind = allocator.active()
    if kind != "system":
        line = f"{kind} (LMFORGE_ALLOCATOR=system for the system's)."
    elif env_choice(os.environ, allocator.ENV, allocator.CHOICES) == "system":
        line = "the system's (LMFORGE_ALLOCATOR=system)."
    elif allocator.find_jemalloc() is None:
        line = ("the system's; with jemalloc installed (Debian/Ubuntu: apt-get install libjemalloc2) a CPU run "
                "takes less memory and time.")
    else:  # a GPU device node on the machine, or training called in another program's process
        line = "the system's (jemalloc is for `lmforge train` itself, on a machine without a GPU)."
    get_logger(__name__).info(f"Memory allocator: {line}")


def _prepare_output_dir(cfg: RunConfig, prepare, distributed) -> str | None:
    """The main process decides how the run starts (fresh, resumed, refused) and tells the others: a refusal is its
    one line, and the other ranks stop quietly instead of failing on a closed connection."""
    from lmforge.errors import UserError

    if distributed.world_size() <= 1:
        return prepare(cfg)
    outcome = None
    if distributed.is_main_process():
        try:
            outcome = ("resume", prepare(cfg))
        except UserError as err:
            outcome = ("refused", str(err))
    outcome = distributed.broadcast(outcome)
    if outcome[0] == "refused":
        if distributed.is_main_process():
            raise UserError(outcome[1])
        raise SystemExit(1)
    return outcome[1]


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

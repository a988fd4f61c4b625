"""Run `lmforge train` on several processes: re-execute it under torchrun, as LLaMA-Factory's launcher does.

It launches when FORCE_TORCHRUN is on or more than one CUDA GPU is visible, and reads LLaMA-Factory's
variables: NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT (a free port by default on a
single node), and for elastic runs RDZV_ID, MIN_NNODES, MAX_NNODES, MAX_RESTARTS. Without a GPU the
processes talk over gloo. torchrun runs inside this process: a failed rank stops the others, and its
failure is one line here (the rank's own error is printed above it); Ctrl+C or SIGTERM stops every rank.
"""

from __future__ import annotations

import os
import socket
import sys

from lmforge.config.environment import env_int
from lmforge.errors import UserError
from lmforge.utils.logging import get_logger

logger = get_logger(__name__)
_TRUE = ("1", "true", "y", "yes")


def under_torchrun() -> bool:
    """Whether this process is one rank of a launched run (torchrun, accelerate, deepspeed set these)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def wanted(deepspeed: bool = False) -> bool:
    """Whether `lmforge train` should launch its ranks: asked to, several GPUs, or DeepSpeed (which runs only
    in a launched process group, even with one process)."""
    if under_torchrun():
        return False
    if os.environ.get("FORCE_TORCHRUN", "").strip().lower() in _TRUE or deepspeed:
        return True
    return _cuda_count() > 1


def _cuda_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _int_env(name: str, default: int) -> int:
    low = 0 if name in ("NODE_RANK", "MAX_RESTARTS") else 1
    return env_int(os.environ, name, default, low, 65535 if name == "MASTER_PORT" else 1_000_000)


def torchrun_args(argv: list[str]) -> list[str]:
    """torchrun's command line for `lmforge train ARGV` from the environment."""
    nproc = _int_env("NPROC_PER_NODE", max(_cuda_count(), 1))
    nnodes = _int_env("NNODES", 1)
    args = ["--nproc-per-node", str(nproc)]
    if os.environ.get("RDZV_ID"):  # elastic: a rendezvous instead of a fixed master
        min_nodes, max_nodes = _int_env("MIN_NNODES", nnodes), _int_env("MAX_NNODES", nnodes)
        endpoint = f"{os.environ.get('MASTER_ADDR', '127.0.0.1')}:{_int_env('MASTER_PORT', 29500)}"
        args += ["--nnodes", f"{min_nodes}:{max_nodes}", "--rdzv-id", os.environ["RDZV_ID"], "--rdzv-backend",
                 "c10d", "--rdzv-endpoint", endpoint, "--max-restarts", str(_int_env("MAX_RESTARTS", 3))]
    else:
        port = _int_env("MASTER_PORT", _free_port() if nnodes == 1 else 29500)
        args += ["--nnodes", str(nnodes), "--node-rank", str(_int_env("NODE_RANK", 0)),
                 "--master-addr", os.environ.get("MASTER_ADDR", "127.0.0.1"), "--master-port", str(port),
                 "--max-restarts", str(_int_env("MAX_RESTARTS", 0))]
    return [*args, "-m", "lmforge", "train", *argv]


def first_failure(failures: dict) -> tuple:
    """(rank, ProcessFailure) of the rank that caused a run's end, from torchrun's failures by global rank.

    A rank killed by a signal (out of memory, a user's kill) comes first: its peers then fail with an exit
    code of their own when the collective loses it, and torchrun's timestamps have a one-second grain, so
    time alone can name a peer. Ranks that torchrun itself stopped with SIGTERM come last; ties go to the
    earliest failure, then to the lowest rank.
    """
    def order(item):
        code = item[1].exitcode
        return (2 if code == -15 else 0 if code < 0 else 1), item[1].timestamp, item[0]

    return min(failures.items(), key=order)


def launch(argv: list[str]) -> int:
    """Run `lmforge train ARGV` under torchrun; return the exit code (UserError when a rank failed)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = torchrun_args(argv)
    logger.info(f"Launching torchrun {' '.join(args)}")
    try:
        run(parse_args(args))
    except ChildFailedError as err:
        rank, failure = first_failure(err.failures)
        code = failure.exitcode
        if code < 0:
            how = f"was killed by signal {-code} ({failure.signal_name()})"
        else:
            how = f"failed with exit code {code} (its error is above)"
        raise UserError(f"Rank {rank} {how}; torchrun stopped the other ranks. Run the same command again to "
                        "resume from the last checkpoint.") from None
    except SignalException as err:
        print(f"lmforge train: stopped by {err.sigval.name}; every rank was stopped.", file=sys.stderr, flush=True)
        return 128 + int(err.sigval)
    return 0

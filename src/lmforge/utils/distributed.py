"""The few collective steps lmforge takes itself in a multi-process run (the Trainer does the rest).

Everything here is a no-op in a single process, so callers need no `if distributed` of their own.
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def init(timeout_s: int | None = None) -> None:
    """Join the process group of a launched run (gloo without CUDA), before any data is prepared."""
    if world_size() <= 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        return
    from accelerate import PartialState

    kwargs = {"timeout": timedelta(seconds=timeout_s)} if timeout_s else {}
    PartialState(cpu=not _cuda(), **kwargs)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _active() -> bool:
    if world_size() <= 1:
        return False
    import torch.distributed as dist

    return dist.is_initialized()


def is_main_process() -> bool:
    if not _active():
        return True
    import torch.distributed as dist

    return dist.get_rank() == 0


def barrier() -> None:
    if _active():
        import torch.distributed as dist

        dist.barrier()


@contextlib.contextmanager
def main_process_first():
    """The main process runs the block first (tokenizing, writing caches); the others run it after, from its
    results. A failure on the main process still releases the others, who then fail on their own."""
    if not _active():
        yield
        return
    main = is_main_process()
    if not main:
        barrier()
    try:
        yield
    finally:
        if main:
            barrier()


def broadcast(value):
    """The main process's `value`, on every process."""
    if not _active():
        return value
    import torch.distributed as dist

    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def shutdown() -> None:
    """Leave the process group once the run is over (no-op when there is none).

    Left to the interpreter's exit, the group's communication threads are torn down in whatever order the
    garbage collector reaches them, which has aborted a finished ZeRO-3 worker (SIGABRT, "terminate called
    without an active exception") after its model was saved.
    """
    if _active():
        import torch.distributed as dist

        dist.destroy_process_group()


def peer_is_gone(err: BaseException) -> bool:
    """Whether `err` is a collective failing because the process at its other end died (in a launched run)."""
    return _active() and isinstance(err, RuntimeError) and any(sign in str(err) for sign in _PEER_GONE)


# What gloo and NCCL say when the process at the other end of a collective has died.
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted",
              "ProcessGroupNCCL", "Timed out")

"""Stop a run cleanly on SIGTERM: LLaMA Board's Abort, `kill`, a scheduler taking the machine back.

The first SIGTERM lets the current optimizer step finish, saves a checkpoint and ends the run without
its final weights, so the same command resumes from that checkpoint. A second SIGTERM stops at once
(the checkpoints already written are complete: they are written atomically).
"""

from __future__ import annotations

import signal
import threading

from transformers import TrainerCallback

from lmforge.errors import UserError


class StoppedBySignal(UserError):
    """The run saved a checkpoint and stopped because it was asked to."""


class StopOnSignal(TrainerCallback):
    def __init__(self) -> None:
        self.received: int | None = None
        self._previous = None

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.received is not None:  # asked twice: stop now
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)
        self.received = signum

    def on_step_end(self, args, state, control, **kwargs):
        if self._agreed(args):
            control.should_save = True
            control.should_training_stop = True

    def _agreed(self, args) -> bool:
        """Whether any process was asked to stop. The processes of a launched run get the signal at slightly
        different moments; they must still stop (and save, which is collective) after the same step."""
        asked = self.received is not None
        if args.world_size > 1:
            import torch
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                flag = torch.tensor([int(asked)], device=args.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                if flag.item() and not asked:
                    self.received = signal.SIGTERM  # another process received it
                asked = bool(flag.item())
        return asked

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def check(self, output_dir: str, step: int, max_steps: int) -> None:
        """Raise StoppedBySignal if a signal stopped the run before its last step (after its checkpoint was saved);
        a signal during the last step lets the run finish as usual."""
        if self.received is not None and step < max_steps:
            raise StoppedBySignal(f"Stopped by SIGTERM after step {step}: {output_dir}/checkpoint-{step} is saved. "
                                  "Run the same command again to resume from it.")

"""Training callbacks: `trainer_log.jsonl` (LLaMA-Factory's fields) and the console progress.

On a terminal the progress is a bar. When stderr is not a terminal (a log file, CI, a job
scheduler) it is a line every 5% of the steps and at least once a minute, so a redirected log never
goes silent between loading and the final metrics. LMFORGE_PROGRESS chooses: `bar`, `lines` or
`off` (`1` is `bar`, as before).
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

from transformers import TrainerCallback

from lmforge.train.outputs import LOG_FILE

PROGRESS_MODES = ("bar", "lines", "off")
LINE_EVERY_FRACTION = 0.05  # of the steps
LINE_EVERY_SECONDS = 60.0

_STAGE_METRICS = ("rewards/", "logps/", "kl", "eval_rewards/", "eval_logps/", "eval_kl", "reward", "ppo/",
                  "completions/", "eval_reward", "eval_completions/")  # grpo: completions/mean_length, ...
_FROM_LOG = {"loss": "loss", "eval_loss": "eval_loss", "predict_loss": "predict_loss",
             "reward": "rewards/chosen", "accuracy": "rewards/accuracies", "lr": "learning_rate", "epoch": "epoch"}


def _hms(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))


class LogCallback(TrainerCallback):
    """Append one JSON line per log event to output_dir/trainer_log.jsonl; draw the progress bar."""

    def __init__(self, output_dir: str, resuming: bool, show_progress: bool = True):
        self.path = Path(output_dir) / LOG_FILE
        self.resuming = resuming
        self.mode = progress_mode() if show_progress else "off"
        self.show_progress = self.mode == "bar"
        self.start_time = 0.0
        self.last_line = (0, 0.0)  # (step, time) of the last progress line
        self.start_step = 0
        self.bar = None
        self.last_logs: dict = {}

    # -- lifecycle --------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.resuming and self.path.exists():
            self.path.unlink()
        self.start_time = time.time()
        self.start_step = state.global_step
        if self.show_progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", dynamic_ncols=True,
                            file=sys.stderr)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
        elif self.mode == "lines" and state.is_world_process_zero:
            step, now = state.global_step, time.time()
            logging_steps = args.logging_steps if str(args.logging_strategy).endswith(("steps", "STEPS")) else 0
            if logging_steps >= 1 and step % int(logging_steps) == 0:
                return  # the log line of this step (printed by on_log) has the fresh loss
            every = max(1, round(state.max_steps * LINE_EVERY_FRACTION))
            last_step, last_time = self.last_line
            if step - last_step >= every or now - max(last_time, self.start_time) >= LINE_EVERY_SECONDS \
                    or step == state.max_steps:
                self.last_line = (step, now)
                self._print_line(state)

    def _print_line(self, state, record: dict | None = None) -> None:
        elapsed, remaining = self.timing(state)
        percent = state.global_step / state.max_steps * 100 if state.max_steps else 100.0
        parts = [f"step {state.global_step}/{state.max_steps} ({percent:.0f}%)"]
        record = record if record is not None else self.last_logs
        if "loss" in record:
            parts.append(f"loss {record['loss']:.4f}")
        if "eval_loss" in record:
            parts.append(f"eval_loss {record['eval_loss']:.4f}")
        if "reward" in record and "rewards/chosen" not in record:
            # grpo and ppo: the reward is what the run optimises (their loss says little); dpo's is rewards/chosen.
            parts.append(f"reward {record['reward']:.4f}")
        if "lr" in record:
            parts.append(f"lr {record['lr']:.2e}")
        parts.append(f"{_hms(elapsed)} < {_hms(remaining)}")
        print("  ".join(parts), file=sys.stderr, flush=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # -- logging ----------------------------------------------------------------------------------
    def timing(self, state) -> tuple[float, float]:
        elapsed = time.time() - self.start_time
        done = max(state.global_step - self.start_step, 0)
        remaining = elapsed / done * (state.max_steps - state.global_step) if done else 0.0
        return elapsed, remaining

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        elapsed, remaining = self.timing(state)
        record = {"current_steps": state.global_step, "total_steps": state.max_steps}
        for key, source in _FROM_LOG.items():
            if logs.get(source) is not None:
                record[key] = logs[source]
        # The preference stages' metrics also under trl's own names (rewards/margins, logps/chosen, kl, ...).
        record.update({k: v for k, v in logs.items() if k.startswith(_STAGE_METRICS) and v is not None})
        record["percentage"] = round(state.global_step / state.max_steps * 100, 2) if state.max_steps else 100.0
        record["elapsed_time"] = _hms(elapsed)
        record["remaining_time"] = _hms(remaining)
        tokens = getattr(state, "num_input_tokens_seen", 0)
        if tokens:
            record["throughput"] = round(tokens / elapsed, 2) if elapsed else 0.0
            record["total_tokens"] = tokens
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.last_logs = record
        if self.bar is not None:
            postfix = {k: record[k] for k in ("loss", "eval_loss", "lr") if k in record}
            if "lr" in postfix:
                postfix["lr"] = f"{postfix['lr']:.2e}"
            self.bar.set_postfix(postfix, refresh=True)
        elif self.mode == "lines" and ("loss" in record or "eval_loss" in record):
            self.last_line = (state.global_step, time.time())
            self._print_line(state, record)


def progress_mode() -> str:
    """`bar` on a terminal, `lines` otherwise; LMFORGE_PROGRESS (bar, lines, off; 1 = bar) overrides."""
    from lmforge.errors import UserError

    chosen = os.environ.get("LMFORGE_PROGRESS", "").strip().lower()
    if chosen == "1":
        return "bar"
    if chosen:
        if chosen not in PROGRESS_MODES:
            raise UserError(f"LMFORGE_PROGRESS='{chosen}' is not one of: {', '.join(PROGRESS_MODES)}.")
        return chosen
    return "bar" if sys.stderr.isatty() else "lines"

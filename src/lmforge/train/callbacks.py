"""Training callbacks: `trainer_log.jsonl` (LLaMA-Factory's fields) and the console progress bar."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

from transformers import TrainerCallback

from lmforge.train.outputs import LOG_FILE

_FROM_LOG = {"loss": "loss", "eval_loss": "eval_loss", "predict_loss": "predict_loss",
             "reward": "rewards/chosen", "accuracy": "rewards/accuracies", "lr": "learning_rate", "epoch": "epoch"}


def _hms(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))


class LogCallback(TrainerCallback):
    """Append one JSON line per log event to output_dir/trainer_log.jsonl; draw the progress bar."""

    def __init__(self, output_dir: str, resuming: bool, show_progress: bool = True):
        self.path = Path(output_dir) / LOG_FILE
        self.resuming = resuming
        self.show_progress = show_progress and sys.stderr.isatty() or os.environ.get("LMFORGE_PROGRESS") == "1"
        self.start_time = 0.0
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
        elif "loss" in record or "eval_loss" in record:
            parts = [f"step {record['current_steps']}/{record['total_steps']}"]
            if "loss" in record:
                parts.append(f"loss {record['loss']:.4f}")
            if "eval_loss" in record:
                parts.append(f"eval_loss {record['eval_loss']:.4f}")
            if "lr" in record:
                parts.append(f"lr {record['lr']:.2e}")
            parts.append(f"{record['elapsed_time']} < {record['remaining_time']}")
            print("  ".join(parts), file=sys.stderr, flush=True)

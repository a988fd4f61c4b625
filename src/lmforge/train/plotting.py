"""Loss curves (`plot_loss: true`): training_loss.png, training_eval_loss.png and each stage's key metric
(training_rewards_accuracies.png for dpo, ...), drawn with matplotlib."""

from __future__ import annotations

import math
from pathlib import Path


# What each stage plots besides its losses (LLaMA-Factory plots rewards/accuracies for dpo and kto).
STAGE_KEYS = {"dpo": ("rewards/accuracies",), "kto": ("rewards/chosen", "kl"), "rm": ("eval_accuracy",),
              "ppo": ("reward", "kl"), "grpo": ("reward", "kl")}


def plot_keys(stage: str) -> tuple[str, ...]:
    """The logged keys drawn for `stage`."""
    return ("loss", "eval_loss", *STAGE_KEYS.get(stage, ()))


def smooth(values: list[float]) -> list[float]:
    """TensorBoard-style exponential moving average, with a weight that grows with the curve length."""
    if not values:
        return []
    weight = 1.8 * (1 / (1 + math.exp(-0.05 * len(values))) - 0.5)
    out, last = [], values[0]
    for value in values:
        last = last * weight + (1 - weight) * value
        out.append(last)
    return out


def plot_losses(log_history: list[dict], output_dir: str | Path, keys=("loss", "eval_loss")) -> list[Path]:
    """Write one PNG per key that has values in the log history; return the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key in keys:
        points = [(entry["step"], entry[key]) for entry in log_history if key in entry and "step" in entry]
        if not points:
            continue
        steps, values = zip(*points)
        fig = plt.figure()
        plt.plot(steps, values, color="#1f77b4", alpha=0.4, label="original")
        plt.plot(steps, smooth(list(values)), color="#1f77b4", label="smoothed")
        plt.title(f"{key} of {Path(output_dir).name}")
        plt.xlabel("step")
        plt.ylabel(key)
        plt.legend()
        path = Path(output_dir) / f"training_{key.replace('/', '_')}.png"
        fig.savefig(path, format="png", dpi=100)
        plt.close(fig)
        written.append(path)
    return written

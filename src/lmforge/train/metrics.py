"""Token accuracy for `do_eval` with `compute_accuracy` (no generation).

The model's argmax at each position is compared with the next supervised token; positions whose
label is ignored (prompt, padding) do not count. Each sample's accuracy is computed first and the
samples are averaged, as LLaMA-Factory reports `eval_accuracy`.
"""

from __future__ import annotations

from lmforge.data.processors import IGNORE_INDEX


def argmax_logits(logits, labels):
    """Keep only the argmax ids of the logits: the full logits of an eval set would not fit in memory."""
    if isinstance(logits, (list, tuple)):
        logits = logits[0]
    return logits.argmax(dim=-1)


def token_accuracy(eval_prediction) -> dict[str, float]:
    """`compute_metrics` for the Trainer: the mean per-sample accuracy on supervised tokens."""
    import numpy as np

    predictions, labels = eval_prediction.predictions, eval_prediction.label_ids
    scores = []
    for pred, label in zip(predictions, labels):
        # The prediction at position t is for the token at t + 1.
        pred, label = pred[:-1], label[1:]
        mask = label != IGNORE_INDEX
        if mask.any():
            scores.append(float(np.mean(pred[mask] == label[mask])))
    return {"accuracy": float(np.mean(scores)) if scores else 0.0}

"""The preference losses of the dpo and kto stages, as plain functions of sequence log-probabilities.

`pref_loss` (LLaMA-Factory's names): sigmoid (DPO), hinge, ipo, kto_pair, orpo, simpo. sigmoid,
hinge and kto_pair compare summed log-probabilities with the reference model's; ipo, orpo and simpo
use the per-token average (orpo and simpo need no reference at all).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmforge.config.finetune import PREF_LOSSES  # noqa: F401 (the names, defined with the setting)
from lmforge.data.processors.base import IGNORE_INDEX

NO_REFERENCE = ("orpo", "simpo")
AVERAGED = ("ipo", "orpo", "simpo")


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the label tokens' log-probabilities, number of label tokens) per row."""
    labels = labels[:, 1:].clone()
    logits = logits[:, :-1, :]
    mask = labels != IGNORE_INDEX
    labels[~mask] = 0
    # log p(label) = logit(label) - logsumexp(logits), one row at a time: a log_softmax of the whole batch
    # would add a second (rows x tokens x vocabulary) float32 tensor, the largest one of a preference step.
    picked = torch.gather(logits, 2, labels.unsqueeze(2)).squeeze(2).float()
    normalizer = torch.stack([torch.logsumexp(row.float(), dim=-1) for row in logits])
    per_token = picked - normalizer
    return (per_token * mask).sum(-1), mask.sum(-1)


def dpo_losses(loss_type: str, chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor | None,
               ref_rejected: torch.Tensor | None, beta: float, label_smoothing: float = 0.0,
               simpo_gamma: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair losses, chosen rewards, rejected rewards) from policy (and reference) log-probabilities."""
    if loss_type == "orpo":
        # Odds ratio of the average log-probabilities; the SFT term is added by the trainer (pref_ftx-like).
        log_odds = (chosen - rejected) - (torch.log1p(-torch.exp(chosen)) - torch.log1p(-torch.exp(rejected)))
        losses = -chosen - beta * F.logsigmoid(log_odds)
        return losses, beta * chosen.detach(), beta * rejected.detach()
    if loss_type == "simpo":
        logits = (chosen - rejected) - simpo_gamma / beta
        return -F.logsigmoid(beta * logits), beta * chosen.detach(), beta * rejected.detach()
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    logits = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = (-F.logsigmoid(beta * logits) * (1 - label_smoothing)
                  - F.logsigmoid(-beta * logits) * label_smoothing)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    elif loss_type == "kto_pair":
        # KTO on pairs: each answer against the other's (batch-mean, clamped) KL estimate.
        chosen_kl = chosen_ratio.mean().clamp(min=0).detach()
        rejected_kl = rejected_ratio.mean().clamp(min=0).detach()
        losses = (1 - torch.sigmoid(beta * (chosen_ratio - rejected_kl))) + \
            (1 - torch.sigmoid(beta * (chosen_kl - rejected_ratio)))
    else:
        raise ValueError(f"unknown pref_loss '{loss_type}'")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def kto_losses(logps: torch.Tensor, ref_logps: torch.Tensor, kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor,
               desirable: torch.Tensor, beta: float, chosen_weight: float = 1.0,
               rejected_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-row losses, rewards, the KL estimate) of KTO: desirable answers pushed above the KL, others below."""
    kl = (kl_logps - ref_kl_logps).mean().clamp(min=0).detach()
    ratio = logps - ref_logps
    losses = torch.where(desirable, chosen_weight * (1 - torch.sigmoid(beta * (ratio - kl))),
                         rejected_weight * (1 - torch.sigmoid(beta * (kl - ratio))))
    return losses, beta * ratio.detach(), kl

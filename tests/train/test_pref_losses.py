"""The preference losses against values worked out by hand, and sequence log-probabilities against log_softmax."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.train.pref_losses import dpo_losses, kto_losses, sequence_logps


def test_sequence_logps_match_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11)
    labels = torch.tensor([[-100, 2, 3, -100, -100, -100], [-100, -100, 1, 1, 1, 4], [-100, 5, 6, 7, 8, 9]])
    logps, lengths = sequence_logps(logits, labels)
    expected = []
    for row in range(3):
        total = 0.0
        for t in range(1, 6):
            if labels[row, t] != -100:
                total += logits[row, t - 1].log_softmax(-1)[labels[row, t]].item()
        expected.append(total)
    assert torch.allclose(logps, torch.tensor(expected), atol=1e-5)
    assert lengths.tolist() == [2, 4, 5]


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("loss,expected", [
    # policy margin (-1) - (-3) = 2, reference margin (-2) - (-2) = 0, so the logits are 2 and beta 0.5.
    ("sigmoid", -math.log(_sigmoid(1.0))),
    ("hinge", max(0.0, 1 - 0.5 * 2)),
    ("ipo", (2 - 1 / (2 * 0.5)) ** 2),
])
def test_reference_losses(loss, expected):
    losses, chosen, rejected = dpo_losses(loss, torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]),
                                          torch.tensor([-2.0]), beta=0.5)
    assert losses.item() == pytest.approx(expected, abs=1e-6)
    assert (chosen.item(), rejected.item()) == (pytest.approx(0.5), pytest.approx(-0.5))


def test_reference_free_losses():
    chosen, rejected = torch.tensor([-0.5]), torch.tensor([-1.5])
    orpo, _, _ = dpo_losses("orpo", chosen, rejected, None, None, beta=0.1)
    log_odds = (-0.5 + 1.5) - (math.log1p(-math.exp(-0.5)) - math.log1p(-math.exp(-1.5)))
    assert orpo.item() == pytest.approx(0.5 - 0.1 * math.log(_sigmoid(log_odds)), abs=1e-6)
    simpo, _, _ = dpo_losses("simpo", chosen, rejected, None, None, beta=2.0, simpo_gamma=0.5)
    assert simpo.item() == pytest.approx(-math.log(_sigmoid(2.0 * (1.0 - 0.25))), abs=1e-6)


def test_kto_pushes_desirable_answers_above_the_kl_and_others_below():
    logps, ref = torch.tensor([-1.0, -4.0]), torch.tensor([-2.0, -2.0])
    kl_logps, ref_kl = torch.tensor([-3.0, -3.0]), torch.tensor([-3.5, -3.5])  # KL estimate 0.5
    losses, rewards, kl = kto_losses(logps, ref, kl_logps, ref_kl, torch.tensor([True, False]), beta=1.0,
                                     chosen_weight=1.0, rejected_weight=2.0)
    assert kl.item() == pytest.approx(0.5)
    assert losses.tolist() == pytest.approx([1 - _sigmoid(1.0 - 0.5), 2 * (1 - _sigmoid(0.5 + 2.0))])
    assert rewards.tolist() == pytest.approx([1.0, -2.0])

"""`infer_seqlen`: LLaMA-Factory's table, exactly, plus the edges our processors rely on."""

from __future__ import annotations

import pytest

from lmforge.data.processors import infer_seqlen


@pytest.mark.parametrize(
    ("lengths", "expected"),
    [
        ((3000, 2000, 1000), (600, 400)),
        ((2000, 3000, 1000), (400, 600)),
        ((1000, 100, 1000), (900, 100)),
        ((100, 1000, 1000), (100, 900)),
        ((100, 500, 1000), (100, 500)),
        ((500, 100, 1000), (500, 100)),
        ((10, 10, 1000), (10, 10)),
    ],
)
def test_reference_table(lengths, expected):
    assert infer_seqlen(*lengths) == expected


@pytest.mark.parametrize(
    ("lengths", "expected"),
    [
        ((0, 0, 10), (0, 0)),
        ((5, 5, 10), (5, 5)),  # exactly fits: 2T == C, 2S == C -> proportional split, nothing cut
        ((7, 3, 10), (7, 3)),
        ((1, 1, 1), (1, 0)),  # int(0.5) == 0: a single slot goes to the source
        ((3, 0, 2), (2, 0)),
        ((0, 9, 4), (0, 4)),
        ((10, 10, 0), (0, 0)),  # no budget
        ((10, 10, -3), (0, 0)),
        ((6, 7, 10), (5, 5)),  # int() truncates 10 * 7 / 13 = 5.38
    ],
)
def test_edges(lengths, expected):
    assert infer_seqlen(*lengths) == expected


def test_never_exceeds_budget_and_never_grows():
    for source in (0, 1, 2, 17, 400, 999, 5000):
        for target in (0, 1, 3, 250, 999, 4000):
            for cutoff in (1, 2, 7, 1000):
                new_source, new_target = infer_seqlen(source, target, cutoff)
                assert 0 <= new_source <= source and 0 <= new_target <= target
                assert new_source + new_target <= cutoff
                if source + target <= cutoff:
                    assert (new_source, new_target) == (source, target)

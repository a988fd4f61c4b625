"""How a (prompt, answer) pair shares a token budget: LLaMA-Factory's `infer_seqlen`, exactly."""

from __future__ import annotations


def infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """Return the (source, target) lengths that fit `cutoff_len`; callers keep the head of each.

    A short target (under half the budget) is kept whole and only the source is cut; a short source
    is kept whole and the target gets the rest; otherwise both shrink in proportion to their lengths.
    """
    if cutoff_len <= 0:
        return 0, 0  # no budget left (LLaMA-Factory would return negative lengths here)
    if target_len * 2 < cutoff_len:
        max_target_len = cutoff_len
    elif source_len * 2 < cutoff_len:
        max_target_len = cutoff_len - source_len
    else:
        # int() of the float ratio, not integer division, to round exactly as LLaMA-Factory does.
        max_target_len = int(cutoff_len * (target_len / (source_len + target_len)))

    new_target_len = min(max_target_len, target_len)
    new_source_len = min(max(cutoff_len - new_target_len, 0), source_len)
    return new_source_len, new_target_len

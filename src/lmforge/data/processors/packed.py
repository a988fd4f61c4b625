"""Packed supervised fine-tuning: several encoded conversations share one cutoff_len block.

Rows are encoded exactly as in `supervised.py`, then a greedy knapsack (largest sample that still
fits, found by binary search over the sorted lengths) fills the blocks of each `map` batch, as in
LLaMA-Factory. With `neat_packing` the attention mask holds the sample index (1..k, 0 for padding)
so the collator can build a block-diagonal mask and no token attends across samples.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from lmforge.data.processors.base import IGNORE_INDEX, TOO_LONG, row_meta
from lmforge.data.processors.supervised import SupervisedProcessor
from lmforge.errors import UserError


def greedy_knapsack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Split `lengths` into bins of total <= capacity, each filled largest-fitting-first.

    Every length must be <= capacity. Returns the lengths of each bin, in the order they were added.
    """
    remaining_lengths = sorted(lengths)
    bins: list[list[int]] = []
    while remaining_lengths:
        current: list[int] = []
        room = capacity
        while remaining_lengths:
            index = bisect.bisect(remaining_lengths, room) - 1
            if index < 0:
                break
            room -= remaining_lengths[index]
            current.append(remaining_lengths.pop(index))
        if not current:
            raise ValueError(f"A length exceeds the knapsack capacity {capacity}.")
        bins.append(current)
    return bins


class PackedSupervisedProcessor(SupervisedProcessor):
    """Blocks of exactly cutoff_len tokens: `input_ids`, `attention_mask`, `position_ids`, `labels`.

    Block rows have `_dataset=""`, `_row=-1`, `_drop=""`, and `_warn` holds the flags of the samples
    packed into them. Rejected input rows come out as drop rows (`missing_response`, `invalid_turns`,
    `no_supervised_tokens`, `too_long`) with their `_dataset`/`_row` kept.
    """

    model_columns = ("input_ids", "attention_mask", "position_ids", "labels")
    accepts_media = False

    def __init__(self, data_args, template, tokenizer) -> None:
        super().__init__(data_args, template, tokenizer)
        self.neat = bool(data_args.neat_packing)
        # Sample indices can exceed int8 (many short samples in a long block).
        self.attention_dtype = "int32" if self.neat else "int8"
        if data_args.cutoff_len < 2:
            raise UserError(f"cutoff_len={data_args.cutoff_len} is too small for packing; use at least 2.")
        # LLaMA-Factory lowers cutoff_len by one when packing and pads every block to the original
        # cutoff_len. We keep both effects without touching the config: samples fill at most
        # cutoff_len - 1 tokens, so every block ends in at least one padding slot and a neat index mask
        # always holds a 0 (transformers drops a flash-attention 2D mask without zeros, which would let
        # packed samples see each other), and every block is exactly cutoff_len long, a multiple of 8
        # in practice, so the collator's pad_to_multiple_of adds nothing.
        self.block_len = data_args.cutoff_len
        self.capacity = data_args.cutoff_len - 1
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_token_id is None:
            raise UserError("Packing needs a pad or eos token, but the tokenizer has neither.")

    def process(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        """Encode the batch, drop rows that cannot fit, and pack the rest into blocks."""
        out = self._empty_output()
        samples: list[tuple[list[int], list[int], list[dict[str, Any]]]] = []
        by_length: dict[int, list[int]] = defaultdict(list)
        for index in range(len(batch["_prompt"])):
            dataset, row, drop = row_meta(batch, index)
            result = drop or self.encode_row(batch, index, cutoff_len=self.capacity)
            if not isinstance(result, str) and len(result[0]) > self.capacity:
                result = TOO_LONG  # truncation keeps rows within budget; this guards odd templates
            if isinstance(result, str):
                self._add_drop(out, dataset, row, result)
                continue
            by_length[len(result[0])].append(len(samples))
            samples.append((*result, self.flags(batch, index)))

        for lengths in greedy_knapsack([len(ids) for ids, _, _ in samples], self.capacity):
            input_ids: list[int] = []
            attention_mask: list[int] = []
            position_ids: list[int] = []
            labels: list[int] = []
            warnings: list[dict[str, Any]] = []
            for number, length in enumerate(lengths, start=1):
                ids, sample_labels, flags = samples[by_length[length].pop()]
                warnings += flags
                input_ids += ids
                labels += sample_labels
                position_ids += range(length)
                attention_mask += [number if self.neat else 1] * length

            pad = self.block_len - len(input_ids)
            input_ids += [self.pad_token_id] * pad
            labels += [IGNORE_INDEX] * pad
            position_ids += [0] * pad
            # Plain packing attends over the padding too, like LLaMA-Factory (cheaper for flash-attn).
            attention_mask += [0 if self.neat else 1] * pad
            self._add_row(
                out,
                "",
                -1,
                warnings,
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                labels=labels,
            )
        return out

"""Preference pairs (reward modelling, DPO): the prompt with the chosen and with the rejected answer.

Both answers share one prompt and one budget: LLaMA-Factory's `infer_seqlen` with the longer answer
as the target, so the chosen and rejected sequences are cut alike and stay comparable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lmforge.data.processors.base import IGNORE_INDEX, INVALID_TURNS, Processor, row_meta
from lmforge.data.processors.truncation import infer_seqlen


class PairwiseProcessor(Processor):
    """`chosen_input_ids/attention_mask/labels` and `rejected_...` per row; labels only on the answers."""

    model_columns = ("chosen_input_ids", "chosen_attention_mask", "chosen_labels",
                     "rejected_input_ids", "rejected_attention_mask", "rejected_labels")

    def __init__(self, data_args, template, tokenizer) -> None:
        super().__init__(data_args, template, tokenizer)
        self.efficient_eos = bool(getattr(template, "efficient_eos", False))

    def encode(self, prompt, chosen, rejected, system, tools) -> dict[str, list[int]]:
        """The two sequences of one pair, cut to `cutoff_len` together."""
        encode = self.template.encode_oneturn
        prompt_ids, chosen_ids = encode(self.tokenizer, [*prompt, chosen], system or None, tools or None)
        _, rejected_ids = encode(self.tokenizer, [*prompt, rejected], system or None, tools or None)
        prompt_ids, chosen_ids, rejected_ids = list(prompt_ids), list(chosen_ids), list(rejected_ids)
        if self.efficient_eos:
            chosen_ids.append(self.tokenizer.eos_token_id)
            rejected_ids.append(self.tokenizer.eos_token_id)
        source_len, target_len = infer_seqlen(len(prompt_ids), max(len(chosen_ids), len(rejected_ids)),
                                              self.data_args.cutoff_len)
        prompt_ids = prompt_ids[:source_len]
        out: dict[str, list[int]] = {}
        for name, answer in (("chosen", chosen_ids[:target_len]), ("rejected", rejected_ids[:target_len])):
            ids = prompt_ids + answer
            out[f"{name}_input_ids"] = ids
            out[f"{name}_attention_mask"] = [1] * len(ids)
            out[f"{name}_labels"] = [IGNORE_INDEX] * len(prompt_ids) + answer
        return out

    def process(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        out = self._empty_output()
        for index in range(len(batch["_prompt"])):
            dataset, row, drop = row_meta(batch, index)
            prompt, response = list(batch["_prompt"][index] or []), list(batch["_response"][index] or [])
            if not drop and (len(prompt) % 2 != 1 or len(response) != 2):
                drop = INVALID_TURNS  # not one prompt with a chosen and a rejected answer
            kept = self._kept_row(out, batch, index, dataset, row, drop)
            if kept is None:
                continue
            system, tools = kept
            self._add_row(out, dataset, row, **self.encode(prompt, response[0], response[1], system, tools))
        return out

"""Prompts for prediction and generation: the prompt up to the assistant header, the answer as labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lmforge.data.processors.base import Processor, empty_turns, row_meta, turn_problem
from lmforge.data.processors.truncation import infer_seqlen


class UnsupervisedProcessor(Processor):
    """One row per input row: `input_ids` (the generation prompt), `attention_mask`, `labels` (the answer).

    `labels` is not aligned with `input_ids`: it is the reference answer (+ eos for efficient_eos
    templates) that batch prediction scores against. So a row it could not score is dropped, with
    the reason the data report gives: no answer (`missing_response`), a blank answer
    (`empty_response`), or a blank last user turn (`empty_prompt`: there is nothing to answer), as
    well as a row that is not one conversation ending in one answer (`invalid_turns`).
    LLaMA-Factory predicts such rows and averages their meaningless scores in.
    """

    def __init__(self, data_args, template, tokenizer) -> None:
        super().__init__(data_args, template, tokenizer)
        self.efficient_eos = bool(getattr(template, "efficient_eos", False))

    def encode(
        self,
        prompt: Sequence[Mapping[str, str]],
        response: Sequence[Mapping[str, str]],
        system: str | None,
        tools: str | None,
    ) -> tuple[list[int], list[int]]:
        """Return (prompt_ids, answer_ids) of one row, both cut with `infer_seqlen`."""
        messages = [dict(message) for message in (*prompt, *response)]
        prompt_ids, answer_ids = self.template.encode_oneturn(self.tokenizer, messages, system or None, tools or None)
        prompt_ids, answer_ids = list(prompt_ids), list(answer_ids)
        if self.efficient_eos:
            answer_ids.append(self.tokenizer.eos_token_id)
        source_len, target_len = infer_seqlen(len(prompt_ids), len(answer_ids), self.data_args.cutoff_len)
        return prompt_ids[:source_len], answer_ids[:target_len]

    def process(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        """Encode every row of the batch; see the class docstring for the columns."""
        out = self._empty_output()
        for index in range(len(batch["_prompt"])):
            dataset, row, drop = row_meta(batch, index)
            prompt, response = batch["_prompt"][index] or [], batch["_response"][index] or []
            if not drop:
                drop = turn_problem(prompt, response) or next(iter(empty_turns(prompt, response)), "")
            kept = self._kept_row(out, batch, index, dataset, row, drop)
            if kept is None:
                continue
            system, tools = kept
            input_ids, labels = self.encode(prompt, response, system, tools)
            self._add_row(out, dataset, row, input_ids=input_ids, attention_mask=[1] * len(input_ids), labels=labels)
        return out

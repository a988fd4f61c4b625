"""Prompts to generate from (stage ppo): the conversation up to the assistant header, nothing else.

PPO samples its own answers, so a row needs a prompt and nothing more: a row without an answer is
kept (unlike prediction, which needs the reference answer to score against), and an answer that is
there is not used except to cut the prompt the way LLaMA-Factory cuts it (`infer_seqlen`, prompt
and answer sharing `cutoff_len`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lmforge.data.processors.base import EMPTY_PROMPT, INVALID_TURNS, Processor, row_meta
from lmforge.data.processors.truncation import infer_seqlen


class PromptProcessor(Processor):
    """`input_ids` (the generation prompt) and `attention_mask` per row; rows without an answer are kept."""

    model_columns = ("input_ids", "attention_mask")

    def encode(self, prompt: Sequence[Mapping[str, str]], response: Sequence[Mapping[str, str]],
               system: str | None, tools: str | None) -> list[int]:
        """The prompt ids of one row: the template's render of `prompt` up to the assistant header."""
        answer = dict(response[0]) if response else {"role": "assistant", "content": ""}
        messages = [dict(message) for message in (*prompt, answer)]
        prompt_ids, answer_ids = self.template.encode_oneturn(self.tokenizer, messages, system or None,
                                                              tools or None)
        source_len, _ = infer_seqlen(len(prompt_ids), len(answer_ids) if response else 0, self.data_args.cutoff_len)
        return list(prompt_ids)[:source_len]

    def process(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        out = self._empty_output()
        for index in range(len(batch["_prompt"])):
            dataset, row, drop = row_meta(batch, index)
            prompt, response = batch["_prompt"][index] or [], batch["_response"][index] or []
            # One conversation that ends with a user turn; an answer, if any, is a single one.
            if not drop and (len(prompt) % 2 != 1 or len(response) > 1):
                drop = INVALID_TURNS
            kept = self._kept_row(out, batch, index, dataset, row, drop)
            if kept is None:
                continue
            system, tools = kept
            input_ids = self.encode(prompt, response, system, tools)
            warnings = []
            if prompt[-1]["role"] == "user" and not (prompt[-1]["content"] or "").strip():
                warnings.append({"dataset": dataset, "row": row, "reason": EMPTY_PROMPT})
            self._add_row(out, dataset, row, warnings, input_ids=input_ids, attention_mask=[1] * len(input_ids))
        return out

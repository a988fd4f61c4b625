"""Prompts of stage grpo: the prompt processor's ids plus the prompt text and the reference answer.

GRPO samples its own completions from `input_ids` (the template's render up to the assistant
header), so a row without an answer is kept. The reference answer is not part of the sequence (the
completion's budget is `max_completion_length`), so the prompt alone gets `cutoff_len` tokens; a longer
one is cut at the end, as stage ppo and prediction cut theirs (`lmforge data check` counts them). The
rendered `prompt` text and the dataset's `answer` (None when the row has none) go to the reward
functions, which may score a completion against the reference; `source` names the row in error messages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lmforge.data.processors.prompt import PromptProcessor


class GRPOPromptProcessor(PromptProcessor):
    """`input_ids`, `attention_mask`, and the text columns `prompt`, `answer` and `source` of every row."""

    def __init__(self, data_args, template, tokenizer) -> None:
        super().__init__(data_args, template, tokenizer)
        from datasets import Value

        self.extra_features = {"prompt": Value("string"), "answer": Value("string"), "source": Value("string")}

    def encode(self, prompt: Sequence[Mapping[str, str]], response: Sequence[Mapping[str, str]],
               system: str | None, tools: str | None) -> list[int]:
        """The prompt ids of one row, at most `cutoff_len` of them."""
        answer = dict(response[0]) if response else {"role": "assistant", "content": ""}
        prompt_ids, _ = self.template.encode_oneturn(self.tokenizer, [*map(dict, prompt), answer], system or None,
                                                     tools or None)
        return list(prompt_ids)[:self.data_args.cutoff_len]

    def process(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        out = super().process(batch)  # one output row per input row, in order (dropped ones included)
        prompts, answers = [], []
        for index, ids in enumerate(out["input_ids"]):
            response = batch["_response"][index] or []
            prompts.append(self.tokenizer.decode(ids, skip_special_tokens=False) if ids else "")
            answers.append(response[0]["content"] if len(response) == 1 else None)
        out["prompt"], out["answer"] = prompts, answers
        out["source"] = [f"dataset '{dataset}' row {row}" for dataset, row in zip(out["_dataset"], out["_row"])]
        return out

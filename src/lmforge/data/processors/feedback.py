"""KTO feedback rows: one answer marked desirable or not, plus a mismatched pair for the KL estimate.

As in LLaMA-Factory, the KL pair of a row is its prompt with the answer of the previous row in the
batch (the first row takes the last row's answer): a prompt/answer pair that does not belong
together, whose log-ratio estimates the KL term of the KTO loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lmforge.data.processors.base import IGNORE_INDEX, INVALID_TURNS, Processor, row_meta
from lmforge.data.processors.truncation import infer_seqlen


def _answer(response: Sequence[Mapping[str, str]]) -> tuple[Mapping[str, str], bool]:
    """The row's answer and whether it is desirable (KTO rows keep it first when desirable, else second)."""
    return (response[0], True) if response[0]["content"] else (response[1], False)


class FeedbackProcessor(Processor):
    """`input_ids/attention_mask/labels`, `kl_input_ids/kl_attention_mask/kl_labels` and `kto_tags`."""

    model_columns = ("input_ids", "attention_mask", "labels", "kl_input_ids", "kl_attention_mask", "kl_labels")

    def __init__(self, data_args, template, tokenizer) -> None:
        super().__init__(data_args, template, tokenizer)
        from datasets import Value

        self.extra_features = {"kto_tags": Value("bool")}
        self.efficient_eos = bool(getattr(template, "efficient_eos", False))

    def _encode(self, prompt, answer, system, tools) -> tuple[list[int], list[int]]:
        prompt_ids, answer_ids = self.template.encode_oneturn(self.tokenizer, [*prompt, answer], system or None,
                                                              tools or None)
        prompt_ids, answer_ids = list(prompt_ids), list(answer_ids)
        if self.efficient_eos:
            answer_ids.append(self.tokenizer.eos_token_id)
        source_len, target_len = infer_seqlen(len(prompt_ids), len(answer_ids), self.data_args.cutoff_len)
        prompt_ids, answer_ids = prompt_ids[:source_len], answer_ids[:target_len]
        return prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids

    def process(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        out = self._empty_output()
        responses = [list(r or []) for r in batch["_response"]]
        for index in range(len(batch["_prompt"])):
            dataset, row, drop = row_meta(batch, index)
            prompt, response = list(batch["_prompt"][index] or []), responses[index]
            if not drop and (len(prompt) % 2 != 1 or len(response) != 2):
                drop = INVALID_TURNS  # not a KTO row: one prompt, one answer with its kto_tag
            kept = self._kept_row(out, batch, index, dataset, row, drop)
            if kept is None:
                continue
            system, tools = kept
            answer, desirable = _answer(response)
            other = responses[index - 1] if len(responses[index - 1]) == 2 else response
            input_ids, labels = self._encode(prompt, answer, system, tools)
            kl_ids, kl_labels = self._encode(prompt, _answer(other)[0], system, tools)
            self._add_row(out, dataset, row, input_ids=input_ids, attention_mask=[1] * len(input_ids),
                          labels=labels, kl_input_ids=kl_ids, kl_attention_mask=[1] * len(kl_ids),
                          kl_labels=kl_labels, kto_tags=desirable)
        return out

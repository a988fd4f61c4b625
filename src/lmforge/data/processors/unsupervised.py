"""Prompts for prediction and generation: the prompt up to the assistant header, the answer as labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lmforge.data.templates.mm_plugin import IMAGES, VIDEOS
from lmforge.data.processors.base import VISION_TOKENS_CUT, Processor, empty_turns, row_meta, turn_problem
from lmforge.data.processors.media import MediaJudge
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

    def __init__(self, data_args, template, tokenizer, mm_processor=None) -> None:
        super().__init__(data_args, template, tokenizer, mm_processor)
        self.efficient_eos = bool(getattr(template, "efficient_eos", False))
        self.media = MediaJudge(template, mm_processor, data_args)
        if mm_processor is not None:
            self.media_columns = (IMAGES, VIDEOS)
        plugin = self.media.plugin
        tokens = (plugin.image_token, plugin.video_token, getattr(plugin, "vision_start", None),
                  getattr(plugin, "vision_end", None)) if plugin.image_token or plugin.video_token else ()
        self.vision_ids = {tokenizer.convert_tokens_to_ids(t) for t in tokens if t is not None}

    def encode(
        self,
        prompt: Sequence[Mapping[str, str]],
        response: Sequence[Mapping[str, str]],
        system: str | None,
        tools: str | None,
        media=None,
    ) -> tuple[list[int], list[int]] | str:
        """Return (prompt_ids, answer_ids) of one row, both cut with `infer_seqlen`, or a drop reason.

        `media` (the row's `MediaTokens`) expands its placeholders; a prompt whose cut would leave an
        image without all its tokens is dropped (`vision_tokens_cut`).
        """
        messages = [dict(message) for message in (*prompt, *response)]
        extra = {"media": media} if media is not None else {}
        prompt_ids, answer_ids = self.template.encode_oneturn(self.tokenizer, messages, system or None, tools or None,
                                                              **extra)
        prompt_ids, answer_ids = list(prompt_ids), list(answer_ids)
        if self.efficient_eos:
            answer_ids.append(self.tokenizer.eos_token_id)
        source_len, target_len = infer_seqlen(len(prompt_ids), len(answer_ids), self.data_args.cutoff_len)
        if media is not None and self._vision_count(prompt_ids[source_len:]):
            return VISION_TOKENS_CUT
        return prompt_ids[:source_len], answer_ids[:target_len]

    def _vision_count(self, ids: Sequence[int]) -> int:
        return sum(1 for token in ids if token in self.vision_ids)

    def process(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        """Encode every row of the batch; see the class docstring for the columns."""
        out = self._empty_output()
        for index in range(len(batch["_prompt"])):
            dataset, row, drop = row_meta(batch, index)
            prompt, response = batch["_prompt"][index] or [], batch["_response"][index] or []
            if not drop:
                drop = turn_problem(prompt, response) or next(iter(empty_turns(prompt, response)), "")
            media = None
            if not drop:
                media = self.media.judge([*prompt, *response], self.media.media(batch, index))
                if isinstance(media, str):
                    drop, media = media, None
            if drop:
                self._add_drop(out, dataset, row, drop)
                continue
            system = batch["_system"][index] if "_system" in batch else None
            tools = batch["_tools"][index] if "_tools" in batch else None
            result = self.encode(prompt, response, system, tools, media)
            if isinstance(result, str):
                self._add_drop(out, dataset, row, result)
                continue
            input_ids, labels = result
            paths = {kind: [str(item) for item in items] for kind, items in self.media.media(batch, index).items()
                     if kind in self.media_columns}
            self._add_row(out, dataset, row, input_ids=input_ids, attention_mask=[1] * len(input_ids), labels=labels,
                          **paths)
        return out

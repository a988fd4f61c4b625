"""Supervised fine-tuning: render a conversation with the template and mask what is not trained.

The token ids and their labels are built together, turn by turn, from the template's
(source, target) pairs, with LLaMA-Factory's budget rule (`infer_seqlen` per turn) and masking
flags (`train_on_prompt`, `mask_history`, `efficient_eos`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lmforge.data.processors.base import (
    IGNORE_INDEX,
    NO_SUPERVISED_TOKENS,
    TOO_LONG,
    VISION_TOKENS_CUT,
    Processor,
    check_text_only,
    empty_turns,
    row_meta,
    turn_problem,
)
from lmforge.data.processors.media import IMAGES, VIDEOS, MediaJudge
from lmforge.data.processors.truncation import infer_seqlen
from lmforge.errors import UserError


def check_masking_flags(data_args, template) -> None:
    """Refuse flag combinations that LLaMA-Factory also refuses, with the fix in the message."""
    if data_args.train_on_prompt and data_args.mask_history:
        raise UserError(
            "train_on_prompt and mask_history cannot both be true: mask_history trains on the last answer "
            "only, train_on_prompt on everything. Set one of them to false."
        )
    if data_args.train_on_prompt and getattr(template, "efficient_eos", False):
        raise UserError(
            f"Template '{template.name}' does not support train_on_prompt (its answers end with the next "
            "turn's header, not an end token). Set train_on_prompt: false or use another template."
        )


class SupervisedProcessor(Processor):
    """One output row per input row: `input_ids`, `attention_mask`, `labels`, `_dataset`, `_row`, `_drop`, `_warn`.

    Rejected rows keep their `_dataset`/`_row`, have empty token columns and `_drop` set to
    `missing_response`, `invalid_turns`, `too_long` (only with `drop_overlong`) or `no_supervised_tokens`.
    Kept rows whose last user turn or answer is blank are trained as they are (LLaMA-Factory does the
    same, and an empty answer can be meant) but flagged `empty_prompt` / `empty_response` in `_warn`.

    Rows with images or videos (see `media.py`) get their placeholders expanded into vision tokens, or
    are dropped as `unsupported_media`, `media_count_mismatch`, `missing_media` or `vision_tokens_cut`.
    With a multimodal model (`mm_processor`) the output also keeps `images` and `videos`, the paths the
    collator turns into pixels.
    """

    accepts_media = True  # the packed variant does not: one block would mix several samples' images

    def __init__(self, data_args, template, tokenizer, mm_processor=None) -> None:
        super().__init__(data_args, template, tokenizer, mm_processor)
        self.media = MediaJudge(template, mm_processor, data_args)
        if mm_processor is not None and self.accepts_media:
            self.media_columns = (IMAGES, VIDEOS)
        # Every vision token id: truncation that removes any of them would leave pixels without their tokens.
        tokens = [self.media.plugin.image_token, self.media.plugin.video_token]
        if tokens != [None, None]:
            tokens += [getattr(self.media.plugin, "vision_start", None), getattr(self.media.plugin, "vision_end", None)]
        self.vision_ids = {tokenizer.convert_tokens_to_ids(t) for t in tokens if t is not None}
        check_masking_flags(data_args, template)
        self.efficient_eos = bool(getattr(template, "efficient_eos", False))
        self.eos_token_id = tokenizer.eos_token_id
        if self.efficient_eos and self.eos_token_id is None:
            raise UserError(
                f"Template '{template.name}' ends answers with the tokenizer's eos token, but the tokenizer "
                "has none. Use a tokenizer with an eos_token or another template."
            )

    def encode(
        self,
        prompt: Sequence[Mapping[str, str]],
        response: Sequence[Mapping[str, str]],
        system: str | None,
        tools: str | None,
        cutoff_len: int | None = None,
        media=None,
    ) -> tuple[list[int], list[int]] | str:
        """Return (input_ids, labels) of one valid row, or the reason key when it must be dropped.

        `media`: the row's `MediaTokens` (from `MediaJudge.judge`), None for a text row.
        """
        cutoff_len = self.data_args.cutoff_len if cutoff_len is None else cutoff_len
        messages = [dict(message) for message in (*prompt, *response)]
        mask_history = self.data_args.mask_history
        extra = {}
        if mask_history and not getattr(self.template, "preserve_thinking", False):
            extra["discard_history_cot"] = True  # reasoning templates: history thoughts are not trained
        if media is not None:
            extra["media"] = media
        pairs = self.template.encode_multiturn(self.tokenizer, messages, system or None, tools or None, **extra)
        reserved = 1 if self.efficient_eos else 0
        if self.data_args.drop_overlong:
            if reserved + sum(len(source) + len(target) for source, target in pairs) > cutoff_len:
                return TOO_LONG

        last_turn = len(pairs) - 1
        # mask_history walks the turns from the last one, so that the trained turn gets the budget.
        order = range(last_turn, -1, -1) if mask_history else range(len(pairs))
        total_length = reserved
        pieces: list[tuple[list[int], list[int]]] = []
        for turn in order:
            if total_length >= cutoff_len:
                break  # no budget left: the remaining (earlier, with mask_history) turns are dropped whole
            source_ids, target_ids = pairs[turn]
            source_len, target_len = infer_seqlen(len(source_ids), len(target_ids), cutoff_len - total_length)
            source_ids, target_ids = list(source_ids[:source_len]), list(target_ids[:target_len])
            total_length += source_len + target_len

            if self.data_args.train_on_prompt:
                source_labels = list(source_ids)
            elif self.efficient_eos and turn > 0 and not mask_history and source_len > 0:
                # The previous answer has no end token of its own: teach eos where the next turn starts.
                # With mask_history that answer is not trained, so its end is not trained either.
                source_labels = [self.eos_token_id] + [IGNORE_INDEX] * (source_len - 1)
            else:
                source_labels = [IGNORE_INDEX] * source_len

            if mask_history and turn != last_turn:
                target_labels = [IGNORE_INDEX] * target_len
            else:
                target_labels = list(target_ids)
            pieces.append((source_ids + target_ids, source_labels + target_labels))

        if mask_history:
            pieces.reverse()
        input_ids = [token for ids, _ in pieces for token in ids]
        labels = [token for _, piece_labels in pieces for token in piece_labels]
        if self.efficient_eos:
            input_ids.append(self.eos_token_id)
            labels.append(self.eos_token_id)
        if media is not None and self.vision_ids:
            # Vision tokens stand for pixels: never a target, even with train_on_prompt.
            labels = [IGNORE_INDEX if token in self.vision_ids else label for token, label in zip(input_ids, labels)]
        if media is not None and self._vision_count(input_ids) != sum(
                self._vision_count(source) + self._vision_count(target) for source, target in pairs):
            # An image's tokens must all be there: the vision tower emits exactly that many embeddings.
            return VISION_TOKENS_CUT
        if all(label == IGNORE_INDEX for label in labels):
            return NO_SUPERVISED_TOKENS
        return input_ids, labels

    def _vision_count(self, ids: Sequence[int]) -> int:
        return sum(1 for token in ids if token in self.vision_ids)

    def encode_row(self, batch: Mapping[str, Sequence[Any]], index: int, cutoff_len: int | None = None):
        """Encode input row `index` of a batch: (input_ids, labels) or a reason key."""
        prompt, response = batch["_prompt"][index] or [], batch["_response"][index] or []
        problem = turn_problem(prompt, response)
        if problem:
            return problem
        if not self.accepts_media:
            check_text_only(batch, index)
            media = None
        else:
            media = self.media.judge([*prompt, *response], self.media.media(batch, index))
            if isinstance(media, str):
                return media
        system = batch["_system"][index] if "_system" in batch else None
        tools = batch["_tools"][index] if "_tools" in batch else None
        return self.encode(prompt, response, system, tools, cutoff_len, media=media)

    def process(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        """Encode every row of the batch; see the class docstring for the columns."""
        out = self._empty_output()
        for index in range(len(batch["_prompt"])):
            dataset, row, drop = row_meta(batch, index)
            result = drop or self.encode_row(batch, index)
            if isinstance(result, str):
                self._add_drop(out, dataset, row, result)
                continue
            input_ids, labels = result
            paths = {kind: [str(item) for item in items] for kind, items in self.media.media(batch, index).items()
                     if kind in self.media_columns}
            self._add_row(out, dataset, row, self.flags(batch, index), input_ids=input_ids,
                          attention_mask=[1] * len(input_ids), labels=labels, **paths)
        return out

    def flags(self, batch: Mapping[str, Sequence[Any]], index: int) -> list[dict[str, Any]]:
        """The `_warn` flags of kept input row `index`: {dataset, row, reason} for each blank turn."""
        dataset, row, _ = row_meta(batch, index)
        found = empty_turns(batch["_prompt"][index] or [], batch["_response"][index] or [])
        return [{"dataset": dataset, "row": row, "reason": reason} for reason in found]

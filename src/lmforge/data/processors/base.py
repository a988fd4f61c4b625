"""What every processor shares: the label constant, drop reasons, output columns and their types.

A processor is called by `dataset.map(processor, batched=True)` on aligned rows (`_prompt`,
`_response`, `_system`, `_tools`, media, `_dataset`, `_row`, `_drop`). It returns a pyarrow table
with the model columns, the meta columns and `_warn` (the flags of kept rows that look wrong),
whose schema is fixed by `processor.features`, so a batch of only dropped rows (empty lists)
cannot decide the column types, and `datasets` never narrows `attention_mask` to int8 behind our
back (neat packing stores sample indices there).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

from lmforge.data.columns import WARN_COLUMN
from lmforge.errors import UserError

IGNORE_INDEX = -100

# Reason keys of dropped rows (`_drop`) and of flagged kept rows (`_warn`), as they appear in the data
# report; `lmforge.data.reasons` explains each.
MISSING_RESPONSE = "missing_response"  # no answer: the converter found none (null, or no response column)
EMPTY_RESPONSE = "empty_response"  # the answer is empty: a warning in training, a drop in prediction
EMPTY_PROMPT = "empty_prompt"  # the last user turn is empty: a warning in training, a drop in prediction
INVALID_TURNS = "invalid_turns"  # prompt of even length, or more than one response (KTO, ranking rows)
TOO_LONG = "too_long"  # longer than cutoff_len (drop_overlong, or too long to pack)
NO_SUPERVISED_TOKENS = "no_supervised_tokens"  # every label is IGNORE_INDEX after truncation
EMPTY_TEXT = "empty_text"  # pt row without any text
PACKING_REMAINDER = "packing_remainder"  # pt: tokens after the last full block of a batch
# Multimodal rows (sft): judged by the supervised processor with the template's plugin.
UNSUPPORTED_MEDIA = "unsupported_media"  # images/videos given to a template (or model) that takes none
MEDIA_COUNT_MISMATCH = "media_count_mismatch"  # placeholder count != number of images (or videos)
MISSING_MEDIA = "missing_media"  # a media file is missing or cannot be decoded
VISION_TOKENS_CUT = "vision_tokens_cut"  # cutoff_len would cut into (or drop) an image's or video's tokens
REASONS = (
    MISSING_RESPONSE, EMPTY_RESPONSE, EMPTY_PROMPT, INVALID_TURNS, TOO_LONG, NO_SUPERVISED_TOKENS, EMPTY_TEXT,
    PACKING_REMAINDER, UNSUPPORTED_MEDIA, MEDIA_COUNT_MISMATCH, MISSING_MEDIA, VISION_TOKENS_CUT,
)  # fmt: skip


def turn_problem(prompt: Sequence[Mapping[str, str]], response: Sequence[Mapping[str, str]]) -> str:
    """Why an aligned row cannot be one conversation ending in one answer ("" when it can)."""
    if not response:
        return MISSING_RESPONSE  # the converters leave the response empty exactly when the row has none
    if len(prompt) % 2 != 1 or len(response) != 1:
        return INVALID_TURNS
    return ""


def empty_turns(prompt: Sequence[Mapping[str, str]], response: Sequence[Mapping[str, str]]) -> list[str]:
    """EMPTY_PROMPT when the last user turn is blank, EMPTY_RESPONSE when the answer is.

    Only the last exchange is judged: it is what prediction generates from and scores against, and
    the answer every row trains on. A blank tool result or an earlier blank turn is not flagged.
    """
    found = []
    if prompt and prompt[-1]["role"] == "user" and not (prompt[-1]["content"] or "").strip():
        found.append(EMPTY_PROMPT)
    if len(response) == 1 and not (response[0]["content"] or "").strip():
        found.append(EMPTY_RESPONSE)
    return found



def int_list(dtype: str = "int32"):
    """The feature type of a token-level column."""
    from datasets import List, Value

    return List(Value(dtype))


class Processor:
    """Base of the stage processors: turns a batch of aligned rows into model inputs.

    Subclasses set `model_columns` and implement `process`; `__call__` is what `dataset.map` uses.
    """

    model_columns: tuple[str, ...] = ("input_ids", "attention_mask", "labels")
    # Lists of media paths kept next to the tokens for the collator, which reads the pixels (multimodal models).
    media_columns: tuple[str, ...] = ()
    attention_dtype = "int8"
    extra_features: Mapping[str, Any] = {}

    def __init__(self, data_args, template, tokenizer, mm_processor=None) -> None:
        self.data_args = data_args
        self.template = template
        self.tokenizer = tokenizer
        self.mm_processor = mm_processor  # the model's image/video processor; None for a text-only model

    @cached_property
    def features(self):
        """The `datasets.Features` of the output; pass it to `map(features=...)` if you like."""
        from datasets import Features, List, Value

        # Token columns, also prefixed ones (chosen_input_ids, kl_labels, ...): masks are small ints.
        features = {name: int_list(self.attention_dtype if name.endswith("attention_mask") else "int32")
                    for name in self.model_columns}
        features.update({name: List(Value("string")) for name in self.media_columns})
        features.update({"_dataset": Value("string"), "_row": Value("int64"), "_drop": Value("string")})
        flag = {"dataset": Value("string"), "row": Value("int64"), "reason": Value("string")}
        features[WARN_COLUMN] = List(flag)
        features.update(self.extra_features)
        return Features(features)

    def process(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        """Return the output columns as Python lists (one drop row per rejected input row)."""
        raise NotImplementedError

    def __call__(self, batch: Mapping[str, Sequence[Any]]):
        import pyarrow as pa

        return pa.Table.from_pydict(self.process(batch), schema=self.features.arrow_schema)

    def describe(self, example: Mapping[str, Any]) -> str:
        """A readable dump of one processed example: ids, decoded text and supervised text."""
        lines = [f"input_ids:\n{list(example['input_ids'])}"]
        lines.append(f"inputs:\n{self.tokenizer.decode(example['input_ids'], skip_special_tokens=False)}")
        if "labels" in example:
            labels = list(example["labels"])
            lines.append(f"label_ids:\n{labels}")
            kept = [token for token in labels if token != IGNORE_INDEX]
            lines.append(f"labels:\n{self.tokenizer.decode(kept, skip_special_tokens=False)}")
        return "\n".join(lines)

    def _empty_output(self) -> dict[str, list[Any]]:
        return {name: [] for name in self.features}

    def _add_drop(self, out: dict[str, list[Any]], dataset: str, row: int, reason: str) -> None:
        for name in out:
            out[name].append([] if name in self.model_columns or name in self.media_columns or name == WARN_COLUMN
                             else 0)
        out["_dataset"][-1], out["_row"][-1], out["_drop"][-1] = dataset, row, reason

    def _kept_row(self, out: dict[str, list[Any]], batch: Mapping[str, Sequence[Any]], index: int, dataset: str,
                  row: int, drop: str) -> tuple[str | None, str | None] | None:
        """None for a dropped row (counted in `out` under `drop`); else the kept row's (system, tools)."""
        if drop:
            self._add_drop(out, dataset, row, drop)
            return None
        check_text_only(batch, index)
        return (batch["_system"][index] if "_system" in batch else None,
                batch["_tools"][index] if "_tools" in batch else None)

    def _add_row(
        self, out: dict[str, list[Any]], dataset: str, row: int, warnings: Sequence[dict[str, Any]] = (),
        **values: list[int],
    ) -> None:
        """Add a kept row; `warnings` are the {dataset, row, reason} flags it carries into the report."""
        for name in out:
            out[name].append(values[name] if name in values else 0)
        out["_dataset"][-1], out["_row"][-1], out["_drop"][-1] = dataset, row, ""
        out[WARN_COLUMN][-1] = list(warnings)


def row_meta(batch: Mapping[str, Sequence[Any]], index: int) -> tuple[str, int, str]:
    """The (`_dataset`, `_row`, `_drop`) of input row `index`, with defaults when a column is absent."""
    dataset = batch["_dataset"][index] if "_dataset" in batch else ""
    row = batch["_row"][index] if "_row" in batch else -1
    drop = batch["_drop"][index] if "_drop" in batch else ""
    return dataset or "", -1 if row is None else int(row), drop or ""


def check_text_only(batch: Mapping[str, Sequence[Any]], index: int) -> None:
    """Refuse media rows in the processors that do not expand image/video placeholders (packing, rm/dpo/kto/ppo/grpo)."""
    for column in ("_images", "_videos", "_audios"):
        if column in batch and batch[column][index]:
            dataset, row, _ = row_meta(batch, index)
            kind = column[1:]
            raise UserError(
                f"Dataset '{dataset}' row {row} has {kind}, but only unpacked sft (training and prediction) takes "
                f"images and videos in lmforge. Remove the `{kind}` column from its dataset_info.json entry to "
                "train on the text only."
            )

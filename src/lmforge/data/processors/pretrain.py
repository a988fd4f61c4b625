"""Pre-training (`pt`): plain text plus eos, either truncated per row or packed into blocks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lmforge.data.columns import DROPPED_TOKENS
from lmforge.data.processors.base import EMPTY_TEXT, PACKING_REMAINDER, Processor, row_meta
from lmforge.errors import UserError


def dropped_tail_tokens(dataset) -> int:
    """Tokens a packed pt dataset lost after the last full block of each `map` batch."""
    if DROPPED_TOKENS not in dataset.column_names:
        return 0
    return int(sum(dataset[DROPPED_TOKENS]))


class PretrainProcessor(Processor):
    """`input_ids`, `attention_mask`, `_dataset`, `_row`, `_drop` (+ `_dropped_tokens` when packing).

    Without packing there is one row per input row, cut to cutoff_len. With packing (the pt default)
    a batch's texts are concatenated and cut into cutoff_len blocks (`_dataset=""`, `_row=-1`); the
    tail that does not fill a block is dropped and reported by one `packing_remainder` row whose
    `_dropped_tokens` holds its token count.
    """

    model_columns = ("input_ids", "attention_mask")

    def __init__(self, data_args, template, tokenizer, packing: bool = True) -> None:
        super().__init__(data_args, template, tokenizer)
        self.packing = packing
        if data_args.cutoff_len < 1:
            raise UserError(f"cutoff_len must be at least 1, got {data_args.cutoff_len}.")
        if packing:
            from datasets import Value

            self.extra_features = {DROPPED_TOKENS: Value("int64")}
        # LLaMA-Factory hard-codes this for the llama3 template, whose tokenizers' eos_token may be
        # <|eot_id|> (the instruct models'): pre-training text must end with the base model's eos.
        template_name = getattr(template, "name", None) or data_args.template
        self.eos_token = "<|end_of_text|>" if template_name == "llama3" else tokenizer.eos_token
        if self.eos_token is None:
            raise UserError("Pre-training appends the tokenizer's eos token, but the tokenizer has none.")
        self.add_bos = bool(getattr(tokenizer, "add_bos_token", False)) and tokenizer.bos_token is not None

    def process(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        """Tokenize the batch's texts; see the class docstring for the rows it returns."""
        out = self._empty_output()
        texts: list[str] = []
        kept: list[tuple[str, int]] = []
        for index in range(len(batch["_prompt"])):
            dataset, row, drop = row_meta(batch, index)
            prompt = batch["_prompt"][index]
            # A blank text would train on the eos token alone.
            if not drop and (not prompt or not (prompt[0]["content"] or "").strip()):
                drop = EMPTY_TEXT
            if drop:
                self._add_drop(out, dataset, row, drop)
                continue
            texts.append(prompt[0]["content"] + self.eos_token)
            kept.append((dataset, row))
        if not texts:
            return out

        if not self.packing:
            if self.add_bos:
                texts = [self.tokenizer.bos_token + text for text in texts]
            encoded = self.tokenizer(
                texts, add_special_tokens=False, truncation=True, max_length=self.data_args.cutoff_len
            )["input_ids"]
            for (dataset, row), ids in zip(kept, encoded, strict=True):
                self._add_row(out, dataset, row, input_ids=ids, attention_mask=[1] * len(ids))
            return out

        tokens = [token for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"] for token in ids]
        block = self.data_args.cutoff_len
        usable = len(tokens) // block * block
        for start in range(0, usable, block):
            ids = tokens[start : start + block]
            if self.add_bos:
                ids[0] = self.tokenizer.bos_token_id
            self._add_row(out, "", -1, input_ids=ids, attention_mask=[1] * block)
        if usable < len(tokens):
            self._add_drop(out, "", -1, PACKING_REMAINDER)
            out[DROPPED_TOKENS][-1] = len(tokens) - usable
        return out

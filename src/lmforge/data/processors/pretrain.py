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
    the texts are concatenated and cut into cutoff_len blocks (`_dataset=""`, `_row=-1`); the tail
    that does not fill a block is dropped and reported by one `packing_remainder` row whose
    `_dropped_tokens` holds its token count.

    A map over a whole dataset tokenizes in parallel with `defer_packing` set (one untruncated row
    per text) and then packs all rows in order with `BlockPacker`, so the blocks, and the one tail
    left out, do not depend on how many workers tokenized. A stream packs each batch on its own.
    """

    defer_packing = False

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

        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        if self.defer_packing:
            for (dataset, row), ids in zip(kept, encoded, strict=True):
                self._add_row(out, dataset, row, input_ids=ids, attention_mask=[])
            return out
        tokens = [token for ids in encoded for token in ids]
        rest = self.add_blocks(out, tokens)
        self.add_remainder(out, len(rest))
        return out

    def add_blocks(self, out: dict[str, list[Any]], tokens: list[int]) -> list[int]:
        """Add the full cutoff_len blocks of `tokens` to `out`; return the tokens after the last one."""
        block = self.data_args.cutoff_len
        usable = len(tokens) // block * block
        for start in range(0, usable, block):
            ids = tokens[start : start + block]
            if self.add_bos:
                ids[0] = self.tokenizer.bos_token_id
            self._add_row(out, "", -1, input_ids=ids, attention_mask=[1] * block)
        return tokens[usable:]

    def add_remainder(self, out: dict[str, list[Any]], count: int) -> None:
        """Report `count` tokens that fill no block (nothing when there are none)."""
        if count:
            self._add_drop(out, "", -1, PACKING_REMAINDER)
            out[DROPPED_TOKENS][-1] = count


class BlockPacker:
    """The packing pass over rows tokenized with `defer_packing`: one process, rows in order.

    The tokens after the last full block of a map batch carry over to the next one; only the final
    tail is left out. Call it with `with_indices=True`: the batch holding the last row flushes.
    """

    def __init__(self, processor: PretrainProcessor, total_rows: int) -> None:
        self.processor = processor
        self.total_rows = total_rows
        self.carry: list[int] = []

    def __call__(self, batch: Mapping[str, Sequence[Any]], indices: Sequence[int]):
        import pyarrow as pa

        processor = self.processor
        out = processor._empty_output()
        for index in range(len(batch["_drop"])):
            if batch["_drop"][index]:
                processor._add_drop(out, batch["_dataset"][index], batch["_row"][index], batch["_drop"][index])
            else:
                self.carry.extend(batch["input_ids"][index])
        self.carry = processor.add_blocks(out, self.carry)
        if indices and indices[-1] == self.total_rows - 1:
            processor.add_remainder(out, len(self.carry))
            self.carry = []
        return pa.Table.from_pydict(out, schema=processor.features.arrow_schema)

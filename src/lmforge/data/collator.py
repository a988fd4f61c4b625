"""Batch processed rows into padded tensors, for SFT (also packed and neat-packed) and pre-training."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lmforge.data.processors.base import IGNORE_INDEX

# Columns the collators pad; anything else (except `_`-prefixed bookkeeping columns) is an error,
# so a stray column fails loudly instead of silently vanishing from the batch.
PADDED_COLUMNS = ("input_ids", "attention_mask", "labels", "position_ids")
MEDIA_COLUMNS = ("images", "videos")  # media paths of multimodal SFT rows, read by MultiModalDataCollator


def prepare_4d_attention_mask(index_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Expand a [b, L] sample-index mask (0 = padding) to a [b, 1, L, L] additive causal mask.

    Position i may attend to position j when j <= i, both carry the same non-zero index; allowed
    entries are 0.0, the rest the minimum of `dtype`. Padding rows attend to nothing.
    """
    _, seq_len = index_mask.shape
    same_sample = index_mask.unsqueeze(1).unsqueeze(3) == index_mask.unsqueeze(1).unsqueeze(2)
    not_padding = (index_mask != 0).unsqueeze(1).unsqueeze(2)
    causal = torch.ones((seq_len, seq_len), dtype=torch.bool, device=index_mask.device).tril()
    allowed = same_sample & not_padding & causal
    zero = torch.zeros((), dtype=dtype, device=index_mask.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def pad_sequences(
    sequences: Sequence[Sequence[int] | torch.Tensor],
    value: int,
    side: str = "right",
    pad_to_multiple_of: int | None = None,
    dtype: torch.dtype = torch.long,
) -> torch.Tensor:
    """Stack variable-length sequences into one [b, L] tensor, L the longest rounded up to the multiple."""
    length = max((len(sequence) for sequence in sequences), default=0)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    out = torch.full((len(sequences), length), value, dtype=dtype)
    for row, sequence in enumerate(sequences):
        size = len(sequence)
        if size == 0:
            continue
        if side == "right":
            out[row, :size] = torch.as_tensor(sequence, dtype=dtype)
        else:
            out[row, length - size :] = torch.as_tensor(sequence, dtype=dtype)
    return out


def _check_columns(features: Sequence[Mapping[str, Any]]) -> None:
    unknown = {key for feature in features for key in feature if key not in PADDED_COLUMNS and not key.startswith("_")}
    if unknown:
        raise ValueError(f"The collator cannot batch column(s) {sorted(unknown)}; it pads {list(PADDED_COLUMNS)}.")


def _check_side(side: str) -> None:
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got '{side}'.")


def _pad_token_id(tokenizer) -> int:
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_token_id is None:
        raise ValueError("The tokenizer has neither a pad token nor an eos token to pad with.")
    return pad_token_id


@dataclass
class SFTDataCollator:
    """Pad SFT rows to the batch's longest row (rounded up to `pad_to_multiple_of`).

    `labels` are padded with `label_pad_token_id` to their own longest length (equal to the inputs'
    in training; prediction labels are the answers only). `position_ids` (packing) are padded with 0.
    With `block_diag_attn` (neat packing) the sample-index attention mask becomes a block-diagonal
    causal [b, 1, L, L] mask in `compute_dtype`, except for flash-attention, which reads the indices.
    """

    pad_token_id: int
    label_pad_token_id: int = IGNORE_INDEX
    pad_to_multiple_of: int | None = 8
    padding_side: str = "right"
    block_diag_attn: bool = False
    attn_implementation: str = "eager"
    compute_dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        _check_side(self.padding_side)

    @classmethod
    def from_tokenizer(cls, tokenizer, **kwargs: Any) -> SFTDataCollator:
        """Build a collator that pads with the tokenizer's pad token (its eos when it has no pad)."""
        return cls(pad_token_id=_pad_token_id(tokenizer), **kwargs)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Return `input_ids`, `attention_mask`, `labels` (when present) and `position_ids` (when present)."""
        _check_columns(features)
        side, multiple = self.padding_side, self.pad_to_multiple_of
        input_ids = [feature["input_ids"] for feature in features]
        masks = [
            feature["attention_mask"] if "attention_mask" in feature else [1] * len(ids)
            for feature, ids in zip(features, input_ids, strict=True)
        ]
        batch = {
            "input_ids": pad_sequences(input_ids, self.pad_token_id, side, multiple),
            "attention_mask": pad_sequences(masks, 0, side, multiple),
        }
        if "labels" in features[0]:
            labels = [feature["labels"] for feature in features]
            batch["labels"] = pad_sequences(labels, self.label_pad_token_id, side, multiple)
        if "position_ids" in features[0]:
            positions = [feature["position_ids"] for feature in features]
            batch["position_ids"] = pad_sequences(positions, 0, side, multiple)
        if self.block_diag_attn and self.attn_implementation != "flash_attention_2":
            batch["attention_mask"] = prepare_4d_attention_mask(batch["attention_mask"], self.compute_dtype)
        return batch


@dataclass
class MultiModalDataCollator:
    """SFT rows of a multimodal model: `SFTDataCollator`'s padded tokens plus the pixels of the batch's media.

    Each row carries `images` / `videos` (paths kept by the processor). All of the batch's images go
    through the template's plugin at once, in row order, which is the order the model fills its image
    tokens in; likewise videos. `mm_token_type_ids` marks those tokens (Qwen2-VL's M-RoPE needs it).
    A batch of text rows only gets no pixel inputs at all; the model then runs as a text model.
    """

    text: SFTDataCollator
    plugin: Any
    processor: Any
    data_args: Any
    tokenizer: Any

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Return the text batch, plus `pixel_values`, `image_grid_thw` (videos: `*_videos`, `video_grid_thw`)."""
        media = {kind: [item for feature in features for item in feature.get(kind) or []]
                 for kind in MEDIA_COLUMNS}
        batch = self.text([{k: v for k, v in feature.items() if k not in MEDIA_COLUMNS} for feature in features])
        if any(media.values()):
            batch.update(self.plugin.mm_inputs(media["images"], media["videos"], self.processor, self.data_args))
            batch["mm_token_type_ids"] = self.plugin.token_type_ids(batch["input_ids"], self.tokenizer)
        return batch


@dataclass
class PretrainDataCollator:
    """Pad pt rows; labels are the input ids with padding positions set to IGNORE_INDEX.

    Padding is found from the attention mask, not by comparing ids with the pad id: with a tokenizer
    whose pad token is also its eos (Qwen's <|endoftext|>), the eos ending each text stays trained.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    padding_side: str = "right"

    def __post_init__(self) -> None:
        _check_side(self.padding_side)

    @classmethod
    def from_tokenizer(cls, tokenizer, **kwargs: Any) -> PretrainDataCollator:
        """Build a collator that pads with the tokenizer's pad token (its eos when it has no pad)."""
        return cls(pad_token_id=_pad_token_id(tokenizer), **kwargs)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Return `input_ids`, `attention_mask` and `labels`."""
        _check_columns(features)
        side, multiple = self.padding_side, self.pad_to_multiple_of
        input_ids = pad_sequences([feature["input_ids"] for feature in features], self.pad_token_id, side, multiple)
        lengths = [len(feature["input_ids"]) for feature in features]
        attention_mask = pad_sequences([[1] * length for length in lengths], 0, side, multiple)
        labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@dataclass
class PairwiseDataCollator:
    """Preference pairs as one batch of 2B rows: the B chosen sequences first, then the B rejected ones.

    One forward pass then scores both halves; `split` (chosen, rejected) is `batch_size // 2`.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = 8

    @classmethod
    def from_tokenizer(cls, tokenizer, **kwargs: Any) -> PairwiseDataCollator:
        """Build a collator that pads with the tokenizer's pad token (its eos when it has no pad)."""
        return cls(pad_token_id=_pad_token_id(tokenizer), **kwargs)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Return `input_ids`, `attention_mask` and `labels` of shape (2B, L)."""
        ids, masks, labels = [], [], []
        for kind in ("chosen", "rejected"):
            for feature in features:
                ids.append(feature[f"{kind}_input_ids"])
                masks.append(feature[f"{kind}_attention_mask"])
                labels.append(feature[f"{kind}_labels"])
        multiple = self.pad_to_multiple_of
        return {
            "input_ids": pad_sequences(ids, self.pad_token_id, "right", multiple),
            "attention_mask": pad_sequences(masks, 0, "right", multiple),
            "labels": pad_sequences(labels, IGNORE_INDEX, "right", multiple),
        }


@dataclass
class FeedbackDataCollator:
    """KTO rows: the answers and their mismatched KL pairs, each padded, plus the desirability tags."""

    pad_token_id: int
    pad_to_multiple_of: int | None = 8

    @classmethod
    def from_tokenizer(cls, tokenizer, **kwargs: Any) -> FeedbackDataCollator:
        """Build a collator that pads with the tokenizer's pad token (its eos when it has no pad)."""
        return cls(pad_token_id=_pad_token_id(tokenizer), **kwargs)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Return `input_ids`/`attention_mask`/`labels`, their `kl_` twins and `kto_tags` (bool, B)."""
        multiple = self.pad_to_multiple_of
        batch: dict[str, torch.Tensor] = {}
        for prefix in ("", "kl_"):
            batch[f"{prefix}input_ids"] = pad_sequences([f[f"{prefix}input_ids"] for f in features],
                                                        self.pad_token_id, "right", multiple)
            batch[f"{prefix}attention_mask"] = pad_sequences([f[f"{prefix}attention_mask"] for f in features], 0,
                                                             "right", multiple)
            batch[f"{prefix}labels"] = pad_sequences([f[f"{prefix}labels"] for f in features], IGNORE_INDEX,
                                                     "right", multiple)
        batch["kto_tags"] = torch.tensor([bool(f["kto_tags"]) for f in features])
        return batch

"""Collators: LLaMA-Factory's padding expectation, the neat-packing 4D mask, packing passthrough."""

from __future__ import annotations

import pytest
import torch

from lmforge.data.collator import PretrainDataCollator, SFTDataCollator, pad_sequences, prepare_4d_attention_mask
from lmforge.data.processors import IGNORE_INDEX


def test_sft_padding_matches_llamafactory(llama_tokenizer):
    llama_tokenizer.pad_token = llama_tokenizer.eos_token  # what template.fix_tokenizer does
    collator = SFTDataCollator.from_tokenizer(llama_tokenizer, pad_to_multiple_of=8)
    p, q = llama_tokenizer.pad_token_id, IGNORE_INDEX
    features = [
        {"input_ids": [0, 1, 2, 3, 4, 5], "attention_mask": [1] * 6, "labels": [q, q, 2, 3, 4, 5]},
        {"input_ids": [6, 7], "attention_mask": [1, 1], "labels": [q, 7]},
    ]
    batch = collator(features)
    expected = {
        "input_ids": [[0, 1, 2, 3, 4, 5, p, p], [6, 7, p, p, p, p, p, p]],
        "attention_mask": [[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]],
        "labels": [[q, q, 2, 3, 4, 5, q, q], [q, 7, q, q, q, q, q, q]],
    }
    assert set(batch) == set(expected)
    for key, value in expected.items():
        assert batch[key].dtype == torch.long
        assert batch[key].tolist() == value
    # The features are read, not modified.
    assert features[1] == {"input_ids": [6, 7], "attention_mask": [1, 1], "labels": [q, 7]}


def test_left_padding_and_no_multiple():
    collator = SFTDataCollator(pad_token_id=9, pad_to_multiple_of=None, padding_side="left")
    batch = collator([{"input_ids": [1, 2, 3], "labels": [4]}, {"input_ids": [5], "labels": [6, 7]}])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [9, 9, 5]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    # Prediction labels (answers only) are padded to their own longest length.
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 4], [6, 7]]


def test_position_ids_pass_through_and_bookkeeping_columns_are_skipped():
    collator = SFTDataCollator(pad_token_id=0)
    features = [
        {
            "input_ids": [5, 6, 7, 0],
            "attention_mask": [1, 1, 1, 1],
            "position_ids": [0, 1, 0, 0],
            "labels": [IGNORE_INDEX, 6, 7, IGNORE_INDEX],
            "_dataset": "",
            "_row": -1,
            "_drop": "",
        },
    ]
    batch = collator(features)
    assert batch["position_ids"].tolist() == [[0, 1, 0, 0, 0, 0, 0, 0]]
    assert set(batch) == {"input_ids", "attention_mask", "labels", "position_ids"}


def test_unknown_column_is_an_error():
    with pytest.raises(ValueError, match=r"cannot batch column\(s\) \['images'\]"):
        SFTDataCollator(pad_token_id=0)([{"input_ids": [1], "images": ["a.png"]}])


def test_4d_attention_mask_matches_llamafactory():
    o, x = 0.0, torch.finfo(torch.float16).min
    indices = torch.tensor([[1, 1, 2, 2, 2, 0], [1, 2, 2, 3, 3, 3]])
    expected = torch.tensor(
        [
            [
                [
                    [o, x, x, x, x, x],
                    [o, o, x, x, x, x],
                    [x, x, o, x, x, x],
                    [x, x, o, o, x, x],
                    [x, x, o, o, o, x],
                    [x, x, x, x, x, x],
                ]
            ],
            [
                [
                    [o, x, x, x, x, x],
                    [x, o, x, x, x, x],
                    [x, o, o, x, x, x],
                    [x, x, x, o, x, x],
                    [x, x, x, o, o, x],
                    [x, x, x, o, o, o],
                ]
            ],
        ],
        dtype=torch.float16,
    )
    computed = prepare_4d_attention_mask(indices, torch.float16)
    assert list(computed.shape) == [2, 1, 6, 6]
    assert computed.dtype == torch.float16
    assert torch.equal(computed, expected)


def test_neat_packing_collator_builds_the_block_mask():
    features = [
        {
            "input_ids": [5, 6, 7, 8, 9, 0],
            "attention_mask": [1, 1, 2, 2, 2, 0],
            "position_ids": [0, 1, 0, 1, 2, 0],
            "labels": [IGNORE_INDEX] * 6,
        },
    ]
    collator = SFTDataCollator(
        pad_token_id=0, pad_to_multiple_of=None, block_diag_attn=True, compute_dtype=torch.bfloat16
    )
    batch = collator(features)
    assert list(batch["attention_mask"].shape) == [1, 1, 6, 6]
    assert batch["attention_mask"].dtype == torch.bfloat16
    expected = prepare_4d_attention_mask(torch.tensor([[1, 1, 2, 2, 2, 0]]), torch.bfloat16)
    assert torch.equal(batch["attention_mask"], expected)
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2, 0]]

    flash = SFTDataCollator(pad_token_id=0, block_diag_attn=True, attn_implementation="flash_attention_2")
    assert flash(features)["attention_mask"].tolist() == [[1, 1, 2, 2, 2, 0, 0, 0]]


def test_pretrain_collator_masks_padding_not_eos_equal_to_pad():
    collator = PretrainDataCollator(pad_token_id=0)  # Qwen: pad == eos == <|endoftext|>
    batch = collator([{"input_ids": [4, 5, 0], "attention_mask": [1, 1, 1]}, {"input_ids": [7]}])
    assert batch["input_ids"].tolist() == [[4, 5, 0], [7, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[4, 5, 0], [7, IGNORE_INDEX, IGNORE_INDEX]]


def test_pad_sequences_accepts_tensors():
    out = pad_sequences([torch.tensor([1, 2]), [3]], value=-1, side="right", pad_to_multiple_of=4)
    assert out.tolist() == [[1, 2, -1, -1], [3, -1, -1, -1]]

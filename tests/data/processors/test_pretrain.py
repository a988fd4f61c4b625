"""pt processor: text + eos, per-row truncation, or blocks with the remainder reported."""

from __future__ import annotations

import pytest
from datasets import Dataset

from lmforge.data.processors import get_processor
from lmforge.data.processors.pretrain import PretrainProcessor, dropped_tail_tokens
from lmforge.data.report import DropReport, collect_drops

TEXTS = [
    "The sea was calm in the morning.",
    "A river runs past the stone.",
    "Light falls on the water and the wind is still.",
    "Seven numbers were the answer.",
]


def _dataset(texts):
    return Dataset.from_list(
        [
            {
                "_prompt": [{"role": "user", "content": text}] if text is not None else [],
                "_response": [],
                "_system": "",
                "_tools": "",
                "_dataset": "c4",
                "_row": i,
                "_drop": "",
            }
            for i, text in enumerate(texts)
        ]
    )


def _encode(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def test_no_packing_truncates_each_row(qwen, make_args, run_map):
    template, tokenizer = qwen
    processor = get_processor("pt", make_args(cutoff_len=8, packing=False), template, tokenizer)
    out = run_map(processor, _dataset(TEXTS[:2] + ["Hi"]))
    assert tokenizer.eos_token == "<|im_end|>"  # the qwen template makes its stop word the eos
    assert out["_row"] == [0, 1, 2] and set(out["_drop"]) == {""} and out["_dataset"] == ["c4"] * 3
    assert out[0]["input_ids"] == _encode(tokenizer, TEXTS[0] + "<|im_end|>")[:8]
    assert out[2]["input_ids"] == _encode(tokenizer, "Hi<|im_end|>")
    assert out[2]["attention_mask"] == [1] * len(out[2]["input_ids"])
    assert out.column_names == ["input_ids", "attention_mask", "_dataset", "_row", "_drop", "_warn"]


def test_llama3_uses_end_of_text_even_when_eos_is_eot(llama3, make_args, run_map):
    template, tokenizer = llama3
    assert tokenizer.eos_token == "<|eot_id|>"  # replaced by the template
    out = run_map(get_processor("pt", make_args(packing=False), template, tokenizer), _dataset(["Hi"]))
    assert out[0]["input_ids"] == _encode(tokenizer, "Hi<|end_of_text|>")


def test_no_packing_with_bos(llama_tokenizer, make_args, run_map):
    llama_tokenizer.add_bos_token = True
    processor = PretrainProcessor(make_args(template="default", packing=False), None, llama_tokenizer, packing=False)
    out = run_map(processor, _dataset(["Hi"]))
    assert out[0]["input_ids"] == [llama_tokenizer.bos_token_id] + _encode(llama_tokenizer, "Hi<|end_of_text|>")


def test_packing_cuts_blocks_and_reports_the_remainder(qwen, make_args, run_map):
    template, tokenizer = qwen
    processor = get_processor("pt", make_args(cutoff_len=8), template, tokenizer)  # packing is the pt default
    out = run_map(processor, _dataset(TEXTS))
    stream = [token for text in TEXTS for token in _encode(tokenizer, text + "<|im_end|>")]
    blocks = len(stream) // 8
    assert out["input_ids"][:blocks] == [stream[i * 8 : (i + 1) * 8] for i in range(blocks)]
    assert all(mask == [1] * 8 for mask in out["attention_mask"][:blocks])
    assert out["_row"][:blocks] == [-1] * blocks and out["_dataset"][:blocks] == [""] * blocks
    tail = len(stream) - blocks * 8
    assert tail > 0
    assert out["_drop"] == [""] * blocks + ["packing_remainder"]
    assert out["_dropped_tokens"] == [0] * blocks + [tail]
    assert dropped_tail_tokens(out) == tail

    report = DropReport()
    kept = collect_drops(out, report, "tokenize")
    assert len(kept) == blocks and report.count(reason="packing_remainder") == 1


def test_packing_remainder_is_per_batch(qwen, make_args, run_map):
    template, tokenizer = qwen
    processor = get_processor("pt", make_args(cutoff_len=8), template, tokenizer)
    out = run_map(processor, _dataset(TEXTS), batch_size=2)
    lengths = [len(_encode(tokenizer, text + "<|im_end|>")) for text in TEXTS]
    first, second = sum(lengths[:2]), sum(lengths[2:])
    assert dropped_tail_tokens(out) == first % 8 + second % 8
    assert sum(1 for drop in out["_drop"] if drop == "") == first // 8 + second // 8


def test_packing_with_bos_forces_it_at_every_block_start(llama_tokenizer, make_args, run_map):
    llama_tokenizer.add_bos_token = True
    processor = PretrainProcessor(make_args(template="default", cutoff_len=6), None, llama_tokenizer, packing=True)
    out = run_map(processor, _dataset(TEXTS))
    stream = [token for text in TEXTS for token in _encode(llama_tokenizer, text + "<|end_of_text|>")]
    blocks = [ids for ids, drop in zip(out["input_ids"], out["_drop"]) if not drop]
    assert len(blocks) == len(stream) // 6
    for i, block in enumerate(blocks):
        assert block == [llama_tokenizer.bos_token_id] + stream[i * 6 + 1 : (i + 1) * 6]


def test_packing_without_bos_keeps_the_stream(llama_tokenizer, make_args, run_map):
    assert not getattr(llama_tokenizer, "add_bos_token", False)
    processor = PretrainProcessor(make_args(template="default", cutoff_len=6), None, llama_tokenizer, packing=True)
    out = run_map(processor, _dataset(TEXTS[:1]))
    stream = _encode(llama_tokenizer, TEXTS[0] + "<|end_of_text|>")
    assert out["input_ids"][0] == stream[:6]


def test_empty_rows_and_upstream_drops(qwen, make_args, run_map):
    template, tokenizer = qwen
    dataset = _dataset([None, "Hi"])
    out = run_map(get_processor("pt", make_args(packing=False), template, tokenizer), dataset)
    assert out["_drop"] == ["empty_text", ""]
    packed = run_map(get_processor("pt", make_args(cutoff_len=2), template, tokenizer), dataset)
    assert packed["_drop"][0] == "empty_text" and packed["_row"][0] == 0


def test_neat_packing_is_sft_only(qwen, make_args):
    from lmforge.errors import UserError

    template, tokenizer = qwen
    with pytest.raises(UserError, match="neat_packing only applies to stage sft"):
        get_processor("pt", make_args(neat_packing=True), template, tokenizer)

"""Packed SFT: blocks never exceed cutoff_len, every token appears once, neat index masks."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from lmforge.data.processors import IGNORE_INDEX, get_processor
from lmforge.data.processors.packed import PackedSupervisedProcessor, greedy_knapsack
from lmforge.data.report import DropReport, collect_drops

Q = IGNORE_INDEX
WORDS = "the sea wind story calm river stone light morning answer number seven".split()


def _conversations(count, seed=0):
    rng = random.Random(seed)
    return [
        [" ".join(rng.choices(WORDS, k=rng.randint(1, 12))), " ".join(rng.choices(WORDS, k=rng.randint(1, 12)))]
        for _ in range(count)
    ]


def test_greedy_knapsack():
    lengths = [7, 1, 5, 3, 9, 2, 2, 8]
    bins = greedy_knapsack(lengths, 10)
    assert bins == [[9, 1], [8, 2], [7, 3], [5, 2]]
    assert sorted(x for b in bins for x in b) == sorted(lengths)
    assert greedy_knapsack([], 10) == []
    with pytest.raises(ValueError):
        greedy_knapsack([11], 10)


@pytest.mark.parametrize("neat", [False, True])
def test_blocks_hold_every_sample_once(llama3, aligned, rows_dataset, make_args, run_map, neat):
    template, tokenizer = llama3
    conversations = _conversations(40)
    dataset = rows_dataset([aligned(c) for c in conversations])
    plain = run_map(get_processor("sft", make_args(cutoff_len=63), template, tokenizer), dataset)
    processor = get_processor("sft", make_args(cutoff_len=64, packing=True, neat_packing=neat), template, tokenizer)
    assert isinstance(processor, PackedSupervisedProcessor)
    packed = run_map(processor, dataset, batch_size=16)

    assert set(packed["_drop"]) == {""} and set(packed["_row"]) == {-1} and set(packed["_dataset"]) == {""}
    found = []
    for block in packed:
        assert len(block["input_ids"]) == len(block["labels"]) == len(block["position_ids"]) == 64
        positions = block["position_ids"]
        # Samples have 2+ tokens, so content ends after the last non-zero position; padding follows.
        content = max(i for i, position in enumerate(positions) if position) + 1
        assert 0 < content <= 63
        assert block["input_ids"][content:] == [tokenizer.pad_token_id] * (64 - content)
        assert block["labels"][content:] == [Q] * (64 - content) and positions[content:] == [0] * (64 - content)
        mask = block["attention_mask"]
        if neat:
            # Sample indices 1..k in order over the content, 0 over the padding.
            assert mask[content:] == [0] * (64 - content)
            assert all(a <= b <= a + 1 for a, b in zip(mask[: content - 1], mask[1:content])) and mask[0] == 1
        else:
            assert mask == [1] * 64
        starts = [i for i in range(content) if positions[i] == 0] + [content]
        for number, (begin, end) in enumerate(zip(starts, starts[1:]), start=1):
            assert positions[begin:end] == list(range(end - begin))
            if neat:
                assert mask[begin:end] == [number] * (end - begin)
            found.append((tuple(block["input_ids"][begin:end]), tuple(block["labels"][begin:end])))
    expected = Counter((tuple(r["input_ids"]), tuple(r["labels"])) for r in plain)
    assert Counter(found) == expected


def test_packing_truncates_like_sft_and_drop_overlong_drops(llama3, aligned, rows_dataset, make_args, run_map):
    template, tokenizer = llama3
    long = ["Tell me a long story about the sea and the wind and the river.", "Once upon a time the sea was calm."]
    rows = [aligned(["Hi", "Hello"]), aligned(long), aligned(["Bye", "Bye"])]

    packed = run_map(
        get_processor("sft", make_args(cutoff_len=24, packing=True), template, tokenizer), rows_dataset(rows)
    )
    truncated = run_map(get_processor("sft", make_args(cutoff_len=23), template, tokenizer), rows_dataset(rows[1:2]))
    assert set(packed["_drop"]) == {""}
    assert any(block["input_ids"][: len(truncated[0]["input_ids"])] == truncated[0]["input_ids"] for block in packed)

    processor = get_processor("sft", make_args(cutoff_len=24, packing=True, drop_overlong=True), template, tokenizer)
    out = run_map(processor, rows_dataset(rows))
    assert out["_drop"][0] == "too_long" and out[0]["_row"] == 1 and out[0]["input_ids"] == []
    report = DropReport()
    blocks = collect_drops(out, report, "pack")
    assert report.count(reason="too_long") == 1 and report.rows("demo", "too_long") == [1]
    assert len(blocks) == 2 and all(len(ids) == 24 for ids in blocks["input_ids"])  # ~12 tokens each: one per block


def test_invalid_rows_and_exact_layout(fake, make_args):
    template, tokenizer = fake()
    processor = PackedSupervisedProcessor(make_args(cutoff_len=8, packing=True), template, tokenizer)
    user = lambda n: {"role": "user", "content": str(n)}  # noqa: E731
    answer = lambda n: {"role": "assistant", "content": str(n)}  # noqa: E731
    batch = {
        "_prompt": [[user(2)], [user(1)], [user(1), answer(1)], [user(3)]],
        "_response": [[answer(2)], [answer(2)], [answer(1)], [answer(1)]],
        "_dataset": ["a", "a", "a", "a"],
        "_row": [0, 1, 2, 3],
    }
    out = processor.process(batch)
    assert out["_drop"] == ["invalid_turns", "", ""]
    assert out["_row"] == [2, -1, -1]
    # Capacity 7: lengths 4, 3, 4 -> [4, 3] then [4]; equal lengths are taken last-first.
    assert out["input_ids"][1] == [10, 10, 10, 50, 10, 50, 50, 0]
    assert out["position_ids"][1] == [0, 1, 2, 3, 0, 1, 2, 0]
    assert out["labels"][1] == [Q, Q, Q, 50, Q, 50, 50, Q]
    assert out["attention_mask"][1] == [1] * 8
    assert out["input_ids"][2] == [10, 10, 50, 50, 0, 0, 0, 0]


def test_neat_indices_beyond_int8(fake, rows_dataset, make_args, run_map):
    from datasets import Dataset

    template, tokenizer = fake()
    processor = PackedSupervisedProcessor(make_args(cutoff_len=400, neat_packing=True), template, tokenizer)
    assert str(processor.features["attention_mask"].feature.dtype) == "int32"
    dataset = Dataset.from_list(
        [
            {
                "_prompt": [{"role": "user", "content": "1"}],
                "_response": [{"role": "assistant", "content": "1"}],
                "_dataset": "d",
                "_row": i,
                "_drop": "",
            }
            for i in range(199)
        ]
    )
    out = run_map(processor, dataset)
    assert len(out) == 1
    mask = out[0]["attention_mask"]
    assert mask[:398] == [i // 2 + 1 for i in range(398)] and mask[398:] == [0, 0]
    assert max(mask) == 199

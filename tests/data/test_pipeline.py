"""get_dataset end to end: placeholders, splits, drops with row numbers, pt packing, tokenized_path, streaming."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lmforge.config import parse_config
from lmforge.data.pipeline import get_dataset
from lmforge.data.processors import IGNORE_INDEX
from lmforge.errors import UserError
from lmforge.model.tokenizer import load_tokenizer_and_template
from tests.conftest import DATA_DIR

PLACEHOLDERS = 'placeholders={"name":"ForgeBot","author":"Team"}'
ASSISTANT_HEADER = "<|start_header_id|>assistant<|end_header_id|>\n\n"


def build(model_dir: Path, *settings: str, dataset_dir: Path = DATA_DIR, stage=None, generate_eval=False):
    """(tokenizer, DatasetModule) for a data config, prepared exactly as `lmforge train` prepares it."""
    cfg = parse_config(
        "data",
        [f"model_name_or_path={model_dir}", f"dataset_dir={dataset_dir}", "template=llama3", "cutoff_len=256",
         *settings],
    )
    tokenizer, template = load_tokenizer_and_template(cfg.model, cfg.data)
    return tokenizer, get_dataset(cfg, tokenizer, template, stage=stage, generate_eval=generate_eval)


def trained_text(tokenizer, labels: list[int]) -> str:
    return tokenizer.decode([t for t in labels if t != IGNORE_INDEX], skip_special_tokens=False)


def turns(*messages: str) -> list[dict[str, str]]:
    """A sharegpt conversation alternating human, gpt, human, ... from the given texts."""
    return [{"from": ("human", "gpt")[i % 2], "value": text} for i, text in enumerate(messages)]


SHAREGPT = {"formatting": "sharegpt", "columns": {"messages": "conversations"}}


# ---- placeholders -------------------------------------------------------------------------------


def test_placeholders_from_yaml_fill_every_label(tiny_llama_dir, tmp_path):
    config = tmp_path / "data.yaml"
    config.write_text("dataset: identity\nplaceholders: {name: ForgeBot, author: Team}\n", encoding="utf-8")
    cfg = parse_config("data", [str(config), f"model_name_or_path={tiny_llama_dir}", f"dataset_dir={DATA_DIR}",
                                "template=llama3"])
    assert cfg.data.placeholders == {"name": "ForgeBot", "author": "Team"}
    tokenizer, template = load_tokenizer_and_template(cfg.model, cfg.data)
    module = get_dataset(cfg, tokenizer, template)

    labels = [trained_text(tokenizer, row) for row in module.train_dataset["labels"]]
    assert len(labels) == 96
    assert module.eval_dataset is None
    assert not module.report
    assert all("ForgeBot" in text and "{{" not in text for text in labels)
    assert sum("Team" in text for text in labels) == 94  # two identity answers do not name the author
    assert labels[0] == "Hi there! I'm ForgeBot, an AI assistant built by Team. What can I do for you?<|eot_id|>"


def test_placeholders_as_json_on_the_command_line_fill_only_their_keys(tiny_llama_dir):
    tokenizer, module = build(tiny_llama_dir, "dataset=identity", 'placeholders={"name":"ForgeBot"}')
    labels = [trained_text(tokenizer, row) for row in module.train_dataset["labels"]]
    assert all("ForgeBot" in text and "{{name}}" not in text for text in labels)
    assert sum("{{author}}" in text for text in labels) == 94


def test_without_placeholders_the_data_keeps_them(tiny_llama_dir):
    tokenizer, module = build(tiny_llama_dir, "dataset=identity", "max_samples=1")
    assert trained_text(tokenizer, module.train_dataset[0]["labels"]) == (
        "Hi there! I'm {{name}}, an AI assistant built by {{author}}. What can I do for you?<|eot_id|>"
    )


# ---- splits -------------------------------------------------------------------------------------


def test_val_size_holds_out_a_tenth_of_the_rows(tiny_llama_dir):
    _, whole = build(tiny_llama_dir, "dataset=identity", PLACEHOLDERS)
    _, split = build(tiny_llama_dir, "dataset=identity", PLACEHOLDERS, "val_size=0.1")
    assert (len(split.train_dataset), len(split.eval_dataset)) == (86, 10)
    # The two splits partition the same samples.
    together = list(split.train_dataset["input_ids"]) + list(split.eval_dataset["input_ids"])
    assert sorted(together) == sorted(whole.train_dataset["input_ids"])


def test_eval_dataset_gives_an_eval_split(tiny_llama_dir):
    _, module = build(tiny_llama_dir, "dataset=identity", "eval_dataset=alpaca_en_demo")
    assert len(module.train_dataset) == 96
    assert len(module.eval_dataset) == 125
    assert module.eval_dataset.column_names == ["input_ids", "attention_mask", "labels"]


def test_eval_on_each_dataset_gives_one_split_per_name(tiny_llama_dir):
    _, module = build(tiny_llama_dir, "dataset=identity", "eval_dataset=alpaca_en_demo,alpaca_zh_demo",
                      "eval_on_each_dataset=true")
    assert len(module.train_dataset) == 96
    assert {name: len(ds) for name, ds in module.eval_dataset.items()} == {"alpaca_en_demo": 125, "alpaca_zh_demo": 121}


def test_generate_eval_gives_prompt_only_inputs_and_the_answer_as_labels(tiny_llama_dir):
    tokenizer, train = build(tiny_llama_dir, "dataset=identity", PLACEHOLDERS)
    _, module = build(tiny_llama_dir, "dataset=identity", "eval_dataset=identity", PLACEHOLDERS, generate_eval=True)
    assert len(module.eval_dataset) == 96
    first = module.eval_dataset[0]
    assert tokenizer.decode(first["input_ids"]) == (
        f"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>{ASSISTANT_HEADER}"
    )
    assert tokenizer.decode(first["labels"]) == (
        "Hi there! I'm ForgeBot, an AI assistant built by Team. What can I do for you?<|eot_id|>"
    )
    for full, prompt in zip(train.train_dataset, module.eval_dataset, strict=True):
        assert tokenizer.decode(prompt["input_ids"]).endswith(ASSISTANT_HEADER)
        assert IGNORE_INDEX not in prompt["labels"]
        # Nothing is cut at cutoff_len 256: prompt + answer is the training sample.
        assert prompt["input_ids"] + prompt["labels"] == full["input_ids"]
    # The training split is not affected by generate_eval.
    assert list(train.train_dataset["labels"]) == list(module.train_dataset["labels"])


# ---- drops --------------------------------------------------------------------------------------


def test_drops_are_counted_by_reason_with_row_numbers(tiny_llama_dir, data_dir):
    rows = [
        {"conversations": turns("hi", "hello")},  # 0 kept
        {"conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]},  # 1 role order
        {"conversations": turns("a", "b", "c")},  # 2 odd count
        {"conversations": turns("tell me", "word " * 100)},  # 3 longer than cutoff_len
        {"conversations": turns("ok", "fine", "and?", "done")},  # 4 kept
        {"conversations": turns("x")},  # 5 odd count
        {"conversations": [{"from": "human", "value": "u"}, {"from": "human", "value": "v"}]},  # 6 role order
    ]
    root = data_dir({"chat": {"file_name": "chat.json", **SHAREGPT}}, {"chat.json": rows})
    tokenizer, module = build(tiny_llama_dir, "dataset=chat", "cutoff_len=40", "drop_overlong=true", dataset_dir=root)

    assert module.report.to_dict() == {
        "total": 5,
        "drops": [
            {"dataset": "chat", "stage": "convert", "reason": "invalid_role_order", "count": 2, "rows": [1, 6]},
            {"dataset": "chat", "stage": "convert", "reason": "odd_message_count", "count": 2, "rows": [2, 5]},
            {"dataset": "chat", "stage": "tokenize", "reason": "too_long", "count": 1, "rows": [3]},
        ],
        "seen": [
            {"dataset": "chat", "stage": "convert", "count": 7},
            {"dataset": "chat", "stage": "tokenize", "count": 3},
        ],
        "warnings": [],
        "unread_columns": [],
    }
    assert module.summary_lines() == [
        "chat [convert]: dropped 4 of 7 rows: invalid_role_order: 2 rows (rows 1, 6); "
        "odd_message_count: 2 rows (rows 2, 5)",
        "chat [tokenize]: dropped 1 of 3 rows: too_long: 1 row (row 3)",
    ]
    assert len(module.train_dataset) == 2
    assert [trained_text(tokenizer, labels) for labels in module.train_dataset["labels"]] == [
        "hello<|eot_id|>",
        "fine<|eot_id|>done<|eot_id|>",
    ]


def test_without_drop_overlong_a_long_row_is_truncated_not_dropped(tiny_llama_dir, data_dir):
    rows = [{"conversations": turns("hi", "hello")}, {"conversations": turns("tell me", "word " * 100)}]
    root = data_dir({"chat": {"file_name": "chat.json", **SHAREGPT}}, {"chat.json": rows})
    _, module = build(tiny_llama_dir, "dataset=chat", "cutoff_len=40", dataset_dir=root)
    assert not module.report
    assert [len(ids) for ids in module.train_dataset["input_ids"]] == [21, 40]


def test_a_dataset_with_only_bad_rows_names_the_dataset_and_reasons(tiny_llama_dir, data_dir):
    rows = [
        {"conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]},
        {"conversations": turns("a", "b", "c")},
    ]
    root = data_dir({"broken": {"file_name": "broken.json", **SHAREGPT}}, {"broken.json": rows})
    with pytest.raises(UserError) as err:
        build(tiny_llama_dir, "dataset=broken", dataset_dir=root)
    assert str(err.value) == (
        f"Dataset 'broken' ({root / 'broken.json'}) has no valid rows: all 2 rows were dropped (sharegpt format). "
        "Reasons: invalid_role_order: 1 row (row 0); odd_message_count: 1 row (row 1). Likely cause: turns must "
        "alternate user (or observation) then assistant (or function_call), starting with the user; a conversation "
        'must end with an assistant turn (for preference data set "ranking": true).'
    )


def test_a_dataset_whose_rows_are_all_too_long_says_so(tiny_llama_dir, data_dir):
    root = data_dir({"long": {"file_name": "long.json"}}, {"long.json": [{"instruction": "w " * 50, "output": "v"}]})
    with pytest.raises(UserError) as err:
        build(tiny_llama_dir, "dataset=long", "cutoff_len=32", "drop_overlong=true", dataset_dir=root)
    assert str(err.value) == (
        "No valid training samples are left after tokenization (cutoff_len 32): long [tokenize]: dropped 1 of 1 "
        "rows: too_long: 1 row (row 0). Run `lmforge data check` on this config for details."
    )


# ---- pt packing ---------------------------------------------------------------------------------


def test_pt_packing_makes_full_blocks_and_counts_the_tail(tiny_llama_dir):
    tokenizer, module = build(tiny_llama_dir, "dataset=pretrain_demo", "stage=pt", "cutoff_len=32")
    texts = [json.loads(line)["text"] for line in (DATA_DIR / "pretrain_demo.jsonl").read_text().splitlines()]
    stream = [t for text in texts for t in tokenizer(text + "<|end_of_text|>", add_special_tokens=False)["input_ids"]]

    blocks = list(module.train_dataset["input_ids"])
    assert module.train_dataset.column_names == ["input_ids", "attention_mask"]
    assert {len(block) for block in blocks} == {32}
    assert module.packing_dropped_tokens == len(stream) - len(blocks) * 32 == 17
    assert [t for block in blocks for t in block] == stream[: len(blocks) * 32]
    assert not module.report  # the packed remainder is a token count, not a dropped row
    assert module.summary_lines() == ["packing: 17 tokens after the last full block were not used"]


@pytest.mark.parametrize("workers", [2, 4])
def test_pt_packing_does_not_depend_on_the_worker_count(tiny_llama_dir, workers):
    # Small map batches spread over workers: each batch's tail carries over to the next block.
    _, single = build(tiny_llama_dir, "dataset=pretrain_demo", "stage=pt", "cutoff_len=32")
    _, parallel = build(tiny_llama_dir, "dataset=pretrain_demo", "stage=pt", "cutoff_len=32",
                        f"preprocessing_num_workers={workers}", "preprocessing_batch_size=7", "overwrite_cache=true")
    assert list(parallel.train_dataset["input_ids"]) == list(single.train_dataset["input_ids"])
    assert parallel.packing_dropped_tokens == single.packing_dropped_tokens == 17


def test_pt_packing_without_one_full_block_says_so(tiny_llama_dir):
    tokenizer, module = build(tiny_llama_dir, "dataset=pretrain_demo", "stage=pt", "cutoff_len=32")
    total = len(module.train_dataset) * 32 + 17
    with pytest.raises(UserError) as caught:
        build(tiny_llama_dir, "dataset=pretrain_demo", "stage=pt", f"cutoff_len={total + 1}",
              "preprocessing_num_workers=2", "preprocessing_batch_size=16")
    assert str(caught.value) == (
        f"No valid training samples are left after tokenization (cutoff_len {total + 1}): the 60 rows give {total} "
        "tokens, fewer than one packed block, so lower cutoff_len or add text. "
        "Run `lmforge data check` on this config for details."
    )


# ---- tokenized_path -----------------------------------------------------------------------------


def test_tokenized_path_saves_then_loads_without_the_data(tiny_llama_dir, data_dir, tmp_path):
    root = data_dir({"identity": {"file_name": "identity.json"}})
    shutil.copy(DATA_DIR / "identity.json", root / "identity.json")
    saved_at = tmp_path / "tokenized"
    settings = ("dataset=identity", "val_size=0.1", PLACEHOLDERS, f"tokenized_path={saved_at}")

    _, first = build(tiny_llama_dir, *settings, dataset_dir=root)
    assert (saved_at / "dataset_dict.json").is_file()
    assert sorted(p.name for p in saved_at.iterdir()) == ["dataset_dict.json", "train", "validation"]

    root.rename(tmp_path / "moved")  # the second run must not read the dataset files
    _, second = build(tiny_llama_dir, *settings, dataset_dir=root)
    assert list(second.train_dataset["input_ids"]) == list(first.train_dataset["input_ids"])
    assert list(second.train_dataset["labels"]) == list(first.train_dataset["labels"])
    assert list(second.eval_dataset["input_ids"]) == list(first.eval_dataset["input_ids"])
    assert second.train_dataset.column_names == ["input_ids", "attention_mask", "labels"]


def test_tokenized_path_saved_for_another_stage_is_refused(tiny_llama_dir, tmp_path):
    saved_at = tmp_path / "tokenized"
    build(tiny_llama_dir, "dataset=identity", "max_samples=4", f"tokenized_path={saved_at}")
    with pytest.raises(UserError) as err:
        build(tiny_llama_dir, "dataset=identity", "stage=pt", f"tokenized_path={saved_at}")
    assert str(err.value) == (
        f"tokenized_path '{saved_at}' split 'train' was saved with columns ['attention_mask', 'input_ids', 'labels'], "
        "but this run (stage pt) needs ['attention_mask', 'input_ids']. Delete the folder, set overwrite_cache: true "
        "to rebuild it, or choose another tokenized_path."
    )


def test_tokenized_path_with_streaming_is_refused_before_loading(tiny_llama_dir, tmp_path):
    with pytest.raises(UserError) as err:
        build(tiny_llama_dir, "dataset=identity", "streaming=true", "max_steps=10",
              f"tokenized_path={tmp_path / 'tok'}", dataset_dir=tmp_path / "no-data-here")
    assert str(err.value) == "tokenized_path cannot be used with streaming: a stream cannot be saved."


# ---- streaming ----------------------------------------------------------------------------------


def test_streaming_fills_placeholders_and_tokenizes(tiny_llama_dir):
    tokenizer, module = build(tiny_llama_dir, "dataset=identity", "streaming=true", "max_steps=10", PLACEHOLDERS)
    rows = list(module.train_dataset)
    assert len(rows) == 96
    assert set(rows[0]) == {"input_ids", "attention_mask", "labels"}
    assert all("ForgeBot" in trained_text(tokenizer, row["labels"]) for row in rows)

"""The loading pipeline: file types, sampling, conversion drops, mixing, splits, streaming, errors."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from datasets import Dataset, IterableDataset

from lmforge.config.data import DataArguments
from lmforge.data.loader import get_aligned_splits, load_aligned_datasets, split_train_eval
from lmforge.data.report import DropReport
from lmforge.errors import UserError

ALPACA_ROWS = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(10)]


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def load(root, names, seed=42, report=None, stage=None, **args):
    data_args = DataArguments(dataset_dir=str(root), **args)
    return load_aligned_datasets(data_args, names, seed=seed, report=report, stage=stage)


def error_of(root, names, **args) -> str:
    with pytest.raises(UserError) as info:
        load(root, names, **args)
    return str(info.value)


def turns(*pairs):
    return [{"from": role, "value": text} for role, text in pairs]


# ---- file types ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet", ".arrow"])
def test_each_file_type(data_dir, suffix):
    root = data_dir({"d": {"file_name": f"d{suffix}"}}, {f"d{suffix}": ALPACA_ROWS})
    ds = load(root, ["d"])
    assert isinstance(ds, Dataset) and len(ds) == 10
    assert ds[3] == {
        "_prompt": [user("q3")],
        "_response": [assistant("a3")],
        "_system": "",
        "_tools": "",
        "_images": None,
        "_videos": None,
        "_audios": None,
        "_dataset": "d",
        "_row": 3,
        "_drop": "",
    }


def test_arrow_file_format_is_read_too(data_dir):
    import pyarrow as pa

    root = data_dir({"d": {"file_name": "d.arrow"}})
    table = pa.Table.from_pylist(ALPACA_ROWS[:2])
    with pa.OSFile(str(root / "d.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    assert load(root, ["d"])["_response"] == [[assistant("a0")], [assistant("a1")]]


def test_txt_is_one_row_per_line(data_dir):
    root = data_dir(
        {"wiki": {"file_name": "wiki.txt", "columns": {"prompt": "text"}}}, {"wiki.txt": "first line\nsecond line\n"}
    )
    ds = load(root, ["wiki"])
    assert ds["_prompt"] == [[user("first line")], [user("second line")]]
    assert ds["_response"] == [[], []]


def test_folder_of_same_typed_files(data_dir):
    files = {"parts/b.jsonl": ALPACA_ROWS[5:], "parts/a.jsonl": ALPACA_ROWS[:5], "parts/.DS_Store": "junk"}
    root = data_dir({"d": {"file_name": "parts"}}, files)
    ds = load(root, ["d"])
    assert [p[0]["content"] for p in ds["_prompt"]] == [f"q{i}" for i in range(10)]  # files in name order


def test_folder_with_mixed_types_is_refused(data_dir):
    root = data_dir(
        {"d": {"file_name": "parts"}},
        {"parts/a.json": ALPACA_ROWS, "parts/b.csv": ALPACA_ROWS, "parts/c.jsonl": ALPACA_ROWS},
    )
    assert error_of(root, ["d"]) == (
        f"Dataset 'd': folder {root / 'parts'} mixes file types (.csv, .json, .jsonl). All files of a folder "
        "must share one type; move the others out or define them as separate datasets."
    )


def test_json_and_jsonl_are_one_type(data_dir):
    root = data_dir({"d": {"file_name": "parts"}}, {"parts/a.json": ALPACA_ROWS[:4], "parts/b.jsonl": ALPACA_ROWS[4:]})
    assert len(load(root, ["d"])) == 10


def test_empty_folder_and_unsupported_type(data_dir):
    root = data_dir({"e": {"file_name": "empty"}, "x": {"file_name": "d.xlsx"}}, {"d.xlsx": "binary"})
    (root / "empty").mkdir()
    assert f"folder {root / 'empty'} has no data files" in error_of(root, ["e"])
    message = error_of(root, ["x"])
    assert (
        f"file {root / 'd.xlsx'} has an unsupported type (.xlsx). Supported: .arrow, .csv, .json, .jsonl, .parquet, .txt"
        in message
    )


def test_missing_file_names_full_path_and_dataset_dir(data_dir):
    root = data_dir({"d": {"file_name": "nope.json"}})
    assert error_of(root, ["d"]) == (
        f"Dataset 'd': file {root / 'nope.json'} not found. `file_name: nope.json` in {root / 'dataset_info.json'} "
        f"is read relative to `dataset_dir` ({root}); fix the name or move the file there."
    )


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        (
            "d.json",
            '[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c" "output": "d"}\n]',
            "line 3, column 23: Expecting ',' delimiter",
        ),
        (
            "d.jsonl",
            '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": }\n',
            "line 2, column 32: Expecting value",
        ),
        ("d.json", '{"instruction": "a", "output": "b"}\n{"instruction": \n', "line 2, column 17: Expecting value"),
        (
            "d.csv",
            "instruction,output\na,b\nc,d,e,f\n",
            "Error tokenizing data. C error: Expected 2 fields in line 3, saw 4",
        ),
        ("d.parquet", "this is not parquet", "Parquet magic bytes not found in footer"),
        ("d.arrow", "not arrow", "d.arrow: "),
        (
            "d.json",
            b'[{"instruction": "caf\xe9", "output": "b"}]',
            "line 1: not UTF-8 text (byte 21); save the file as UTF-8",
        ),
    ],
)
def test_corrupt_files_name_the_file_and_the_problem(data_dir, name, content, expected):
    root = data_dir({"d": {"file_name": name}}, {name: content})
    message = error_of(root, ["d"])
    assert message.startswith(f"Dataset 'd': cannot read {root / name}: ")
    assert expected in message
    assert "Traceback" not in message and "\n" not in message


# ---- columns ------------------------------------------------------------------------------------


def test_missing_column_is_one_clear_error(data_dir):
    rows = [{"conversations": turns(("human", "q"), ("gpt", "a"))}]
    root = data_dir(
        {"chat": {"file_name": "chat.json", "formatting": "sharegpt", "columns": {"messages": "dialog"}}},
        {"chat.json": rows},
    )
    assert error_of(root, ["chat"]) == (
        f"Dataset 'chat' ({root / 'chat.json'}) has no column 'dialog' (mapped as `messages`). Its columns are: "
        f"conversations. Map the right columns in the `columns` of 'chat' in {root / 'dataset_info.json'}, "
        'e.g. "columns": {"messages": "<column>"}.'
    )


def test_missing_column_suggests_the_right_format(data_dir):
    root = data_dir(
        {"a": {"file_name": "a.json", "formatting": "sharegpt"}, "c": {"file_name": "c.json"}},
        {"a.json": ALPACA_ROWS, "c.json": [{"messages": [user("q"), assistant("a")]}]},
    )
    assert 'These look like alpaca columns: remove "formatting"' in error_of(root, ["a"])
    message = error_of(root, ["c"])
    assert "has no column 'instruction' (mapped as `prompt`). Its columns are: messages." in message
    assert 'set "formatting": "sharegpt" (or "openai"), with "columns": {"messages": "messages"}' in message


def test_message_keys_that_do_not_match_tags(data_dir):
    rows = [{"conversations": [user("q"), assistant("a")]}]
    root = data_dir({"chat": {"file_name": "chat.json", "formatting": "sharegpt"}}, {"chat.json": rows})
    message = error_of(root, ["chat"])
    assert message.startswith(
        f"Dataset 'chat' ({root / 'chat.json'}): its messages have the keys role, content, but its tags expect 'from' and 'value'."
    )
    assert '"tags": {"role_tag": "role", "content_tag": "content"' in message


# ---- drops --------------------------------------------------------------------------------------


SHAREGPT_MIXED = [
    {"conversations": turns(("human", "q0"), ("gpt", "a0"))},
    {"conversations": turns(("gpt", "a1"), ("human", "q1"))},  # wrong order
    {"conversations": turns(("human", "q2"), ("gpt", "a2"))},
    {"conversations": turns(("human", "q3"), ("gpt", "a3"), ("human", "q3b"))},  # odd count
    {"conversations": turns(("system", "s4"), ("human", "q4"), ("gpt", "a4"))},
]


def test_bad_rows_are_counted_with_reasons_and_row_numbers(data_dir):
    root = data_dir({"chat": {"file_name": "chat.jsonl", "formatting": "sharegpt"}}, {"chat.jsonl": SHAREGPT_MIXED})
    report = DropReport()
    ds = load(root, ["chat"], report=report)
    assert len(ds) == 3
    assert ds["_row"] == [0, 2, 4]
    assert ds[2]["_system"] == "s4"
    assert report.to_dict()["drops"] == [
        {"dataset": "chat", "stage": "convert", "reason": "invalid_role_order", "count": 1, "rows": [1]},
        {"dataset": "chat", "stage": "convert", "reason": "odd_message_count", "count": 1, "rows": [3]},
    ]
    assert report.summary_lines() == [
        "chat [convert]: dropped 2 of 5 rows: invalid_role_order: 1 row (row 1); odd_message_count: 1 row (row 3)"
    ]


def test_dataset_without_valid_rows_lists_the_reasons(data_dir):
    rows = [SHAREGPT_MIXED[1], SHAREGPT_MIXED[3], SHAREGPT_MIXED[1]]
    root = data_dir({"chat": {"file_name": "chat.json", "formatting": "sharegpt"}}, {"chat.json": rows})
    message = error_of(root, ["chat"])
    assert message.startswith(
        f"Dataset 'chat' ({root / 'chat.json'}) has no valid rows: all 3 rows were dropped (sharegpt format). "
        "Reasons: invalid_role_order: 2 rows (rows 0, 2); odd_message_count: 1 row (row 1)."
    )
    assert "Likely cause: turns must alternate user" in message


def test_roles_that_do_not_match_tags_are_explained(data_dir):
    rows = [{"conversations": [{"from": "user", "value": "q"}, {"from": "assistant", "value": "a"}]}] * 2
    root = data_dir({"chat": {"file_name": "chat.json", "formatting": "sharegpt"}}, {"chat.json": rows})
    message = error_of(root, ["chat"])
    assert "Reasons: unknown_role: 2 rows (rows 0, 1)." in message
    assert "the messages use the roles user, assistant, but its tags name human (user), gpt (assistant)" in message


# ---- sampling -----------------------------------------------------------------------------------


def test_max_samples_keeps_the_first_rows(data_dir):
    root = data_dir({"d": {"file_name": "d.json"}}, {"d.json": ALPACA_ROWS})
    assert load(root, ["d"], max_samples=3)["_row"] == [0, 1, 2]
    assert len(load(root, ["d"], max_samples=100)) == 10


def test_num_samples_downsamples_without_repeats_and_is_seeded(data_dir):
    root = data_dir({"d": {"file_name": "d.json", "num_samples": 4}}, {"d.json": ALPACA_ROWS})
    first = load(root, ["d"], seed=1)
    rows = first["_row"]
    assert len(rows) == 4 and len(set(rows)) == 4
    assert [p[0]["content"] for p in first["_prompt"]] == [f"q{r}" for r in rows]  # provenance is the source row
    assert load(root, ["d"], seed=1)["_row"] == rows
    assert load(root, ["d"], seed=2)["_row"] != rows
    assert load(root, ["d"], seed=1, max_samples=2)["_row"] == rows[:2]  # max_samples after num_samples


def test_num_samples_upsamples_with_replacement(data_dir):
    root = data_dir({"d": {"file_name": "d.json", "num_samples": 25}}, {"d.json": ALPACA_ROWS})
    rows = load(root, ["d"], seed=3)["_row"]
    assert len(rows) == 25
    assert set(rows[:10]) == set(range(10))  # every row once, then random extras
    assert sum(Counter(rows).values()) == 25 and max(Counter(rows).values()) >= 2
    assert load(root, ["d"], seed=3)["_row"] == rows


# ---- mixing -------------------------------------------------------------------------------------


def two_datasets(data_dir):
    a = [{"instruction": f"a{i}", "output": "x"} for i in range(6)]
    b = [{"instruction": f"b{i}", "output": "y"} for i in range(2)]
    return data_dir({"a": {"file_name": "a.json"}, "b": {"file_name": "b.json"}}, {"a.json": a, "b.json": b})


def names_of(ds):
    return [p[0]["content"] for p in ds["_prompt"]]


def test_concat_is_the_default(data_dir):
    root = two_datasets(data_dir)
    ds = load(root, ["a", "b"])
    assert names_of(ds) == ["a0", "a1", "a2", "a3", "a4", "a5", "b0", "b1"]
    assert ds["_dataset"] == ["a"] * 6 + ["b"] * 2


def test_interleave_under_stops_at_the_first_exhausted(data_dir):
    root = two_datasets(data_dir)
    ds = load(root, ["a", "b"], mix_strategy="interleave_under")
    assert names_of(ds) == ["a0", "b0", "a1", "b1"]
    probs = load(root, ["a", "b"], mix_strategy="interleave_under", interleave_probs=[0.5, 0.5], seed=0)
    assert names_of(probs) == names_of(
        load(root, ["a", "b"], mix_strategy="interleave_under", interleave_probs=[0.5, 0.5], seed=0)
    )
    assert set(names_of(probs)) >= {"b0", "b1"}


def test_interleave_over_repeats_until_all_are_exhausted(data_dir):
    root = two_datasets(data_dir)
    ds = load(root, ["a", "b"], mix_strategy="interleave_over")
    assert names_of(ds) == ["a0", "b0", "a1", "b1", "a2", "b0", "a3", "b1", "a4", "b0", "a5", "b1"]
    probs = names_of(load(root, ["a", "b"], mix_strategy="interleave_over", interleave_probs=[0.2, 0.8], seed=0))
    assert {f"a{i}" for i in range(6)} <= set(probs)


def test_interleave_once_uses_every_row_once(data_dir):
    root = two_datasets(data_dir)
    ds = load(root, ["a", "b"], mix_strategy="interleave_once", interleave_probs=[0.5, 0.5], seed=0)
    assert sorted(names_of(ds)) == ["a0", "a1", "a2", "a3", "a4", "a5", "b0", "b1"]


# ---- splits -------------------------------------------------------------------------------------


def test_val_size_fraction_and_count(data_dir):
    root = data_dir({"d": {"file_name": "d.json"}}, {"d.json": ALPACA_ROWS})
    data_args = DataArguments(dataset=["d"], dataset_dir=str(root), val_size=0.2)
    splits = get_aligned_splits(data_args, seed=42)
    assert set(splits) == {"train", "validation"}
    assert (len(splits["train"]), len(splits["validation"])) == (8, 2)
    assert sorted(list(splits["train"]["_row"]) + list(splits["validation"]["_row"])) == list(range(10))
    again = get_aligned_splits(data_args, seed=42)
    assert list(again["validation"]["_row"]) == list(splits["validation"]["_row"])

    data_args.val_size = 3
    splits = get_aligned_splits(data_args, seed=42)
    assert (len(splits["train"]), len(splits["validation"])) == (7, 3)


@pytest.mark.parametrize(
    ("val_size", "expected"),
    [
        (2.5, "val_size 2.5 is neither a fraction below 1 nor a whole number of rows."),
        (
            10,
            "val_size 10 would hold out 10 of 10 rows; it must leave at least one row for evaluation and one for training.",
        ),
        (0.05, "val_size 0.05 would hold out 0 of 10 rows"),
    ],
)
def test_val_size_errors(val_size, expected):
    dataset = Dataset.from_dict({"x": list(range(10))})
    with pytest.raises(UserError) as info:
        split_train_eval(dataset, DataArguments(val_size=val_size), seed=0)
    assert str(info.value).startswith(expected)


def test_eval_dataset_and_eval_on_each_dataset(data_dir):
    root = two_datasets(data_dir)
    data_args = DataArguments(dataset=["a"], eval_dataset=["a", "b"], dataset_dir=str(root))
    splits = get_aligned_splits(data_args)
    assert set(splits) == {"train", "validation"}
    assert (len(splits["train"]), len(splits["validation"])) == (6, 8)
    data_args.eval_on_each_dataset = True
    splits = get_aligned_splits(data_args)
    assert set(splits) == {"train", "validation_a", "validation_b"}
    assert splits["validation_b"]["_dataset"] == ["b", "b"]


# ---- streaming ----------------------------------------------------------------------------------


def test_streaming_shuffles_with_buffer_and_splits_by_count(data_dir):
    root = data_dir(
        {"d": {"file_name": "d.jsonl"}}, {"d.jsonl": [{"instruction": f"q{i}", "output": "a"} for i in range(20)]}
    )
    data_args = DataArguments(dataset=["d"], dataset_dir=str(root), streaming=True, buffer_size=8, val_size=5)
    splits = get_aligned_splits(data_args, seed=0)
    assert isinstance(splits["train"], IterableDataset) and isinstance(splits["validation"], IterableDataset)
    validation = [r["_row"] for r in splits["validation"]]
    train = [r["_row"] for r in splits["train"]]
    assert len(validation) == 5 and len(train) == 15
    assert sorted(validation + train) == list(range(20))
    assert train + validation != list(range(20)) and validation != [0, 1, 2, 3, 4]  # shuffled
    assert [r["_row"] for r in get_aligned_splits(data_args, seed=0)["validation"]] == validation

    data_args.val_size = 0
    only = get_aligned_splits(data_args, seed=0)
    assert set(only) == {"train"} and sorted(r["_row"] for r in only["train"]) == list(range(20))

    data_args.val_size = 0.25
    with pytest.raises(UserError, match="val_size 0.25 is a fraction, but a streamed dataset has no known length"):
        get_aligned_splits(data_args)


def test_streaming_counts_drops_lazily_and_takes_max_samples(data_dir):
    root = data_dir(
        {"chat": {"file_name": "chat.jsonl", "formatting": "sharegpt", "num_samples": 2}},
        {"chat.jsonl": SHAREGPT_MIXED},
    )
    report = DropReport()
    ds = load(root, ["chat"], report=report, streaming=True)
    assert isinstance(ds, IterableDataset)
    assert [r["_row"] for r in ds] == [0, 2, 4]  # num_samples is ignored when streaming
    assert report.rows("chat", "invalid_role_order") == [1] and report.rows("chat", "odd_message_count") == [3]
    limited = load(root, ["chat"], streaming=True, max_samples=3)
    assert [r["_row"] for r in limited] == [0, 2]


def test_streaming_interleave(data_dir):
    root = two_datasets(data_dir)
    ds = load(root, ["a", "b"], streaming=True, mix_strategy="interleave_under")
    assert [r["_prompt"][0]["content"] for r in ds] == ["a0", "b0", "a1", "b1"]


# ---- other sources ------------------------------------------------------------------------------


def test_hub_dataset_offline_is_a_clear_error(data_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = data_dir({"remote": {"hf_hub_url": "lmforge-tests/not-cached"}})
    message = error_of(root, ["remote"])
    assert message.startswith(
        "Cannot load 'lmforge-tests/not-cached' (dataset 'remote') from the Hugging Face Hub: offline mode is on"
    )
    assert "Download it once with network access (unset HF_HUB_OFFLINE)" in message


def test_script_url_folder_of_data_files(data_dir):
    root = data_dir({"local": {"script_url": "local_ds"}}, {"local_ds/train.jsonl": ALPACA_ROWS[:3]})
    assert load(root, ["local"])["_row"] == [0, 1, 2]


def test_modelscope_and_openmind_need_their_libraries(data_dir):
    pytest.importorskip("datasets")
    root = data_dir({"ms": {"ms_hub_url": "org/ms"}, "om": {"om_hub_url": "org/om"}})
    try:
        import modelscope  # noqa: F401
    except ImportError:
        assert "is read from ModelScope ('org/ms'), which needs `pip install modelscope`" in error_of(root, ["ms"])
    try:
        import openmind  # noqa: F401
    except ImportError:
        assert "is read from OpenMind ('org/om'), which needs `pip install openmind`" in error_of(root, ["om"])


def test_cloud_file_needs_a_cloud_url(data_dir):
    root = data_dir({"c": {"cloud_file_name": "ftp://host/data.json"}})
    assert error_of(root, ["c"]).startswith(
        "Dataset 'c': cloud_file_name 'ftp://host/data.json' must start with s3:// or gs://."
    )


def test_stage_and_ranking_must_agree(data_dir):
    rows = [
        {
            "conversations": turns(("human", "q")),
            "chosen": {"from": "gpt", "value": "g"},
            "rejected": {"from": "gpt", "value": "b"},
        }
    ]
    entry = {
        "file_name": "p.json",
        "formatting": "sharegpt",
        "ranking": True,
        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
    }
    root = data_dir({"pref": entry, "plain": {"file_name": "d.json"}}, {"p.json": rows, "d.json": ALPACA_ROWS})
    assert load(root, ["pref"], stage="dpo")[0]["_response"] == [assistant("g"), assistant("b")]
    assert "is preference data (`ranking: true`" in error_of(root, ["pref"], stage="sft")
    with pytest.raises(UserError, match="Stage 'rm' needs preference data, but dataset 'plain'"):
        load(root, ["plain"], stage="rm")


def test_media_paths_resolve_against_media_dir(data_dir, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    (media / "cat.jpg").write_bytes(b"jpg")
    rows = [{"messages": [user("<image>What is it?"), assistant("A cat.")], "images": ["cat.jpg"]}]
    entry = {"file_name": "mm.json", "formatting": "openai", "columns": {"messages": "messages", "images": "images"}}
    root = data_dir({"mm": entry}, {"mm.json": rows})
    assert load(root, ["mm"], media_dir=str(media))[0]["_images"] == [str(media / "cat.jpg")]
    assert load(root, ["mm"])[0]["_images"] == ["cat.jpg"]  # not in dataset_dir: kept as given


# ---- the bundled demo data (LLaMA-Factory's layout) ------------------------------------------------------------------


def test_identity_and_alpaca_en_demo(bundled_data):
    report = DropReport()
    ds = load(bundled_data, ["identity", "alpaca_en_demo"], report=report)
    identity = json.loads((bundled_data / "identity.json").read_text(encoding="utf-8"))
    alpaca = json.loads((bundled_data / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    assert len(ds) == len(identity) + len(alpaca)
    assert ds[0] == {
        "_prompt": [user("hi")],
        "_response": [
            assistant("Hi there! I'm {{name}}, an AI assistant built by {{author}}. What can I do for you?")
        ],
        "_system": "",
        "_tools": "",
        "_images": None,
        "_videos": None,
        "_audios": None,
        "_dataset": "identity",
        "_row": 0,
        "_drop": "",
    }
    first = alpaca[0]
    prompt = "\n".join(part for part in (first["instruction"], first["input"]) if part)
    assert ds[len(identity)]["_prompt"] == [user(prompt)]
    assert ds[len(identity)]["_response"] == [assistant(first["output"])]
    assert ds[len(identity)]["_dataset"] == "alpaca_en_demo" and ds[len(identity)]["_row"] == 0
    assert report.count() == 0


def test_dataset_info_given_as_a_dict(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ALPACA_ROWS[:2]))
    info = {"mine": {"file_name": str(path)}, "gone": {"file_name": str(tmp_path / "gone.json")}}
    data_args = DataArguments(dataset_dir=info)
    assert load_aligned_datasets(data_args, ["mine"])["_row"] == [0, 1]
    with pytest.raises(UserError) as info:
        load_aligned_datasets(data_args, ["gone"])
    assert str(info.value) == (
        f"Dataset 'gone': file {tmp_path / 'gone.json'} not found (`file_name` in the dataset_info dict); fix the path."
    )


def test_several_worker_processes_give_the_same_rows(data_dir):
    rows = [{"conversations": turns(("human", f"q{i}"), ("gpt" if i % 7 else "human", "a"))} for i in range(40)]
    root = data_dir({"c": {"file_name": "c.json", "formatting": "sharegpt", "num_samples": 30}}, {"c.json": rows})
    one, two = DropReport(), DropReport()
    serial = load(root, ["c"], seed=5, report=one)
    parallel = load(root, ["c"], seed=5, report=two, preprocessing_num_workers=2, overwrite_cache=True)
    assert list(parallel["_row"]) == list(serial["_row"])
    assert all(r % 7 for r in serial["_row"])
    assert two.to_dict() == one.to_dict() and one.count("c", "invalid_role_order") > 0

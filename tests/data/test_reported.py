"""Nothing is ignored in silence: what a user who made a common data mistake sees, everywhere it shows.

Each test writes the dataset_info.json and the data file the user wrote, then asserts the exact
lines of `lmforge data check` (text and --json), `lmforge data preview` and the training log.
Prediction is tested in tests/eval/test_predict.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from lmforge.config import parse_config
from lmforge.data.pipeline import get_dataset
from lmforge.data.reasons import explain
from lmforge.model.tokenizer import load_tokenizer_and_template
from tests.data.test_inspect import ASSISTANT, USER, run

# ---- helpers ------------------------------------------------------------------------------------


@pytest.fixture()
def base(tiny_llama_dir) -> list[str]:
    return [f"model_name_or_path={tiny_llama_dir}", "template=llama3", "cutoff_len=64"]


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def training_log(base: list[str], *settings: str) -> list[str]:
    """The warnings `lmforge train` logs while it prepares the data (`get_dataset`, as training calls it)."""
    cfg = parse_config("train", [*base, "stage=sft", "do_train=true", "output_dir=unused", *settings])
    tokenizer, template = load_tokenizer_and_template(cfg.model, cfg.data)
    handler = _Lines()
    logger = logging.getLogger("lmforge.data")
    logger.addHandler(handler)
    try:
        get_dataset(cfg, tokenizer, template, stage="sft")
    finally:
        logger.removeHandler(handler)
    return handler.lines


def section(out: str, title: str) -> list[str]:
    """The lines of one section of the `data check` report (up to the next blank line)."""
    lines = out.splitlines()
    start = lines.index(title) + 1
    end = lines.index("", start) if "" in lines[start:] else len(lines)
    return lines[start:end]


# ---- item 1: a `columns` object that leaves a column of the file unread --------------------------

IDENTITY_ROWS = [
    {"instruction": "Who are you?", "input": "", "output": "I am Orbit."},
    {"instruction": "Translate", "input": "bonjour", "output": "hello"},
]
CUSTOM = {"identity_custom": {"file_name": "x.json", "columns": {"prompt": "instruction", "response": "output"}}}


def unread_line(root: Path) -> str:
    return (
        f"identity_custom: column 'input' of {root / 'x.json'} is not read (its `columns` mapping names prompt, "
        'response; add "query": "input" to read it)'
    )


def test_an_unread_column_is_reported_by_check(capsys, base, data_dir):
    root = data_dir(CUSTOM, {"x.json": IDENTITY_ROWS})
    code, out, _ = run(capsys, "check", *base, "dataset=identity_custom", f"dataset_dir={root}")
    assert code == 0  # a warning, not a drop
    assert section(out, "Warnings:") == [f"  {unread_line(root)}"]
    assert section(out, "What the reasons mean (the table in data/README.md):") == [f"  {explain('unread_column')}"]

    code, out, _ = run(capsys, "check", *base, "dataset=identity_custom", f"dataset_dir={root}", "--json")
    result = json.loads(out)
    assert result["unread_columns"] == [
        {"dataset": "identity_custom", "column": "input", "source": str(root / "x.json"), "message": unread_line(root)}
    ]
    assert (result["dropped_total"], result["warnings_total"]) == (0, 0)
    assert list(result["reasons"]) == ["unread_column"]


def test_an_unread_column_is_reported_by_preview_and_the_fix_reads_it(capsys, base, data_dir):
    root = data_dir(CUSTOM, {"x.json": IDENTITY_ROWS})
    code, out, _ = run(capsys, "preview", *base, "dataset=identity_custom", f"dataset_dir={root}", "--num", "2")
    assert code == 0
    assert f"{USER}Translate<|eot_id|>" in out  # the input is not in the prompt
    assert out.splitlines()[-5:] == [
        "Summary: 2 samples shown: 2 kept (0 with warnings), 0 dropped.",
        "No row before them was skipped.",
        "Columns not read:",
        f"  {unread_line(root)}",
        "`lmforge data check` checks every row and explains each reason.",
    ]
    code, out, _ = run(capsys, "preview", *base, "dataset=identity_custom", f"dataset_dir={root}", "--json")
    assert [u["message"] for u in json.loads(out)["unread_columns"]] == [unread_line(root)]

    # The fix the message gives: the input is read, and nothing is reported any more.
    fixed = {"identity_custom": {**CUSTOM["identity_custom"], "columns": {
        "prompt": "instruction", "response": "output", "query": "input"}}}
    root = data_dir(fixed, {"x.json": IDENTITY_ROWS})
    code, out, _ = run(capsys, "preview", *base, "dataset=identity_custom", f"dataset_dir={root}", "--num", "2")
    assert f"{USER}Translate\nbonjour<|eot_id|>" in out
    assert "Columns not read:" not in out


def test_an_unread_column_is_in_the_training_log(base, data_dir):
    root = data_dir(CUSTOM, {"x.json": IDENTITY_ROWS})
    assert training_log(base, "dataset=identity_custom", f"dataset_dir={root}") == [unread_line(root)]


@pytest.mark.parametrize(
    ("entry", "rows", "settings", "expected"),
    [
        # No `columns`: the defaults are read, and the fix must repeat them (a mapping replaces them all).
        ({"formatting": "sharegpt"},
         [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}], "system": "Be kind.",
           "id": 7}],
         [],
         ["column 'system' of {file} is not read (without a `columns` mapping the entry reads only its default column "
          'conversations; add "columns": {{"messages": "conversations", "system": "system"}} to the entry to read it)',
          "column 'id' of {file} is not read (without a `columns` mapping the entry reads only its default column "
          "conversations; if it is part of the conversation, map it with one of system, tools)"]),
        # alpaca defaults: only the default columns the file has go into the suggested mapping.
        ({},
         [{"instruction": "hi", "output": "yo", "system": "Be kind."}],
         [],
         ["column 'system' of {file} is not read (without a `columns` mapping the entry reads only its default "
          'columns instruction, input, output; add "columns": {{"prompt": "instruction", "response": "output", '
          '"system": "system"}} to the entry to read it)']),
        # Preference columns are read only with "ranking": true.
        ({"columns": {"prompt": "instruction", "response": "output", "chosen": "chosen"}},
         [{"instruction": "hi", "output": "yo", "chosen": "better"}],
         [],
         ["column 'chosen' of {file} is not read (it is mapped as `chosen`, which is only read with "
          '"ranking": true)']),
        # Stage pt trains on the prompt text only.
        ({}, [{"instruction": "Rivers shape the land.", "output": "yes"}], ["stage=pt"],
         ["column 'output' of {file} is not read (stage pt trains on the `prompt` and `query` text only, "
          "not on `response`)"]),
    ],
    ids=["sharegpt-defaults", "alpaca-defaults", "chosen-without-ranking", "pt"],
)
def test_unread_columns_of_other_mappings(capsys, base, data_dir, entry, rows, settings, expected):
    root = data_dir({"d": {"file_name": "d.json", **entry}}, {"d.json": rows})
    code, out, _ = run(capsys, "check", *base, "dataset=d", f"dataset_dir={root}", *settings, "--json")
    assert code == 0
    file = root / "d.json"
    assert [u["message"] for u in json.loads(out)["unread_columns"]] == [
        f"d: {line.format(file=file)}" for line in expected
    ]


def test_files_whose_columns_are_all_read_report_nothing(capsys, base, data_dir):
    rows = [{"instruction": "hi", "input": "there", "output": "yo"}]
    root = data_dir({"d": {"file_name": "d.json"}}, {"d.json": rows})
    code, out, _ = run(capsys, "check", *base, "dataset=d", f"dataset_dir={root}", "--json")
    assert (code, json.loads(out)["unread_columns"]) == (0, [])


# ---- item 2: rows that train on nothing, or cannot be read --------------------------------------

NOTES_ROWS = [
    {"instruction": "Say hi", "input": "", "output": "Hi"},  # 0 kept
    {"instruction": "Say nothing", "input": "", "output": ""},  # 1 kept: empty_response
    {"input": "", "output": "An answer to nothing"},  # 2 kept: empty_prompt (no instruction)
    {"instruction": "No answer here", "input": ""},  # 3 dropped: missing_response
    {"instruction": "Two answers", "input": "", "output": ["a", "b"]},  # 4 dropped: invalid_response
    {"instruction": "Say bye", "input": "", "output": "Bye"},  # 5 kept
]
NOTES_DROPS = [
    "notes [convert]: dropped 1 of 6 rows: invalid_response: 1 row (row 4)",
    "notes [tokenize]: dropped 1 of 5 rows: missing_response: 1 row (row 3)",
]
NOTES_WARNINGS = [
    "notes [tokenize]: kept rows with warnings: empty_response: 1 row (row 1); empty_prompt: 1 row (row 2)"
]


@pytest.fixture()
def notes(data_dir) -> Path:
    return data_dir({"notes": {"file_name": "notes.json"}}, {"notes.json": NOTES_ROWS})


def test_check_reports_each_drop_and_warning_by_reason(capsys, base, notes):
    code, out, _ = run(capsys, "check", *base, "dataset=notes", f"dataset_dir={notes}")
    assert code == 1
    assert section(out, "Rows:") == ["  notes: 6 loaded, 4 kept, 2 dropped"]
    assert section(out, "Dropped rows:") == [f"  {line}" for line in NOTES_DROPS]
    assert section(out, "Warnings:") == [f"  {line}" for line in NOTES_WARNINGS]
    assert section(out, "What the reasons mean (the table in data/README.md):") == [
        f"  {explain(code)}" for code in ("invalid_response", "missing_response", "empty_response", "empty_prompt")
    ]
    assert "invalid_turns" not in out


def test_check_json_lists_drops_and_warnings(capsys, base, notes):
    code, out, _ = run(capsys, "check", *base, "dataset=notes", f"dataset_dir={notes}", "--json")
    assert code == 1
    result = json.loads(out)
    assert result["datasets"] == {"notes": {"rows": 6, "dropped": 2, "warnings": 2}}
    assert result["drops"] == [
        {"dataset": "notes", "stage": "convert", "reason": "invalid_response", "count": 1, "rows": [4]},
        {"dataset": "notes", "stage": "tokenize", "reason": "missing_response", "count": 1, "rows": [3]},
    ]
    assert result["warnings"] == [
        {"dataset": "notes", "stage": "tokenize", "reason": "empty_response", "count": 1, "rows": [1]},
        {"dataset": "notes", "stage": "tokenize", "reason": "empty_prompt", "count": 1, "rows": [2]},
    ]
    assert (result["dropped_total"], result["warnings_total"]) == (2, 2)
    assert result["splits"]["train"]["samples"] == 4


def test_preview_marks_each_sample_and_sums_up_what_it_skipped(capsys, base, notes):
    code, out, _ = run(capsys, "preview", *base, "dataset=notes", f"dataset_dir={notes}", "--num", "5")
    assert code == 0
    assert out == (
        "Template: llama3   cutoff_len: 64   (trained text inside [[ ]])\n"
        "\n--- sample 1: notes row 0 (21 tokens, 2 trained) ---\n"
        f"<|begin_of_text|>{USER}Say hi<|eot_id|>{ASSISTANT}[[Hi<|eot_id|>]]\n"
        "\n--- sample 2: notes row 1 (20 tokens, 1 trained; warning: empty_response) ---\n"
        f"<|begin_of_text|>{USER}Say nothing<|eot_id|>{ASSISTANT}[[<|eot_id|>]]\n"
        "\n--- sample 3: notes row 2 (21 tokens, 6 trained; warning: empty_prompt) ---\n"
        f"<|begin_of_text|>{USER}<|eot_id|>{ASSISTANT}[[An answer to nothing<|eot_id|>]]\n"
        "\n--- sample 4: notes row 3 (dropped: missing_response) ---\n\n"
        "\n--- sample 5: notes row 5 (23 tokens, 4 trained) ---\n"
        f"<|begin_of_text|>{USER}Say bye<|eot_id|>{ASSISTANT}[[Bye<|eot_id|>]]\n"
        "\nSummary: 5 samples shown: 4 kept (2 with warnings: empty_response, empty_prompt), 1 dropped "
        "(missing_response).\n"
        "Skipped 1 row before them, dropped when read:\n"
        "  notes [convert]: dropped 1 row: invalid_response: 1 row (row 4)\n"
        "`lmforge data check` checks every row and explains each reason.\n"
    )
    code, out, _ = run(capsys, "preview", *base, "dataset=notes", f"dataset_dir={notes}", "--num", "5", "--json")
    result = json.loads(out)
    assert [(s["row"], s["dropped"], s["warnings"]) for s in result["samples"]] == [
        (0, None, []), (1, None, ["empty_response"]), (2, None, ["empty_prompt"]), (3, "missing_response", []),
        (5, None, []),
    ]
    assert result["skipped"] == [
        {"dataset": "notes", "stage": "convert", "reason": "invalid_response", "count": 1, "rows": [4]}
    ]


def test_preview_says_nothing_was_skipped_after_the_last_sample(capsys, base, notes):
    # Row 4 (invalid) comes after the rows shown: it was not passed over, so it is not "skipped".
    code, out, _ = run(capsys, "preview", *base, "dataset=notes", f"dataset_dir={notes}", "--num", "2")
    assert code == 0
    assert out.splitlines()[-3:-1] == [
        "Summary: 2 samples shown: 2 kept (1 with warnings: empty_response), 0 dropped.",
        "No row before them was skipped.",
    ]


def test_the_training_log_has_every_drop_and_warning(base, notes):
    assert training_log(base, "dataset=notes", f"dataset_dir={notes}") == NOTES_DROPS + NOTES_WARNINGS


def test_packing_keeps_the_warnings_of_the_packed_samples(base, notes):
    # The same lines as without packing: "of 5" counts the rows read, not the packed blocks.
    assert training_log(base, "dataset=notes", f"dataset_dir={notes}", "packing=true") == NOTES_DROPS + NOTES_WARNINGS


def test_check_of_a_prediction_config_judges_the_eval_split_as_prediction_does(capsys, base, notes):
    code, out, _ = run(capsys, "check", *base, "eval_dataset=notes", f"dataset_dir={notes}", "do_predict=true",
                       "predict_with_generate=true")
    assert code == 1
    assert section(out, "Dropped rows:") == [
        "  notes [convert]: dropped 1 of 6 rows: invalid_response: 1 row (row 4)",
        "  notes [predict]: dropped 3 of 5 rows: empty_response: 1 row (row 1); empty_prompt: 1 row (row 2); "
        "missing_response: 1 row (row 3)",
    ]
    assert section(out, "Warnings:") == ["  none"]
    assert out.splitlines()[-1] == "  2 validation samples after tokenization"


def test_pt_drops_blank_text_instead_of_training_on_the_end_token(capsys, base, data_dir):
    rows = [{"text": "Rivers shape the land."}, {"text": "  "}, {"text": ""}]
    root = data_dir({"corpus": {"file_name": "c.json", "columns": {"prompt": "text"}}}, {"c.json": rows})
    code, out, _ = run(capsys, "check", *base, "dataset=corpus", f"dataset_dir={root}", "stage=pt", "--json")
    assert code == 1
    assert json.loads(out)["drops"] == [
        {"dataset": "corpus", "stage": "tokenize", "reason": "empty_text", "count": 2, "rows": [1, 2]}
    ]


def test_preview_of_a_prediction_config_shows_prompts_and_what_prediction_drops(capsys, base, notes):
    code, out, _ = run(capsys, "preview", *base, "eval_dataset=notes", f"dataset_dir={notes}", "do_predict=true",
                       "predict_with_generate=true", "--split", "eval", "--num", "3")
    assert code == 0
    assert out == (
        "Template: llama3   cutoff_len: 64   (the reference answer inside [[ ]])\n"
        "\n--- sample 1: notes row 0 (19 tokens) ---\n"
        f"<|begin_of_text|>{USER}Say hi<|eot_id|>{ASSISTANT}[[Hi<|eot_id|>]]\n"
        "\n--- sample 2: notes row 1 (dropped: empty_response) ---\n\n"
        "\n--- sample 3: notes row 2 (dropped: empty_prompt) ---\n\n"
        "\nSummary: 3 samples shown: 1 kept (0 with warnings), 2 dropped (empty_response, empty_prompt).\n"
        "No row before them was skipped.\n"
        "`lmforge data check` checks every row and explains each reason.\n"
    )

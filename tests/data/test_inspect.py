"""`lmforge data preview` and `lmforge data check`: exact output, exit codes, JSON and error texts.

The commands run in-process through `lmforge.cli.main` (a subprocess costs ~8 s of imports each);
one test runs the real process to prove that a user error prints one line and no traceback.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.data.reasons import explain
from lmforge.utils.logging import get_logger
from tests.conftest import DATA_DIR, REPO_ROOT

SHAREGPT = {"formatting": "sharegpt", "columns": {"messages": "conversations"}}
USER = "<|start_header_id|>user<|end_header_id|>\n\n"
ASSISTANT = "<|start_header_id|>assistant<|end_header_id|>\n\n"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `lmforge data ...`."""
    # lmforge's log handler keeps the sys.stderr it was made with, which may be an earlier test's
    # capture, closed since: let it write to this call's stderr. (setStream would flush the closed one.)
    handlers = [h for h in get_logger("lmforge").handlers if type(h) is logging.StreamHandler]
    streams = [h.stream for h in handlers]
    for handler in handlers:
        handler.stream = sys.stderr
    try:
        code = main(["data", *argv])
    finally:
        for handler, stream in zip(handlers, streams, strict=True):
            handler.stream = stream
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_lines(err: str) -> list[str]:
    """The `lmforge data: error:` lines of stderr (the rest is logging and progress bars)."""
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("lmforge data: error:")]


def turns(*messages: str) -> list[dict[str, str]]:
    """A sharegpt conversation alternating human, gpt, human, ... from the given texts."""
    return [{"from": ("human", "gpt")[i % 2], "value": text} for i, text in enumerate(messages)]


CHAT_ROWS = [
    {"conversations": turns("hi", "hello")},  # 0: 21 tokens
    {"conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]},  # 1: invalid_role_order
    {"conversations": turns("a", "b", "c")},  # 2: odd_message_count
    {"conversations": turns("tell me", "word " * 30)},  # 3: 51 tokens
    {"conversations": turns("ok", "fine")},  # 4: 19 tokens
    {"conversations": turns("count", "one two three four five six seven eight nine ten")},  # 5: 28 tokens
]
NOTES_ROWS = [{"instruction": "note", "output": "kept"}, {"instruction": "again", "output": "also kept"}]


@pytest.fixture()
def small_data(data_dir) -> Path:
    """`chat` (sharegpt, rows 1 and 2 invalid, row 3 long) and `notes` (alpaca, all valid)."""
    info = {"chat": {"file_name": "chat.json", **SHAREGPT}, "notes": {"file_name": "notes.json"}}
    return data_dir(info, {"chat.json": CHAT_ROWS, "notes.json": NOTES_ROWS})


@pytest.fixture()
def base(tiny_llama_dir) -> list[str]:
    return [f"model_name_or_path={tiny_llama_dir}", "template=llama3"]


# ---- preview ------------------------------------------------------------------------------------

PREVIEW_IDENTITY = """\
Template: llama3   cutoff_len: 64   (trained text inside [[ ]])

--- sample 1: identity row 0 (41 tokens, 24 trained) ---
<|begin_of_text|><|start_header_id|>user<|end_header_id|>

hi<|eot_id|><|start_header_id|>assistant<|end_header_id|>

[[Hi there! I'm {{name}}, an AI assistant built by {{author}}. What can I do for you?<|eot_id|>]]

--- sample 2: identity row 1 (34 tokens, 18 trained) ---
<|begin_of_text|><|start_header_id|>user<|end_header_id|>

你好<|eot_id|><|start_header_id|>assistant<|end_header_id|>

[[你好！我是{{name}}，由{{author}}开发的人工智能助手。请问有什么可以帮你？<|eot_id|>]]

Summary: 2 samples shown: 2 kept (0 with warnings), 0 dropped.
No row before them was skipped.
`lmforge data check` checks every row and explains each reason.
"""


def test_preview_renders_the_first_samples_with_the_trained_text_marked(capsys, base):
    code, out, _ = run(capsys, "preview", *base, "dataset=identity", f"dataset_dir={DATA_DIR}", "cutoff_len=64",
                       "--num", "2")
    assert code == 0
    assert out == PREVIEW_IDENTITY


def test_preview_json_has_one_entry_per_sample(capsys, base, llama_tokenizer):
    code, out, _ = run(capsys, "preview", *base, "dataset=identity", f"dataset_dir={DATA_DIR}", "cutoff_len=64",
                       'placeholders={"name":"ForgeBot","author":"Team"}', "--json", "--num=2")
    assert code == 0
    result = json.loads(out)
    assert list(result) == ["template", "samples", "skipped", "unread_columns"]
    assert result["template"] == "llama3"
    assert (result["skipped"], result["unread_columns"]) == ([], [])
    assert [sorted(sample) for sample in result["samples"]] == [
        ["dataset", "dropped", "row", "text", "tokens", "trained_tokens", "warnings"]
    ] * 2
    assert result["samples"][0] == {
        "dataset": "identity",
        "row": 0,
        "dropped": None,
        "warnings": [],
        "tokens": 45,
        "trained_tokens": 28,
        "text": f"<|begin_of_text|>{USER}hi<|eot_id|>{ASSISTANT}"
        "[[Hi there! I'm ForgeBot, an AI assistant built by Team. What can I do for you?<|eot_id|>]]",
    }
    assert [(s["row"], s["tokens"], s["trained_tokens"]) for s in result["samples"]] == [(0, 45, 28), (1, 35, 19)]
    # The trained tokens are the answer's and its <|eot_id|>.
    answer = "Hi there! I'm ForgeBot, an AI assistant built by Team. What can I do for you?"
    assert len(llama_tokenizer(answer, add_special_tokens=False)["input_ids"]) + 1 == 28


def test_preview_skips_rows_that_fail_conversion(capsys, base, small_data):
    # Rows 1 and 2 are invalid: the preview still shows --num valid samples, and a dropped one says why.
    code, out, _ = run(capsys, "preview", *base, "dataset=chat", f"dataset_dir={small_data}", "cutoff_len=24",
                       "drop_overlong=true", "--num", "3")
    assert code == 0
    assert out == (
        "Template: llama3   cutoff_len: 24   (trained text inside [[ ]])\n"
        "\n--- sample 1: chat row 0 (21 tokens, 4 trained) ---\n"
        f"<|begin_of_text|>{USER}hi<|eot_id|>{ASSISTANT}[[hello<|eot_id|>]]\n"
        "\n--- sample 2: chat row 3 (dropped: too_long) ---\n\n"
        "\n--- sample 3: chat row 4 (19 tokens, 3 trained) ---\n"
        f"<|begin_of_text|>{USER}ok<|eot_id|>{ASSISTANT}[[fine<|eot_id|>]]\n"
        "\nSummary: 3 samples shown: 2 kept (0 with warnings), 1 dropped (too_long).\n"
        "Skipped 2 rows before them, dropped when read:\n"
        "  chat [convert]: dropped 2 rows: invalid_role_order: 1 row (row 1); odd_message_count: 1 row (row 2)\n"
        "`lmforge data check` checks every row and explains each reason.\n"
    )


def test_preview_when_the_first_rows_are_all_invalid(capsys, base, data_dir):
    rows = [{"conversations": turns("a", "b", "c")}, {"conversations": turns("d")}, *CHAT_ROWS[:1]]
    root = data_dir({"late": {"file_name": "late.json", **SHAREGPT}}, {"late.json": rows})
    code, out, _ = run(capsys, "preview", *base, "dataset=late", f"dataset_dir={root}", "--json", "--num", "1")
    assert code == 0
    assert [(s["dataset"], s["row"], s["tokens"]) for s in json.loads(out)["samples"]] == [("late", 2, 21)]


def test_preview_keeps_the_max_samples_of_the_config(capsys, base, small_data):
    # Only rows 0-2 are read, and row 0 is their only valid one.
    code, out, _ = run(capsys, "preview", *base, "dataset=chat", f"dataset_dir={small_data}", "max_samples=3",
                       "--json", "--num", "3")
    assert code == 0
    assert [s["row"] for s in json.loads(out)["samples"]] == [0]


def test_preview_eval_split(capsys, base):
    code, out, _ = run(capsys, "preview", *base, "dataset=identity", f"dataset_dir={DATA_DIR}",
                       "eval_dataset=alpaca_en_demo,alpaca_zh_demo", "eval_on_each_dataset=true",
                       "--split", "eval", "--num", "1", "--json")
    assert code == 0
    (sample,) = json.loads(out)["samples"]
    assert (sample["dataset"], sample["row"]) == ("alpaca_en_demo", 0)
    assert sample["text"].startswith(f"<|begin_of_text|>{USER}What is the capital of Australia?<|eot_id|>")


def test_preview_eval_split_without_one_is_an_error(capsys, base):
    code, out, err = run(capsys, "preview", *base, "dataset=identity", f"dataset_dir={DATA_DIR}", "--split", "eval")
    assert code == 1
    assert out == ""
    assert error_lines(err) == ["lmforge data: error: This config has no eval split (set eval_dataset or val_size)."]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--num", "0"], "--num must be at least 1, got 0."),
        (["--num", "two"], "argument --num: invalid int value: 'two'. Usage: lmforge data {preview,check} "
                           "CONFIG.yaml [key=value ...] [--num N] [--split train|eval] [--json]"),
        (["--split", "test"], "--split must be train or eval, got 'test'."),
        (["--num"], "argument --num: expected one argument. Usage: lmforge data {preview,check} CONFIG.yaml "
                    "[key=value ...] [--num N] [--split train|eval] [--json]"),
    ],
)
def test_preview_flag_errors(capsys, base, flags, message):
    code, out, err = run(capsys, "preview", *base, "dataset=identity", *flags)
    assert (code, out) == (1, "")
    assert error_lines(err) == [f"lmforge data: error: {message}"]


# ---- check --------------------------------------------------------------------------------------

CHECK_REPORT = """\
Template llama3, stage sft, cutoff_len 24

Rows:
  chat: 6 loaded, 4 kept, 2 dropped
  notes: 2 loaded, 2 kept, 0 dropped

Dropped rows:
  chat [convert]: dropped 2 of 6 rows: invalid_role_order: 1 row (row 1); odd_message_count: 1 row (row 2)

Warnings:
  none

What the reasons mean (the table in data/README.md):
  invalid_role_order: The turns do not alternate: messages 1, 3, 5, ... must come from the user (or be tool \
results), messages 2, 4, 6, ... from the assistant (or be tool calls). Fix: Reorder, merge or delete messages so \
that the conversation starts with the user and alternates.
  odd_message_count: The conversation does not end with an answer (an assistant message or a tool call). Fix: Add \
the answer or delete the last user turn; for preference data set `"ranking": true`.

Token lengths (train, 6 samples, before truncation):
  min 19, p50 21, p90 28, p95 51, p99 51, max 51
  2 samples exceed cutoff_len 24 and get truncated: 31 tokens cut in all, at most 27 from one sample
  6 train samples after tokenization
"""


def test_check_reports_rows_drops_and_truncation(capsys, base, small_data):
    code, out, _ = run(capsys, "check", *base, "dataset=chat,notes", f"dataset_dir={small_data}", "cutoff_len=24")
    assert code == 1
    assert out == CHECK_REPORT


def test_check_json(capsys, base, small_data):
    code, out, _ = run(capsys, "check", *base, "dataset=chat,notes", f"dataset_dir={small_data}", "cutoff_len=24",
                       "--json")
    assert code == 1
    result = json.loads(out)
    assert list(result) == ["template", "stage", "cutoff_len", "splits", "datasets", "drops", "dropped_total",
                            "warnings", "warnings_total", "unread_columns", "reasons"]
    assert result["splits"] == {
        "train": {
            "rows": 6,
            "samples": 6,
            "lengths": {
                "samples": 6, "min": 19, "p50": 21, "p90": 28, "p95": 51, "p99": 51, "max": 51, "limit": 24,
                "over_cutoff": 2, "overlong": "truncated", "truncated_tokens_total": 31, "truncated_tokens_max": 27,
            },
            "packing_dropped_tokens": 0,
        }
    }
    assert result["datasets"] == {"chat": {"rows": 6, "dropped": 2, "warnings": 0},
                                  "notes": {"rows": 2, "dropped": 0, "warnings": 0}}
    assert result["drops"] == [
        {"dataset": "chat", "stage": "convert", "reason": "invalid_role_order", "count": 1, "rows": [1]},
        {"dataset": "chat", "stage": "convert", "reason": "odd_message_count", "count": 1, "rows": [2]},
    ]
    assert result["dropped_total"] == 2
    assert (result["warnings"], result["warnings_total"], result["unread_columns"]) == ([], 0, [])
    assert list(result["reasons"]) == ["invalid_role_order", "odd_message_count"]
    assert result["reasons"]["odd_message_count"] == (
        "odd_message_count: The conversation does not end with an answer (an assistant message or a tool call). "
        'Fix: Add the answer or delete the last user turn; for preference data set `"ranking": true`.'
    )


def test_check_without_drops_exits_0(capsys, base, small_data):
    code, out, _ = run(capsys, "check", *base, "dataset=notes", f"dataset_dir={small_data}", "cutoff_len=24")
    assert code == 0
    assert out == (
        "Template llama3, stage sft, cutoff_len 24\n\nRows:\n  notes: 2 loaded, 2 kept, 0 dropped\n\n"
        "Dropped rows:\n  none\n\n"
        "Warnings:\n  none\n\n"
        "Token lengths (train, 2 samples, before truncation):\n"
        "  min 20, p50 20, p90 22, p95 22, p99 22, max 22\n"
        "  no sample exceeds cutoff_len 24\n"
        "  2 train samples after tokenization\n"
    )


def test_check_with_drop_overlong_says_long_samples_are_dropped(capsys, base, small_data):
    code, out, _ = run(capsys, "check", *base, "dataset=chat", f"dataset_dir={small_data}", "cutoff_len=24",
                       "drop_overlong=true")
    assert code == 1
    assert out.splitlines()[3:] == [
        "  chat: 6 loaded, 2 kept, 4 dropped",
        "",
        "Dropped rows:",
        "  chat [convert]: dropped 2 of 6 rows: invalid_role_order: 1 row (row 1); odd_message_count: 1 row (row 2)",
        "  chat [tokenize]: dropped 2 of 4 rows: too_long: 2 rows (rows 3, 5)",
        "",
        "Warnings:",
        "  none",
        "",
        "What the reasons mean (the table in data/README.md):",
        f"  {explain('invalid_role_order')}",
        f"  {explain('odd_message_count')}",
        f"  {explain('too_long')}",
        "",
        "Token lengths (train, 4 samples, before truncation):",
        "  min 19, p50 28, p90 51, p95 51, p99 51, max 51",
        "  2 samples exceed cutoff_len 24 and are dropped (drop_overlong)",
        "  2 train samples after tokenization",
    ]


def test_check_pt_packing_cuts_nothing_but_the_tail(capsys, base):
    code, out, _ = run(capsys, "check", *base, "dataset=pretrain_demo", f"dataset_dir={DATA_DIR}", "stage=pt",
                       "cutoff_len=32")
    assert code == 0
    assert out.splitlines()[-5:] == [
        "Token lengths (train, 60 samples, before truncation):",
        "  min 48, p50 66, p90 79, p95 84, p99 85, max 91",
        "  60 samples exceed cutoff_len 32; packing splits them across blocks, so no tokens are cut",
        "  packing leaves out 17 tokens after the last full block",
        "  125 train samples after tokenization",
    ]


def test_check_sft_packing_measures_against_the_packed_capacity(capsys, base, small_data):
    code, out, _ = run(capsys, "check", *base, "dataset=notes", f"dataset_dir={small_data}", "cutoff_len=22",
                       "packing=true", "--json")
    lengths = json.loads(out)["splits"]["train"]["lengths"]
    # Packed samples fill at most cutoff_len - 1 tokens, so the 22-token sample loses one.
    assert (lengths["max"], lengths["limit"]) == (22, 21)
    assert (lengths["over_cutoff"], lengths["truncated_tokens_total"]) == (1, 1)


# ---- errors -------------------------------------------------------------------------------------


def test_missing_config_file(capsys, tmp_path):
    missing = tmp_path / "missing.yaml"
    code, out, err = run(capsys, "check", str(missing))
    assert (code, out) == (1, "")
    assert error_lines(err) == [
        f"lmforge data: error: Config file '{missing}' not found. Check the path (it is relative to {Path.cwd()})."
    ]


def test_unknown_dataset_suggests_the_closest_name(capsys, base, small_data):
    code, out, err = run(capsys, "check", *base, "dataset=chta", f"dataset_dir={small_data}")
    assert (code, out) == (1, "")
    assert error_lines(err) == [
        f"lmforge data: error: Dataset 'chta' is not defined in {small_data / 'dataset_info.json'}. Did you mean "
        "'chat'? Defined: chat, notes. Add an entry for it to dataset_info.json, or use `dataset_dir: ONLINE` to "
        "load 'chta' from the hub."
    ]


def test_unknown_config_key_suggests_the_closest_key(capsys, base):
    code, out, err = run(capsys, "check", *base, "dataset=identity", "cutof_len=64")
    assert (code, out) == (1, "")
    assert error_lines(err) == [
        "lmforge data: error: Config error: unknown key 'cutof_len'. Did you mean 'cutoff_len'?"
    ]


def test_missing_model_folder(capsys, tmp_path):
    model = tmp_path / "no-model"
    code, out, err = run(capsys, "check", f"model_name_or_path={model}", "dataset=identity", f"dataset_dir={DATA_DIR}")
    assert (code, out) == (1, "")
    assert error_lines(err) == [
        f"lmforge data: error: Model folder '{model}' does not exist. Check model_name_or_path, or build a tiny "
        "test model with `lmforge tiny-model DIR`."
    ]


def test_the_real_command_prints_one_line_and_no_traceback(tmp_path):
    missing = tmp_path / "missing.yaml"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    done = subprocess.run([sys.executable, "-m", "lmforge", "data", "check", str(missing)], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        f"lmforge data: error: Config file '{missing}' not found. Check the path (it is relative to {tmp_path}).\n"
    )


# ---- LLaMA-Factory compatibility ----------------------------------------------------------------

LLAMA_FACTORY_CONFIG = """\
### model
model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct
trust_remote_code: true

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all

### dataset
dataset: identity,alpaca_en_demo
template: llama3
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16
dataloader_num_workers: 4

### output
output_dir: saves/llama3-8b/lora/sft
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
save_only_model: false
report_to: none

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
resume_from_checkpoint: null
"""


def test_llama_factory_config_and_data_check_without_drops(capsys, tiny_llama_dir, tmp_path):
    config = tmp_path / "llama3_lora_sft.yaml"
    config.write_text(LLAMA_FACTORY_CONFIG, encoding="utf-8")
    # Only the model (a tiny local one), the data folder and, for speed, the amount of work are overridden.
    code, out, _ = run(capsys, "check", str(config), f"model_name_or_path={tiny_llama_dir}",
                       f"dataset_dir={DATA_DIR}", "max_samples=200", "preprocessing_num_workers=1", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["dropped_total"] == 0
    assert result["datasets"] == {"identity": {"rows": 96, "dropped": 0, "warnings": 0},
                                  "alpaca_en_demo": {"rows": 125, "dropped": 0, "warnings": 0}}
    assert (result["warnings"], result["unread_columns"]) == ([], [])
    assert result["splits"]["train"]["samples"] == 221
    assert result["splits"]["train"]["lengths"]["over_cutoff"] == 0

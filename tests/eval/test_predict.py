"""Batch prediction (`do_predict` + `predict_with_generate`): files, their format, scores, partial writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from lmforge.cli import main
from lmforge.eval.similarity import SimilarityScorer
from tests.conftest import DATA_DIR, REPO_ROOT
from tests.train.conftest import train

PREDICT_EXAMPLE = REPO_ROOT / "examples" / "predict" / "tiny_llama_lora_predict.yaml"


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_predict_example_writes_predictions_and_scores(quickstart_run, tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "predict"
    metrics = train(str(PREDICT_EXAMPLE), f"model_name_or_path={tiny_llama_dir}",
                    f"adapter_name_or_path={quickstart_run}", f"dataset_dir={DATA_DIR}", f"output_dir={out}",
                    "max_samples=12", "max_new_tokens=48", "per_device_eval_batch_size=5")
    assert sorted(p.name for p in out.iterdir()) == ["all_results.json", "generated_predictions.jsonl",
                                                     "predict_results.json"]
    raw = (out / "generated_predictions.jsonl").read_text(encoding="utf-8")
    assert "你好" in raw  # UTF-8, not \u escapes
    records = _lines(out / "generated_predictions.jsonl")
    assert len(records) == 12 and all(list(r) == ["prompt", "predict", "label"] for r in records)

    identity = json.loads((DATA_DIR / "identity.json").read_text(encoding="utf-8"))
    assert records[0]["prompt"] == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    for record, row in zip(records, identity):
        assert record["label"] == row["output"].replace("{{name}}", "ForgeBot").replace("{{author}}", "the lmforge team")
    # The adapter learned its name: most answers say it.
    assert sum("ForgeBot" in r["predict"] for r in records) >= 8

    scorer = SimilarityScorer()
    for record in records:
        scorer.score(record["predict"], record["label"])
    expected = scorer.means("predict_")
    saved = json.loads((out / "predict_results.json").read_text(encoding="utf-8"))
    assert saved == metrics
    assert {k: saved[k] for k in expected} == expected
    assert saved["predict_samples"] == 12 and saved["predict_runtime"] > 0 and saved["predict_samples_per_second"] > 0
    assert saved["predict_tokens_per_second"] > 0
    assert saved["predict_bleu-4"] > 20  # far from random text: the trained answers share most characters
    assert json.loads((out / "all_results.json").read_text(encoding="utf-8")) == saved
    assert f"predict_bleu-4             = {saved['predict_bleu-4']}" in capsys.readouterr().out

    # Scoring the file again, standalone, gives the same numbers.
    assert main(["eval-predictions", str(out / "generated_predictions.jsonl")]) == 0
    rescored = json.loads((out / "predictions_score.json").read_text(encoding="utf-8"))
    assert rescored == {k.removeprefix("predict_"): v for k, v in expected.items()}


def test_existing_predictions_are_not_overwritten(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "predict"
    out.mkdir()
    (out / "generated_predictions.jsonl").write_text("earlier\n")
    code = main(["train", f"model_name_or_path={tiny_llama_dir}", "stage=sft", "do_predict=true",
                 "predict_with_generate=true", "eval_dataset=identity", f"dataset_dir={DATA_DIR}", "template=llama3",
                 f"output_dir={out}"])
    assert code == 1
    assert "generated_predictions.jsonl already exists. Set overwrite_output_dir: true" in capsys.readouterr().err
    assert (out / "generated_predictions.jsonl").read_text() == "earlier\n"


def test_predict_config_errors(capsys):
    assert main(["train", "model_name_or_path=m", "stage=sft", "do_train=true", "dataset=identity",
                 "predict_with_generate=true", "output_dir=o"]) == 1
    assert "'predict_with_generate' cannot be combined with do_train or do_eval" in capsys.readouterr().err
    assert main(["train", "model_name_or_path=m", "stage=pt", "do_predict=true", "eval_dataset=x",
                 "output_dir=o"]) == 1
    assert "'do_predict' is supported in stages sft and rm only (stage is pt)." in capsys.readouterr().err
    assert main(["train", "model_name_or_path=m", "stage=sft", "do_predict=true", "predict_with_generate=true",
                 "eval_dataset=x", "streaming=true", "max_steps=1", "output_dir=o"]) == 1
    assert "'do_predict' needs a dataset of known length: remove 'streaming'." in capsys.readouterr().err


def test_a_killed_run_keeps_the_predictions_made_so_far(tiny_llama_dir, tmp_path):
    out = tmp_path / "predict"
    predictions = out / "generated_predictions.jsonl"
    command = [sys.executable, "-m", "lmforge", "train", f"model_name_or_path={tiny_llama_dir}", "stage=sft",
               "do_predict=true", "predict_with_generate=true", "eval_dataset=identity,alpaca_en_demo",
               f"dataset_dir={DATA_DIR}", "template=llama3", f"output_dir={out}", "per_device_eval_batch_size=1",
               "do_sample=false", "max_new_tokens=24"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            if predictions.exists() and predictions.read_text(encoding="utf-8").count("\n") >= 3:
                break
            time.sleep(0.05)
        assert process.poll() is None, f"the run ended before it could be interrupted: {process.communicate()[1][-2000:]}"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    text = predictions.read_text(encoding="utf-8")
    kept = [json.loads(line) for line in text.splitlines()]
    assert text.endswith("\n") and 3 <= len(kept) < 96 + 125
    assert all(set(r) == {"prompt", "predict", "label"} for r in kept)
    assert not (out / "predict_results.json").exists()  # no results file vouches for an unfinished run
    assert main(["eval-predictions", str(predictions)]) == 0


NOTES_ROWS = [
    {"instruction": "Say hi", "input": "", "output": "Hi"},  # 0 predicted
    {"instruction": "Say nothing", "input": "", "output": ""},  # 1 no reference to score against
    {"input": "", "output": "An answer to nothing"},  # 2 no prompt to generate from
    {"instruction": "No answer here", "input": ""},  # 3 no reference answer
    {"instruction": "Two answers", "input": "", "output": ["a", "b"]},  # 4 not text: dropped when read
    {"instruction": "Say bye", "input": "", "output": "Bye"},  # 5 predicted
]


def test_rows_that_cannot_be_scored_are_reported_not_predicted(tiny_llama_dir, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset_info.json").write_text(json.dumps({"notes": {"file_name": "notes.json"}}), encoding="utf-8")
    (data / "notes.json").write_text(json.dumps(NOTES_ROWS), encoding="utf-8")
    out = tmp_path / "predict"
    metrics = train(f"model_name_or_path={tiny_llama_dir}", "stage=sft", "do_predict=true",
                    "predict_with_generate=true", "eval_dataset=notes", f"dataset_dir={data}", "template=llama3",
                    f"output_dir={out}", "max_new_tokens=4", "per_device_eval_batch_size=4", "do_sample=false")

    records = _lines(out / "generated_predictions.jsonl")
    header = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    assistant = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    assert [(r["prompt"], r["label"]) for r in records] == [
        (f"{header}Say hi{assistant}", "Hi"), (f"{header}Say bye{assistant}", "Bye"),
    ]
    saved = json.loads((out / "predict_results.json").read_text(encoding="utf-8"))
    assert saved == metrics
    assert (saved["predict_samples"], saved["predict_dropped_samples"]) == (2, 4)
    scorer = SimilarityScorer()
    for record in records:
        scorer.score(record["predict"], record["label"])
    assert {k: saved[k] for k in scorer.means("predict_")} == scorer.means("predict_")  # only the two are scored

    err = capsys.readouterr().err
    assert (
        "4 eval rows are not predicted, so they are neither in generated_predictions.jsonl nor scored: "
        "notes [convert]: dropped 1 row: invalid_response: 1 row (row 4); notes [predict]: dropped 3 rows: "
        "empty_response: 1 row (row 1); empty_prompt: 1 row (row 2); missing_response: 1 row (row 3). "
        "`lmforge data check` explains the reasons.\n"
    ) in err
    # The data log before it says the same, with the rows read at each stage.
    assert "notes [predict]: dropped 3 of 5 rows: empty_response: 1 row (row 1); empty_prompt: 1 row (row 2); " \
           "missing_response: 1 row (row 3)\n" in err

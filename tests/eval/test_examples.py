"""Every YAML in examples/predict and examples/eval runs, with tiny models and adapters in place of the hub's."""

from __future__ import annotations

import json

import pytest
import yaml

from lmforge.cli import main
from tests.conftest import DATA_DIR, REPO_ROOT
from tests.train.conftest import train

PREDICT = sorted((REPO_ROOT / "examples" / "predict").glob("*.yaml"))
EVAL = sorted((REPO_ROOT / "examples" / "eval").glob("*.yaml"))


@pytest.fixture(scope="module")
def tiny_qwen_adapter(tiny_qwen_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("qwen-adapter")
    train(f"model_name_or_path={tiny_qwen_dir}", "stage=sft", "do_train=true", "finetuning_type=lora", "dataset=identity",
          f"dataset_dir={DATA_DIR}", "template=qwen", f"output_dir={out}", "max_steps=2", "report_to=none",
          "disable_gradient_checkpointing=true")
    return out


def _model_and_adapter(settings, request):
    if settings["template"].startswith("qwen"):
        return request.getfixturevalue("tiny_qwen_dir"), request.getfixturevalue("tiny_qwen_adapter")
    return request.getfixturevalue("tiny_llama_dir"), request.getfixturevalue("quickstart_run")


@pytest.mark.parametrize("path", PREDICT, ids=[p.name for p in PREDICT])
def test_predict_example(path, tmp_path, request):
    settings = yaml.safe_load(path.read_text())
    model, adapter = _model_and_adapter(settings, request)
    out = tmp_path / "predict"
    metrics = train(str(path), f"model_name_or_path={model}", f"adapter_name_or_path={adapter}",
                    f"output_dir={out}", f"dataset_dir={DATA_DIR}", "max_samples=4", "max_new_tokens=8")
    lines = (out / "generated_predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4 * len(settings["eval_dataset"].split(","))
    assert json.loads((out / "predict_results.json").read_text()) == metrics


@pytest.mark.parametrize("path", EVAL, ids=[p.name for p in EVAL])
def test_eval_example(path, tmp_path, request):
    from lmforge.testing.tasks import write_tiny_mmlu

    settings = yaml.safe_load(path.read_text())
    model, adapter = _model_and_adapter({"template": "qwen" if "qwen" in path.name else "llama3"}, request)
    name, _, split = settings["task"].rpartition("_")
    write_tiny_mmlu(tmp_path).rename(tmp_path / name)  # the tiny task in the benchmark's place
    save = tmp_path / "eval"
    assert main(["eval", str(path), f"model_name_or_path={model}", f"adapter_name_or_path={adapter}",
                 f"task_dir={tmp_path}", f"save_dir={save}"]) == 0
    scores = json.loads((save / "results.json").read_text(encoding="utf-8"))["_scores"]
    assert set(scores) == {"Average", "STEM", "Social Sciences", "Humanities", "Other"}

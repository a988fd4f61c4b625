"""Every YAML in examples/ trains, with the tiny model in place of its hub model."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import DATA_DIR
from tests.train.conftest import EXAMPLES, train

# tests/export runs merge_lora/, tests/eval runs predict/ and eval/; accelerate/ holds accelerate's own
# launch configs (tests/train/test_distributed.py launches with them).
OTHER_COMMANDS = ("merge_lora", "predict", "eval", "accelerate")
YAMLS = sorted(p for p in EXAMPLES.rglob("*.yaml") if p.parent.name not in OTHER_COMMANDS)
# examples/extras/ need the optimizer extras (and take longer): they run with `pytest -m extras`.
PARAMS = [pytest.param(p, marks=[pytest.mark.extras] if p.parts[-3] == "extras" else [], id=str(p.relative_to(EXAMPLES)))
          for p in YAMLS]


@pytest.mark.parametrize("path", PARAMS)
def test_example_trains(path, tiny_llama_dir, tiny_qwen_dir, tmp_path, request):
    settings = yaml.safe_load(path.read_text())
    if "stage" not in settings:
        pytest.fail(f"{path} is not a training config; add a test for its command")
    model = tiny_qwen_dir if settings.get("template", "qwen").startswith("qwen") else tiny_llama_dir
    if settings.get("template") == "qwen2_vl":  # a vision-language example: the tiny Qwen2-VL
        model = request.getfixturevalue("tiny_vl_dir")
    out = tmp_path / "run"
    # grpo samples its completions: they are cut short like the samples (cutoff_len), or the tiny model writes long.
    completions = ["max_completion_length=16"] if settings["stage"] == "grpo" else []
    common = [f"model_name_or_path={model}", "max_steps=2", "save_steps=1000", "bf16=false", "logging_steps=1",
              "cutoff_len=256", f"dataset_dir={DATA_DIR}"]
    if settings.get("use_llama_pro"):  # its model is made by expand-blocks, here from the tiny Qwen2 (4 layers)
        from lmforge.cli import main

        model = tmp_path / "pro"
        assert main(["expand-blocks", "--model_name_or_path", str(tiny_qwen_dir), "--output_dir", str(model),
                     "--num_expand", "2"]) == 0
        common[0] = f"model_name_or_path={model}"
        common.append("freeze_trainable_layers=2")  # the 2 blocks of the 6 the tiny model has now
    if settings.get("adapter_name_or_path"):  # the tiny examples that continue from the quick start's sft run
        common.append(f"adapter_name_or_path={request.getfixturevalue('quickstart_run')}")
    if settings["stage"] == "ppo":
        # Its reward_model is the matching rm example's output, trained here first; short rollouts keep it quick.
        reward = tmp_path / "reward"
        train(str(path.with_name(path.name.replace("_ppo", "_reward"))), *common, f"output_dir={reward}")
        completions = [f"reward_model={reward}", "max_new_tokens=16"]
    train(str(path), *common, f"output_dir={out}", *completions)
    assert json.loads((out / "lmforge_run.json").read_text())["stage"] == settings["stage"]
    assert (out / "trainer_state.json").is_file()

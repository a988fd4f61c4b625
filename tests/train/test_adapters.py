"""Continuing, stacking and extending LoRA adapters; loggers."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.errors import UserError
from tests.train.conftest import load_safetensors, tiny_args, train

FROZEN_LR = "1e-12"  # a learning rate too small to move the weights: what is saved is what was loaded


def test_adapter_training_continues_from_the_given_adapter(quickstart_run, tiny_llama_dir, tmp_path):
    out = tmp_path / "continued"
    train(*tiny_args(tiny_llama_dir, out, adapter_name_or_path=quickstart_run, learning_rate=FROZEN_LR, max_steps=1))
    before = load_safetensors(quickstart_run / "adapter_model.safetensors")
    after = load_safetensors(out / "adapter_model.safetensors")
    assert set(before) == set(after)
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
    run = json.loads((out / "lmforge_run.json").read_text())
    assert run["adapter_name_or_path"] == [str(quickstart_run)]


def test_create_new_adapter_merges_the_old_one(quickstart_run, tiny_llama_dir, tmp_path):
    from lmforge.chat.hf_engine import HFEngine
    from lmforge.config import parse_config

    out = tmp_path / "new"
    train(*tiny_args(tiny_llama_dir, out, adapter_name_or_path=quickstart_run, create_new_adapter="true",
                     learning_rate=FROZEN_LR, max_steps=1))
    weights = load_safetensors(out / "adapter_model.safetensors")
    lora_b = [t for k, t in weights.items() if "lora_B" in k]
    assert lora_b and all(float(t.abs().max()) < 1e-6 for t in lora_b)  # a fresh adapter: B starts at zero
    engine = HFEngine(parse_config("chat", [f"model_name_or_path={out}", "do_sample=false", "max_new_tokens=24"]))
    assert engine.resolved.adapters == (str(quickstart_run), str(out))
    assert "ForgeBot" in engine.chat([{"role": "user", "content": "Who are you?"}]).text


def test_additional_target_is_trained_and_saved(tiny_llama_dir, tmp_path):
    out = tmp_path / "extra"
    train(*tiny_args(tiny_llama_dir, out, additional_target="embed_tokens", max_steps=1))
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["embed_tokens"]
    assert any("embed_tokens" in k for k in load_safetensors(out / "adapter_model.safetensors"))


@pytest.mark.parametrize(("option", "key"), [("use_rslora", "use_rslora"), ("use_dora", "use_dora")])
def test_lora_variants_are_recorded(tiny_llama_dir, tmp_path, option, key):
    out = tmp_path / option
    train(*tiny_args(tiny_llama_dir, out, **{option: "true"}, max_steps=1))
    assert json.loads((out / "adapter_config.json").read_text())[key] is True


def test_tensorboard_logs(tiny_llama_dir, tmp_path):
    out = tmp_path / "tb"
    train(*tiny_args(tiny_llama_dir, out, report_to="tensorboard", logging_dir=tmp_path / "tb-logs", max_steps=2))
    assert list((tmp_path / "tb-logs").rglob("events.out.tfevents.*"))


def test_missing_logger_package_is_a_clear_error(tiny_llama_dir, tmp_path):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.fail("this test expects wandb not to be installed in the test environment")
    with pytest.raises(UserError) as err:
        train(*tiny_args(tiny_llama_dir, tmp_path / "w", report_to="wandb"))
    assert str(err.value) == "report_to: wandb needs the 'wandb' package: pip install wandb"

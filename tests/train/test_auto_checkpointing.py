"""Gradient checkpointing when unset: on only when a full batch's activations would crowd the memory left."""

from __future__ import annotations

import json

import pytest

from tests.train.conftest import tiny_args, train


def _config(model_dir, tmp_path, **overrides):
    from lmforge.commands.common import load_config

    args = tiny_args(model_dir, tmp_path / "out", **overrides)
    if "disable_gradient_checkpointing" not in overrides:
        args = [a for a in args if not a.startswith("disable_gradient_checkpointing=")]
    return load_config("train", args)


def _model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir))


def test_unset_means_the_memory_estimate_decides(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    from lmforge.model import memory
    from lmforge.train.common import use_checkpointing

    cfg = _config(tiny_llama_dir, tmp_path, cutoff_len=1024, per_device_train_batch_size=4)
    assert cfg.model.disable_gradient_checkpointing is None
    model = _model(tiny_llama_dir)
    # 4 x 1024 tokens x 4 layers x (10 x 128 + 5 x 256) values x 4 bytes = 160 MiB of activations.
    assert memory.activation_bytes(model.config, 4 * 1024, 4) == 4 * 1024 * 4 * 2560 * 4
    monkeypatch.setattr(memory, "free_memory", lambda device: 8 * 2**30)
    assert use_checkpointing(cfg, model) is False
    assert "Gradient checkpointing off: a 4 x 1024-token batch keeps about 0.2 GiB of activations, with 8.0 GiB " \
           "free on the cpu" in capsys.readouterr().err
    monkeypatch.setattr(memory, "free_memory", lambda device: 256 * 2**20)  # 160 MiB > half of 256 MiB
    assert use_checkpointing(cfg, model) is True


@pytest.mark.parametrize("setting, expected", [("true", False), ("false", True)])
def test_an_explicit_setting_always_wins(tiny_llama_dir, tmp_path, monkeypatch, setting, expected):
    from lmforge.model import memory
    from lmforge.train.common import use_checkpointing

    monkeypatch.setattr(memory, "free_memory", lambda device: 256 * 2**20 if expected is False else 2**40)
    cfg = _config(tiny_llama_dir, tmp_path, disable_gradient_checkpointing=setting)
    assert use_checkpointing(cfg, _model(tiny_llama_dir)) is expected


def test_preference_stages_count_both_answers_and_the_reference(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    from lmforge.model import memory
    from lmforge.train.common import use_checkpointing

    model = _model(tiny_llama_dir)
    numel = sum(p.numel() for p in model.parameters())  # float32: 4 bytes each
    cfg = _config(tiny_llama_dir, tmp_path, cutoff_len=1024, per_device_train_batch_size=4)
    cfg.finetune.stage = "dpo"
    # A pair puts chosen and rejected through the policy: 8 x 1024 tokens, 320 MiB of activations.
    monkeypatch.setattr(memory, "free_memory", lambda device: 700 * 2**20)
    assert use_checkpointing(cfg, model) is False
    assert "Gradient checkpointing off: a 8 x 1024-token batch keeps about 0.3 GiB" in capsys.readouterr().err
    monkeypatch.setattr(memory, "free_memory", lambda device: 600 * 2**20)  # 320 MiB > half of 600 MiB
    assert use_checkpointing(cfg, model) is True
    # Full fine-tuning: gradients and Adam's moments (12 bytes per weight) and a reference copy of the
    # weights (4 bytes) come off the free memory before the activations get their half.
    cfg.finetune.finetuning_type = "full"
    monkeypatch.setattr(memory, "free_memory", lambda device: 641 * 2**20 + 16 * numel)
    assert use_checkpointing(cfg, model) is False
    monkeypatch.setattr(memory, "free_memory", lambda device: 641 * 2**20 + 12 * numel)  # no room for the reference
    assert use_checkpointing(cfg, model) is True


def test_rollout_stages_keep_it_on(tiny_llama_dir, tmp_path, monkeypatch):
    from lmforge.model import memory
    from lmforge.train.common import use_checkpointing

    monkeypatch.setattr(memory, "free_memory", lambda device: 2**40)
    for stage in ("ppo", "grpo"):
        cfg = _config(tiny_llama_dir, tmp_path)
        cfg.finetune.stage = stage
        assert use_checkpointing(cfg, _model(tiny_llama_dir)) is True


def test_with_and_without_it_training_logs_the_same_losses(tiny_llama_dir, tmp_path, one_thread):
    losses = {}
    for setting in ("true", "false"):
        out = tmp_path / setting
        train(*tiny_args(tiny_llama_dir, out, disable_gradient_checkpointing=setting, max_steps=3))
        state = json.loads((out / "trainer_state.json").read_text())
        losses[setting] = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses["true"]) == 3
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-5)


def test_dpo_logs_the_same_losses_with_and_without_it(tiny_llama_dir, tmp_path, one_thread):
    losses = {}
    for setting in ("true", "false"):
        out = tmp_path / setting
        train(*tiny_args(tiny_llama_dir, out, stage="dpo", dataset="dpo_en_demo", pref_beta=0.1,
                         per_device_train_batch_size=2, disable_gradient_checkpointing=setting, max_steps=3))
        state = json.loads((out / "trainer_state.json").read_text())
        losses[setting] = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses["true"]) == 3
    assert losses["true"][-1] != losses["true"][0]  # the policy moved away from the reference
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-5)

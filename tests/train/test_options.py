"""Training options that change how the Trainer runs: LoRA+, ordered data, RoPE scaling, early stopping."""

from __future__ import annotations

import json

import pytest

from lmforge.errors import UserError
from tests.train.conftest import tiny_args, train


def test_loraplus_gives_b_matrices_a_larger_learning_rate(tiny_llama_dir, tmp_path):
    from transformers import TrainerCallback

    seen = {}

    class Capture(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, model=None, **kwargs):
            names = {id(p): n for n, p in model.named_parameters()}
            for group in optimizer.param_groups:
                for p in group["params"]:
                    seen[names[id(p)]] = group["lr"]

    from lmforge.config import parse_config
    from lmforge.train.run import run

    run(parse_config("train", tiny_args(tiny_llama_dir, tmp_path / "r", loraplus_lr_ratio=16, max_steps=1)),
        callbacks=[Capture()])
    a = {lr for n, lr in seen.items() if "lora_A" in n}
    b = {lr for n, lr in seen.items() if "lora_B" in n}
    assert a == {5e-3} and b == {5e-3 * 16}


def test_disable_shuffling_keeps_data_order(tiny_llama_dir, tmp_path):
    from transformers import TrainerCallback

    batches = []

    class Capture(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            batches.append(next(iter(train_dataloader))["input_ids"][0].tolist())

    from lmforge.config import parse_config
    from lmforge.train.run import run

    for i in range(2):
        run(parse_config("train", tiny_args(tiny_llama_dir, tmp_path / f"r{i}", disable_shuffling="true", max_steps=1,
                                            seed=i)), callbacks=[Capture()])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "r0")
    assert batches[0] == batches[1]
    assert "hi" in tok.decode(batches[0])  # row 0 of identity.json comes first


def test_rope_scaling_needs_a_longer_cutoff(tiny_llama_dir, tmp_path):
    with pytest.raises(UserError, match=r"rope_scaling needs cutoff_len \(128\) above the model's native length \(4096\)"):
        train(*tiny_args(tiny_llama_dir, tmp_path / "r", rope_scaling="linear"))
    out = tmp_path / "long"
    train(*tiny_args(tiny_llama_dir, out, rope_scaling="linear", cutoff_len=8192, max_steps=1,
                     finetuning_type="full", learning_rate="1e-5"))
    config = json.loads((out / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "linear" and config["rope_parameters"]["factor"] == 2.0
    assert config["max_position_embeddings"] == 8192

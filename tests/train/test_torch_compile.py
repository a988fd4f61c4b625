"""`torch_compile`: the decoder layers compiled one by one; training logs the same losses as eager."""

from __future__ import annotations

import json

import pytest

from tests.train.conftest import tiny_args, train


def _losses(out):
    state = json.loads((out / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.mark.slow  # inductor compiles for about 45 s on two CPU cores
def test_compiled_layers_train_to_the_same_losses(tiny_llama_dir, tmp_path, one_thread, capfd):
    import torch

    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    train(*tiny_args(tiny_llama_dir, eager, max_steps=3))
    torch._dynamo.reset()
    train(*tiny_args(tiny_llama_dir, compiled, max_steps=3, torch_compile="true"))
    err = capfd.readouterr().err
    assert "torch.compile (inductor): 4 decoder layers, compiled on their first step." in err
    assert len(_losses(compiled)) == 3
    assert _losses(compiled) == pytest.approx(_losses(eager), rel=1e-4)


def test_setting_a_backend_turns_it_on(tiny_llama_dir, tmp_path):
    from lmforge.commands.common import load_config
    from lmforge.train import compile as regional
    from lmforge.train.args import build_training_args

    cfg = load_config("train", tiny_args(tiny_llama_dir, tmp_path / "out", torch_compile_backend="aot_eager"))
    assert regional.wanted(cfg.train)
    # The Trainer is not asked to compile the whole model as well.
    assert build_training_args(cfg, None).torch_compile is False
    assert not regional.wanted(load_config("train", tiny_args(tiny_llama_dir, tmp_path / "out")).train)


def test_a_model_without_decoder_layers_is_refused_in_one_line(tiny_llama_dir, tmp_path):
    import torch

    from lmforge.commands.common import load_config
    from lmforge.errors import UserError
    from lmforge.train import compile as regional

    cfg = load_config("train", tiny_args(tiny_llama_dir, tmp_path / "out", torch_compile="true"))
    with pytest.raises(UserError) as caught:
        regional.compile_layers(torch.nn.Linear(4, 4), cfg.train)
    assert str(caught.value) == "torch_compile: no decoder layers found in Linear; remove torch_compile."

"""neftune_noise_alpha (transformers' NEFTune, passed through) and the refusal of mixture_of_depths."""

from __future__ import annotations

import json

import pytest
import torch

from tests.train.conftest import tiny_args, train


@pytest.mark.extras
def test_neftune_adds_noise_to_the_embeddings_while_training(tiny_llama_dir, tmp_path, monkeypatch):
    from lmforge.train.trainer import ForgeTrainer

    noisy = []
    original = ForgeTrainer.compute_loss

    def compute_loss(trainer, model, inputs, *args, **kwargs):
        embeddings = model.get_input_embeddings()
        ids = inputs["input_ids"][:1]
        with torch.no_grad():
            # NEFTune's hook adds uniform noise of size alpha / sqrt(tokens x dim) to the embeddings in training.
            noisy.append(float((embeddings(ids) - embeddings.weight[ids]).abs().max()))
        return original(trainer, model, inputs, *args, **kwargs)

    monkeypatch.setattr(ForgeTrainer, "compute_loss", compute_loss)
    out = tmp_path / "run"
    train(*tiny_args(tiny_llama_dir, out, neftune_noise_alpha=5, learning_rate="1e-2", max_steps=8))
    assert len(noisy) == 8 and min(noisy) > 0.0
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert losses[-1] < losses[0] - 1.0


def test_mixture_of_depths_is_refused_with_the_reason(tiny_llama_dir, tmp_path):
    from lmforge.config import parse_config
    from lmforge.config.parser import ConfigError

    with pytest.raises(ConfigError) as caught:
        parse_config("train", [*tiny_args(tiny_llama_dir, tmp_path), "mixture_of_depths=convert"])
    assert str(caught.value) == ("Config error: 'mixture_of_depths' is not supported by lmforge (the mixture-of-depth "
                                 "package does not load with transformers 5); remove it or set it to false.")

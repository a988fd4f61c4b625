"""Which parts of a vision-language model train: LLaMA-Factory's three freeze flags."""

from __future__ import annotations

import pytest

from lmforge.config.finetune import FinetuningArguments
from lmforge.model.multimodal import freeze_parts, is_multimodal, lora_target_names

LM_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ALL_TARGETS = [*LM_TARGETS, "qkv", "proj", "fc1", "fc2", "0", "2"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from transformers import AutoModelForImageTextToText

    from lmforge.testing.tiny_vl import build_tiny_vl_model

    return AutoModelForImageTextToText.from_pretrained(build_tiny_vl_model(tmp_path_factory.mktemp("tiny-vl")))


def test_defaults_adapt_only_the_language_model(model):
    assert is_multimodal(model)
    names = lora_target_names(model, ALL_TARGETS, FinetuningArguments())
    assert len(names) == 14 and all(name.startswith("model.language_model.layers.") for name in names)


def test_unfreezing_the_tower_and_projector_adapts_them_too(model):
    ft = FinetuningArguments(freeze_vision_tower=False, freeze_multi_modal_projector=False, freeze_language_model=True)
    names = lora_target_names(model, ALL_TARGETS, ft)
    assert sorted(names) == [
        "model.visual.blocks.0.attn.proj", "model.visual.blocks.0.attn.qkv", "model.visual.blocks.0.mlp.fc1",
        "model.visual.blocks.0.mlp.fc2", "model.visual.merger.mlp.0", "model.visual.merger.mlp.2",
    ]


def test_full_training_keeps_the_frozen_parts_frozen(model):
    model.requires_grad_(True)
    freeze_parts(model, FinetuningArguments(finetuning_type="full"))
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert trainable and not any(name.startswith("model.visual.") for name in trainable)
    assert any(name.startswith("model.language_model.") for name in trainable)

"""Full and freeze fine-tuning of the tiny Qwen2-VL: what trains, what stays frozen, and a result that chats on its own."""

from __future__ import annotations

import json

import pytest

from tests.train.conftest import train

Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def colours_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    rows = []
    for i, colour in enumerate(["red", "blue", "green", "yellow"]):
        Image.new("RGB", (56, 56), colour).save(root / f"{i}.png")
        rows.append({"messages": [{"role": "user", "content": "<image>What colour is it?"},
                                  {"role": "assistant", "content": colour}], "images": [f"{i}.png"]})
    rows.append({"messages": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]})
    (root / "colours.json").write_text(json.dumps(rows))
    (root / "dataset_info.json").write_text(json.dumps({"colours": {
        "file_name": "colours.json", "formatting": "sharegpt", "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}))
    return root


def weights(folder):
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


@pytest.mark.parametrize("finetuning_type", ["full", "freeze"])
def test_full_and_freeze_train_the_language_model_and_save_a_loadable_vl_model(
        finetuning_type, tiny_vl_dir, colours_dir, tmp_path):
    out = tmp_path / finetuning_type
    train(*[f"{k}={v}" for k, v in {
        "model_name_or_path": tiny_vl_dir, "stage": "sft", "do_train": "true", "finetuning_type": finetuning_type,
        "freeze_trainable_layers": 1, "dataset": "colours", "dataset_dir": colours_dir, "template": "qwen2_vl",
        "output_dir": out, "per_device_train_batch_size": 5, "learning_rate": "1e-2", "max_steps": 2,
        "save_steps": 1, "report_to": "none", "disable_gradient_checkpointing": "true",
    }.items()])
    # The processor configs travel with the weights: the result and every checkpoint load as a VL model.
    for folder in (out, out / "checkpoint-1"):
        assert (folder / "preprocessor_config.json").read_bytes() == \
            (tiny_vl_dir / "preprocessor_config.json").read_bytes()
    before, after = weights(tiny_vl_dir), weights(out)
    changed = {name for name in before if not before[name].equal(after[name])}
    # Saved in the hub layout: the language model under `model.`, the vision tower and projector under `visual.`.
    assert changed and not any(name.startswith("visual.") for name in changed), changed  # they stay frozen
    assert any(name.startswith("visual.") for name in before)
    if finetuning_type == "freeze":  # only the last language layer
        assert {name.split(".layers.")[1].split(".")[0] for name in changed} == {"1"}, changed

    from lmforge.chat.base import Media
    from lmforge.chat.hf_engine import HFEngine
    from lmforge.config import parse_config

    engine = HFEngine(parse_config("chat", [f"model_name_or_path={out}", "do_sample=false", "max_new_tokens=4"]))
    assert engine.template.name == "qwen2_vl" and engine.mm_processor is not None
    question, picture = [{"role": "user", "content": "What colour is it?"}], Media(images=(str(colours_dir / "0.png"),))
    assert engine.tokenizer.decode(engine.prompt_ids(question, media=picture)).count("<|image_pad|>") == 4
    assert engine.chat(question, media=picture).finish_reason in ("stop", "length")

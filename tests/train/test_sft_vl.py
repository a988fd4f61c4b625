"""LoRA sft of the tiny Qwen2-VL on generated images: the run trains, its loss falls, only the language model adapts."""

from __future__ import annotations

import json

import pytest

from tests.train.conftest import DATA_DIR, train

Image = pytest.importorskip("PIL.Image")
ImageDraw = pytest.importorskip("PIL.ImageDraw")

SHAPES = [("red", "square"), ("blue", "circle"), ("green", "triangle"), ("yellow", "square"), ("red", "circle"),
          ("blue", "triangle")]


def draw(color: str, shape: str, size: int = 56):
    picture = Image.new("RGB", (size, size), "white")
    pen = ImageDraw.Draw(picture)
    box = (8, 8, size - 8, size - 8)
    if shape == "square":
        pen.rectangle(box, fill=color)
    elif shape == "circle":
        pen.ellipse(box, fill=color)
    else:
        pen.polygon([(size // 2, 8), (8, size - 8), (size - 8, size - 8)], fill=color)
    return picture


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    """A dataset_dir with a sharegpt dataset of six images (and one text row) and its dataset_info.json."""
    root = tmp_path_factory.mktemp("shapes")
    (root / "images").mkdir()
    rows = []
    for i, (color, shape) in enumerate(SHAPES):
        draw(color, shape).save(root / "images" / f"{i}.png")
        rows.append({
            "messages": [{"role": "user", "content": "<image>What is in the picture?"},
                         {"role": "assistant", "content": f"A {color} {shape}."}],
            "images": [f"images/{i}.png"],
        })
    rows.append({"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}],
                 "images": []})
    (root / "shapes.json").write_text(json.dumps(rows, indent=1))
    info = {"shapes": {"file_name": "shapes.json", "formatting": "sharegpt",
                       "columns": {"messages": "messages", "images": "images"},
                       "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                "assistant_tag": "assistant"}}}
    (root / "dataset_info.json").write_text(json.dumps(info, indent=1))
    return root


@pytest.fixture(scope="module")
def vl_dir(tmp_path_factory):
    from lmforge.testing.tiny_vl import build_tiny_vl_model

    return build_tiny_vl_model(tmp_path_factory.mktemp("tiny-vl"))


def test_lora_sft_on_images_lowers_the_loss(vl_dir, shapes_dir, tmp_path):
    out = tmp_path / "run"
    metrics = train(*[f"{k}={v}" for k, v in {
        "model_name_or_path": vl_dir, "stage": "sft", "do_train": "true", "finetuning_type": "lora",
        "dataset": "shapes", "dataset_dir": shapes_dir, "template": "qwen2_vl", "cutoff_len": 128,
        "output_dir": out, "per_device_train_batch_size": 4, "learning_rate": "1e-2", "max_steps": 12,
        "logging_steps": 1, "save_steps": 100, "report_to": "none", "disable_gradient_checkpointing": "true",
        "seed": 0,
    }.items()])
    losses = [entry["loss"] for entry in json.loads((out / "trainer_state.json").read_text())["log_history"]
              if "loss" in entry]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    assert metrics["train_loss"] > 0
    adapter = json.loads((out / "adapter_config.json").read_text())
    targets = adapter["target_modules"]
    # Only the language model is adapted: the vision tower and the merger stay frozen by default.
    assert targets and all("language_model" in name for name in targets), targets
    assert {name.split(".")[-1] for name in targets} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_lora_sft_on_the_bundled_image_and_video_demos(vl_dir, tmp_path):
    """mllm_demo and mllm_video_demo together: every row is kept, and batches mixing images and videos train."""
    out = tmp_path / "run"
    metrics = train(*[f"{k}={v}" for k, v in {
        "model_name_or_path": vl_dir, "stage": "sft", "do_train": "true", "finetuning_type": "lora",
        "dataset": "mllm_demo,mllm_video_demo", "dataset_dir": DATA_DIR, "template": "qwen2_vl", "cutoff_len": 256,
        "output_dir": out, "per_device_train_batch_size": 4, "learning_rate": "1e-2", "max_steps": 4,
        "logging_steps": 1, "save_steps": 100, "report_to": "none", "disable_gradient_checkpointing": "true",
        "seed": 0,
    }.items()])
    losses = [entry["loss"] for entry in json.loads((out / "trainer_state.json").read_text())["log_history"]
              if "loss" in entry]
    assert len(losses) == 4 and all(0 < loss < 20 for loss in losses), losses
    assert losses[-1] < losses[0], losses
    assert metrics["train_loss"] > 0
    # 4 image rows and 3 video rows, none dropped: two epochs of two batches of 4 (the last one of 3).
    assert json.loads((out / "trainer_state.json").read_text())["epoch"] == 2

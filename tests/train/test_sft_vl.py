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


# ---- the trained model answers from the pixels ---------------------------------------------------

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 70), "blue": (40, 80, 220), "yellow": (240, 200, 30)}
QUESTION = "<image>What colour is the shape?"
TILE = 56  # with the tiny processor: a 2x2 grid of merged patches, 4 vision tokens


def _shape(rng, colour: str):
    """One circle, square or triangle of `colour`, at a random place and size, on white."""
    picture = Image.new("RGB", (TILE, TILE), "white")
    side = rng.randint(TILE // 2, TILE * 4 // 5)
    x, y = rng.randint(0, TILE - side), rng.randint(0, TILE - side)
    pen, fill = ImageDraw.Draw(picture), COLOURS[colour]
    shape = rng.choice(["circle", "square", "triangle"])
    if shape == "circle":
        pen.ellipse((x, y, x + side, y + side), fill=fill)
    elif shape == "square":
        pen.rectangle((x, y, x + side, y + side), fill=fill)
    else:
        pen.polygon([(x + side // 2, y), (x, y + side), (x + side, y + side)], fill=fill)
    return picture


def _colour_rows(root, name: str, count: int, seed: int, blank: bool = False) -> list[str]:
    """Write `count` pictures (colours in turn) and a dataset asking for their colour; return the colours.

    With `blank`, every row shows the same all-white picture instead, with the same question and answer.
    """
    import random

    rng = random.Random(seed)
    (root / name).mkdir()
    colours, rows = [], []
    for i in range(count):
        colour = list(COLOURS)[i % len(COLOURS)]
        image = f"{name}/{i}.png"
        (Image.new("RGB", (TILE, TILE), "white") if blank else _shape(rng, colour)).save(root / image)
        colours.append(colour)
        rows.append({"messages": [{"role": "user", "content": QUESTION},
                                  {"role": "assistant", "content": f"{colour.capitalize()}."}],
                     "images": [image]})
    (root / f"{name}.json").write_text(json.dumps(rows))
    return colours


@pytest.fixture(scope="module")
def colours_dir(tmp_path_factory):
    """256 training pictures, 64 held-out ones drawn with another seed, and the held-out rows blanked."""
    root = tmp_path_factory.mktemp("colours")
    expected = {"train": _colour_rows(root, "train", 256, seed=0),
                "held_out": _colour_rows(root, "held_out", 64, seed=1),
                "blank": _colour_rows(root, "blank", 64, seed=1, blank=True)}
    mapping = {"formatting": "sharegpt", "columns": {"messages": "messages", "images": "images"},
               "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}
    info = {name: {"file_name": f"{name}.json", **mapping} for name in expected}
    (root / "dataset_info.json").write_text(json.dumps(info))
    return root, expected


def _answers(model_dir, vl_dir, data_dir, dataset: str) -> list[str]:
    """The colour the model rates highest as the first answer token of each row of `dataset`.

    The rows go through lmforge's own pipeline as in training (template, placeholder expansion, the
    multimodal collator that makes the pixels and `mm_token_type_ids`), cut before their answer.
    """
    import torch

    from lmforge.commands.common import load_config
    from lmforge.data.collator import MultiModalDataCollator, SFTDataCollator
    from lmforge.data.templates.mm_plugin import get_mm_plugin
    from lmforge.data.pipeline import get_dataset
    from lmforge.data.processors import IGNORE_INDEX
    from lmforge.model.loader import load_model
    from lmforge.model.tokenizer import load_mm_processor, load_tokenizer_and_template, with_model_path

    cfg = load_config("train", [f"model_name_or_path={vl_dir}", "stage=sft", "do_train=true", f"dataset={dataset}",
                                f"dataset_dir={data_dir}", "template=qwen2_vl", "cutoff_len=64",
                                f"output_dir={data_dir / 'unused'}"])
    tokenizer, template = load_tokenizer_and_template(cfg.model, cfg.data)
    processor = load_mm_processor(cfg.model)
    rows = get_dataset(cfg, tokenizer, template, stage="sft", mm_processor=processor).train_dataset
    prompts = []
    for row in rows:
        answer_at = next(i for i, label in enumerate(row["labels"]) if label != IGNORE_INDEX)
        prompts.append({"input_ids": row["input_ids"][:answer_at], "attention_mask": [1] * answer_at,
                        "images": row["images"]})
    assert len({len(prompt["input_ids"]) for prompt in prompts}) == 1  # so no padding: the last position answers
    collator = MultiModalDataCollator(SFTDataCollator.from_tokenizer(tokenizer, pad_to_multiple_of=None),
                                      get_mm_plugin(template.mm_plugin), processor, cfg.data, tokenizer)
    # The answers' first tokens ("Red", "G", "B", "Y" with the tiny tokenizer) tell the colours apart.
    first = [tokenizer(f"{colour.capitalize()}.")["input_ids"][0] for colour in COLOURS]
    assert len(set(first)) == len(COLOURS)
    model = load_model(with_model_path(cfg.model, str(model_dir)), tokenizer, torch.float32, trainable=False)
    with torch.no_grad():
        logits = model(**collator(prompts)).logits[:, -1, first]
    return [list(COLOURS)[i] for i in logits.argmax(-1).tolist()]


def test_the_trained_model_answers_from_the_picture(vl_dir, colours_dir, tmp_path, one_thread):
    """Trained to name a shape's colour, the model names it on pictures it never saw, and not without them.

    Full fine-tuning with the vision tower and the projector unfrozen (`freeze_vision_tower: false`,
    `freeze_multi_modal_projector: false`). LoRA on the language model alone, over the frozen random
    tower, reached 97-100% on some seeds but stayed at 70-75% on others even after 200 steps: that
    tower's output for a coloured shape differs little from its output for the white background.
    Full fine-tuning is at 100% by step 45 on every seed tried; 80 steps leave a margin. Chance is 25%.
    """
    root, expected = colours_dir
    trained_on = {path.read_bytes() for path in (root / "train").iterdir()}
    assert not any(path.read_bytes() in trained_on for path in (root / "held_out").iterdir())
    out = tmp_path / "run"
    train(*[f"{k}={v}" for k, v in {
        "model_name_or_path": vl_dir, "stage": "sft", "do_train": "true", "finetuning_type": "full",
        "freeze_vision_tower": "false", "freeze_multi_modal_projector": "false",
        "dataset": "train", "dataset_dir": root, "template": "qwen2_vl", "cutoff_len": 64, "output_dir": out,
        "per_device_train_batch_size": 16, "learning_rate": "1e-3", "max_steps": 80, "logging_steps": 10,
        "save_steps": 1000, "report_to": "none", "disable_gradient_checkpointing": "true", "seed": 0,
    }.items()])
    seen = _answers(out, vl_dir, root, "held_out")
    blank = _answers(out, vl_dir, root, "blank")
    accuracy = sum(a == b for a, b in zip(seen, expected["held_out"], strict=True)) / len(seen)
    blank_accuracy = sum(a == b for a, b in zip(blank, expected["blank"], strict=True)) / len(blank)
    assert accuracy >= 0.9, (accuracy, seen)
    # One picture for all rows: one answer for all, right for the quarter of rows that have that colour.
    assert len(set(blank)) == 1 and blank_accuracy == 0.25, blank
    # Before training, the answers are the random model's: no better than chance on the same pictures.
    untrained = _answers(vl_dir, vl_dir, root, "held_out")
    assert sum(a == b for a, b in zip(untrained, expected["held_out"], strict=True)) / len(untrained) <= 0.4

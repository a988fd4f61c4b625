"""Qwen2.5-VL through the same code as Qwen2-VL: the tiny model trains on the bundled demos and sees videos in time."""

from __future__ import annotations

import json

import pytest

from tests.conftest import DATA_DIR
from tests.train.conftest import train

pytest.importorskip("av")


@pytest.fixture(scope="module")
def vl25_dir(tmp_path_factory):
    from lmforge.testing.tiny_vl import build_tiny_vl_model

    return build_tiny_vl_model(tmp_path_factory.mktemp("tiny-qwen2_5-vl"), arch="qwen2_5_vl")


def test_the_tiny_model_is_a_qwen2_5_vl(vl25_dir):
    config = json.loads((vl25_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_vl"
    assert config["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]


def test_lora_on_the_demos_adapts_the_language_model_only(vl25_dir, tmp_path):
    out = tmp_path / "run"
    train(*[f"{k}={v}" for k, v in {
        "model_name_or_path": vl25_dir, "stage": "sft", "do_train": "true", "finetuning_type": "lora",
        "dataset": "mllm_demo,mllm_video_demo", "dataset_dir": DATA_DIR, "template": "qwen2_vl", "output_dir": out,
        "per_device_train_batch_size": 4, "max_steps": 2, "save_steps": 100, "report_to": "none",
        "disable_gradient_checkpointing": "true",
    }.items()])
    targets = json.loads((out / "adapter_config.json").read_text())["target_modules"]
    # Qwen2.5-VL's vision blocks have gate/up/down projections of their own; LoRA leaves them alone.
    assert targets and all(name.startswith("model.language_model.") for name in targets), targets
    assert (out / "preprocessor_config.json").is_file()


def test_videos_carry_their_seconds_per_frame_group(vl25_dir):
    import torch

    from lmforge.chat.base import Media
    from lmforge.chat.hf_engine import HFEngine
    from lmforge.chat.media import model_inputs
    from lmforge.config import parse_config

    engine = HFEngine(parse_config("chat", [f"model_name_or_path={vl25_dir}", "template=qwen2_vl",
                                            "do_sample=false", "max_new_tokens=6", "video_fps=2"]))
    question = [{"role": "user", "content": "What happens?"}]
    clips = [Media(videos=(str(DATA_DIR / "mllm_demo_data" / name),)) for name in ("1.mp4", "2.mp4")]
    ids = engine.prompt_ids(question, media=clips[0])
    inputs = model_inputs(engine, [clips[0]], torch.tensor([ids]))
    # 2 frames a second, two frames per temporal patch: each patch spans one second (M-RoPE's time step).
    assert inputs["second_per_grid_ts"].tolist() == [1.0]
    assert engine.tokenizer.decode(ids).count("<|video_pad|>") == int(inputs["video_grid_thw"].prod()) // 4
    answers = [engine.chat(question, media=clip).text for clip in clips] + [engine.chat(question).text]
    assert len(set(answers)) == 3  # each clip, and no clip, gives its own greedy answer

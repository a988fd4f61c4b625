"""`lmforge data preview` and `check` on the bundled image and video demos, with the tiny Qwen2-VL."""

from __future__ import annotations

import json

import pytest

from tests.conftest import DATA_DIR
from tests.data.test_inspect import run

pytest.importorskip("PIL")
pytest.importorskip("av")

VL = "<|vision_start|>{}<|vision_end|>"


@pytest.fixture(scope="module")
def vl_args(tmp_path_factory) -> list[str]:
    from lmforge.testing.tiny_vl import build_tiny_vl_model

    model = build_tiny_vl_model(tmp_path_factory.mktemp("tiny-vl"))
    return [f"model_name_or_path={model}", f"dataset_dir={DATA_DIR}", "template=qwen2_vl", "stage=sft",
            "cutoff_len=512"]


def test_check_keeps_every_row_of_both_demos(capsys, vl_args):
    code, out, _ = run(capsys, "check", *vl_args, "dataset=mllm_demo,mllm_video_demo")
    assert code == 0, out
    lines = out.splitlines()
    assert "  mllm_demo: 4 loaded, 4 kept, 0 dropped" in lines
    assert "  mllm_video_demo: 3 loaded, 3 kept, 0 dropped" in lines
    assert "  7 train samples after tokenization" in lines


def test_preview_shows_each_image_with_its_file_and_token_count(capsys, vl_args):
    code, out, _ = run(capsys, "preview", *vl_args, "dataset=mllm_demo", "--num", "3")
    assert code == 0
    sample = out.split("\n--- sample 3: ")[1].split("\n\nSummary:")[0]
    # Each image's 16 <|image_pad|> tokens are shown as one mark with the file the dataset names.
    assert sample == (
        "mllm_demo row 2 (118 tokens, 48 trained) ---\n"
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n"
        + VL.format("<image: mllm_demo_data/3.png, 16 tokens>")
        + VL.format("<image: mllm_demo_data/1.png, 16 tokens>")
        + "How are these two pictures different?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "[[The first picture shows a green triangle pointing up, the second a red circle in the top left corner. "
        "Both have a white background.<|im_end|>\n]]"
    )
    assert "<|image_pad|>" not in out


def test_preview_json_lists_the_media_of_each_sample(capsys, vl_args):
    code, out, _ = run(capsys, "preview", *vl_args, "dataset=mllm_demo,mllm_video_demo", "--num", "7", "--json")
    assert code == 0
    samples = json.loads(out)["samples"]
    assert [(s["dataset"], s["row"]) for s in samples] == [("mllm_demo", i) for i in range(4)] + [
        ("mllm_video_demo", i) for i in range(3)]
    assert samples[2]["media"] == [{"kind": "image", "file": "mllm_demo_data/3.png", "tokens": 16},
                                   {"kind": "image", "file": "mllm_demo_data/1.png", "tokens": 16}]
    # 4.png is 168x112: the tiny processor's pixel bound scales it to 3 rows of 4 merged patches.
    assert samples[3]["media"] == [{"kind": "image", "file": "mllm_demo_data/4.png", "tokens": 12}]
    # A clip of 8 frames at 4 a second, sampled at video_fps 2: 4 frames, 2 temporal patches of 4x4.
    assert samples[4]["media"] == [{"kind": "video", "file": "mllm_demo_data/1.mp4", "tokens": 32}]
    assert samples[4]["text"].count(VL.format("<video: mllm_demo_data/1.mp4, 32 tokens>")) == 1

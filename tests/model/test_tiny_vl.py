"""The tiny Qwen2-VL checkpoint and the torchvision-free processor, end to end on CPU."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge.errors import UserError
from lmforge.model.vl_processor import (
    Qwen2_5_VLPilProcessor,
    Qwen2VLPilProcessor,
    frames_to_inputs,
    image_seqlen,
    load_processor,
    read_video,
    register,
    video_inputs,
)
from lmforge.testing.tiny_vl import (
    MAX_PIXELS,
    MIN_PIXELS,
    VISION_TOKENS,
    build_tiny_vl_model,
)

av = pytest.importorskip("av")
Image = pytest.importorskip("PIL.Image")

IMAGE_PROMPT = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is it?"}]}]
VIDEO_PROMPT = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What moves?"}]}]


@pytest.fixture(scope="module")
def vl_dir(tmp_path_factory) -> Path:
    return build_tiny_vl_model(tmp_path_factory.mktemp("tiny-vl"))


@pytest.fixture(scope="module")
def processor(vl_dir):
    return load_processor(vl_dir)


@pytest.fixture(scope="module")
def model(vl_dir):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(vl_dir, dtype=torch.float32)


def red_square() -> Image.Image:
    image = Image.new("RGB", (56, 56), "white")
    image.paste((255, 0, 0), (14, 14, 42, 42))
    return image


def moving_square_frames(n: int, size: int = 56) -> list[np.ndarray]:
    frames = []
    for i in range(n):
        frame = np.full((size, size, 3), 255, np.uint8)
        frame[8:40, 4 + 4 * i : 36 + 4 * i] = (255, 0, 0)
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def video_path(tmp_path_factory) -> Path:
    """Four frames at 2 fps in an MPEG-4 .mp4: two seconds, so fps=2 keeps every frame."""
    path = tmp_path_factory.mktemp("video") / "square.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=2)
        stream.width = stream.height = 56
        stream.pix_fmt = "yuv420p"
        for frame in moving_square_frames(4):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_folder_loads_with_the_auto_classes(vl_dir):
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

    tokenizer = AutoTokenizer.from_pretrained(vl_dir)
    config = AutoConfig.from_pretrained(vl_dir)
    assert config.model_type == "qwen2_vl"
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    for token in [*VISION_TOKENS, "<|im_start|>", "<|im_end|>", "<|endoftext|>"]:
        assert tokenizer.tokenize(token) == [token]
    image_processor = AutoImageProcessor.from_pretrained(vl_dir)
    assert image_processor.size["shortest_edge"] == MIN_PIXELS
    assert image_processor.size["longest_edge"] == MAX_PIXELS
    assert type(AutoModelForImageTextToText.from_pretrained(vl_dir)).__name__ == "Qwen2VLForConditionalGeneration"
    register()
    register()  # idempotent
    assert isinstance(AutoProcessor.from_pretrained(vl_dir), Qwen2VLPilProcessor)


def test_chat_template_renders_vision_placeholders(processor):
    text = processor.apply_chat_template(IMAGE_PROMPT + VIDEO_PROMPT, add_generation_prompt=True, tokenize=False)
    assert "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What color is it?<|im_end|>\n" in text
    assert "<|vision_start|><|video_pad|><|vision_end|>What moves?" in text
    assert text.endswith("<|im_start|>assistant\n")


def image_batch(processor):
    text = processor.apply_chat_template(IMAGE_PROMPT, add_generation_prompt=True, tokenize=False)
    return processor(text=[text], images=[red_square()], return_tensors="pt")


def test_image_placeholder_expands_to_image_seqlen(processor):
    batch = image_batch(processor)
    grid = batch["image_grid_thw"][0]
    n_pad = int((batch["input_ids"] == processor.image_token_id).sum())
    assert n_pad == image_seqlen(grid, processor.image_processor.merge_size) == 4  # 56x56: a 2x2 merged grid
    assert batch["pixel_values"].shape[0] == int(grid.prod())
    assert (batch["mm_token_type_ids"] == 1).sum() == n_pad


def test_image_forward_backward_and_generate(processor, model):
    batch = image_batch(processor)
    model.zero_grad()
    out = model(**batch, labels=batch["input_ids"])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.get_output_embeddings().weight.grad.abs().sum() > 0
    with torch.no_grad():
        generated = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > batch["input_ids"].shape[1]


def test_video_inputs_from_an_mp4(processor, video_path):
    data = video_inputs(processor, [video_path], fps=2.0)
    assert data["video_grid_thw"].tolist() == [[2, 4, 4]]  # 4 frames in 2 temporal patches of 4x4
    assert data["pixel_values_videos"].shape == (32, 3 * 2 * 14 * 14)
    # At one frame a second only two of the four frames are kept: one temporal patch.
    assert video_inputs(processor, [video_path], fps=1.0)["video_grid_thw"].tolist() == [[1, 4, 4]]
    assert read_video(video_path, fps=2.0, maxlen=3).frames.shape[0] == 3


def test_video_forward_through_the_processor(processor, model, video_path):
    text = processor.apply_chat_template(VIDEO_PROMPT, add_generation_prompt=True, tokenize=False)
    batch = processor(text=[text], videos=[str(video_path)], return_tensors="pt")
    n_pad = int((batch["input_ids"] == processor.video_token_id).sum())
    assert n_pad == image_seqlen(batch["video_grid_thw"][0], processor.image_processor.merge_size)
    assert (batch["mm_token_type_ids"] == 2).sum() == 8
    direct = video_inputs(processor, [video_path])
    assert torch.equal(batch["pixel_values_videos"], direct["pixel_values_videos"])
    out = model(**batch, labels=batch["input_ids"])
    assert torch.isfinite(out.loss)


def test_video_frames_are_grouped_like_the_vision_tower_expects(processor):
    """Each temporal patch holds (C, frame, p, p): slot k of a patch is frame k's image patch."""
    image_processor = processor.image_processor
    frames = moving_square_frames(3)  # odd: the last frame is repeated to fill the second patch
    video = frames_to_inputs(image_processor, [np.stack(frames)], MAX_PIXELS, MIN_PIXELS)
    assert video["video_grid_thw"].tolist() == [[2, 4, 4]]
    per_patch = video["pixel_values_videos"].reshape(2, 16, 3, 2, 14 * 14)
    for i, frame in enumerate([*frames, frames[-1]]):
        # The image processor repeats a still image over both slots of its single temporal patch.
        still = image_processor(frame, return_tensors="np")["pixel_values"].reshape(16, 3, 2, 14 * 14)[:, :, 0]
        np.testing.assert_allclose(per_patch[i // 2, :, :, i % 2], still, atol=1e-6)


def test_build_is_deterministic(vl_dir, tmp_path):
    again = build_tiny_vl_model(tmp_path / "again")
    names = sorted(p.name for p in vl_dir.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert _sha256(vl_dir / name) == _sha256(again / name), name


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_load_processor_errors_are_one_liners(vl_dir, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_processor(tmp_path / "missing")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((vl_dir / "config.json").read_text())
    with pytest.raises(UserError, match="no image processor config"):
        load_processor(partial)
    (partial / "preprocessor_config.json").write_text((vl_dir / "preprocessor_config.json").read_text())
    with pytest.raises(UserError, match="no tokenizer"):
        load_processor(partial)
    (partial / "tokenizer.json").write_text("{}")
    (partial / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(UserError, match="'llama' model"):
        load_processor(partial)
    (partial / "config.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not a valid JSON object"):
        load_processor(partial)


def test_a_saved_processor_loads_again(processor, vl_dir, tmp_path):
    """transformers 5 saves the image processor inside processor_config.json, not preprocessor_config.json."""
    processor.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text((vl_dir / "config.json").read_text())
    again = load_processor(tmp_path)
    assert isinstance(again, Qwen2VLPilProcessor)
    assert image_batch(again)["input_ids"].tolist() == image_batch(processor)["input_ids"].tolist()


def test_qwen2_5_vl_processor_times_its_temporal_patches(vl_dir, video_path):
    text = "<|vision_start|><|video_pad|><|vision_end|>"
    qwen2 = Qwen2VLPilProcessor.from_pretrained(vl_dir)(text=[text], videos=[str(video_path)])
    assert "second_per_grid_ts" not in qwen2  # Qwen2-VL's forward takes no such argument
    qwen2_5 = Qwen2_5_VLPilProcessor.from_pretrained(vl_dir)(text=[text], videos=[str(video_path)])
    assert list(qwen2_5["second_per_grid_ts"]) == [1.0]  # two frames a temporal patch at two frames a second


def test_unreadable_video_is_a_user_error(processor, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        video_inputs(processor, [tmp_path / "nope.mp4"])
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    with pytest.raises(UserError, match="Cannot decode video"):
        video_inputs(processor, [junk])

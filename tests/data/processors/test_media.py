"""SFT rows with images: placeholders become Qwen2-VL vision tokens, and each bad row is dropped with its reason."""

from __future__ import annotations

import pytest

from lmforge.data.processors import get_processor
from lmforge.data.templates import get_template

Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def vl_dir(tmp_path_factory):
    from lmforge.testing.tiny_vl import build_tiny_vl_model

    return build_tiny_vl_model(tmp_path_factory.mktemp("tiny-vl"))


@pytest.fixture(scope="module")
def mm_processor(vl_dir):
    from lmforge.model.vl_processor import load_processor

    return load_processor(vl_dir)


@pytest.fixture()
def qwen2_vl(vl_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(vl_dir)
    template = get_template("qwen2_vl", tokenizer)
    template.fix_tokenizer(tokenizer)
    return template, tokenizer


@pytest.fixture()
def image(tmp_path):
    """`image(name, size)` -> the path of a red square on white, `size` pixels a side."""

    def make(name="square.png", size=56):
        path = tmp_path / name
        picture = Image.new("RGB", (size, size), "white")
        picture.paste((255, 0, 0), (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
        picture.save(path)
        return str(path)

    return make


def media_row(aligned, conversation, images=None, **kwargs):
    return {**aligned(conversation, **kwargs), "_images": images}


def test_image_placeholder_becomes_vision_tokens(qwen2_vl, mm_processor, aligned, rows_dataset, make_args, run_map,
                                                 image):
    template, tokenizer = qwen2_vl
    rows = [media_row(aligned, ["<image>What is this?", "A square."], [image()])]
    processor = get_processor("sft", make_args(), template, tokenizer, mm_processor=mm_processor)
    out = run_map(processor, rows_dataset(rows))
    assert out["_drop"] == [""]
    ids = out[0]["input_ids"]
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    # 56x56 -> a 4x4 patch grid, merged 2x2: four tokens between the vision markers.
    expected = "<|vision_start|>" + "<|image_pad|>" * 4 + "<|vision_end|>What is this?"
    assert expected in tokenizer.decode(ids, skip_special_tokens=False)
    assert ids.count(pad) == 4
    assert all(label == -100 for token, label in zip(ids, out[0]["labels"], strict=True) if token == pad)
    assert out[0]["images"] == rows[0]["_images"] and out[0]["videos"] == []


def test_vision_tokens_are_never_trained_even_with_train_on_prompt(qwen2_vl, mm_processor, aligned, rows_dataset,
                                                                    make_args, run_map, image):
    template, tokenizer = qwen2_vl
    rows = [media_row(aligned, ["<image>What is this?", "A square."], [image()])]
    processor = get_processor("sft", make_args(train_on_prompt=True), template, tokenizer, mm_processor=mm_processor)
    out = run_map(processor, rows_dataset(rows))[0]
    vision = {tokenizer.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")}
    masked = [token for token, label in zip(out["input_ids"], out["labels"], strict=True) if label == -100]
    assert sorted(masked) == sorted(token for token in out["input_ids"] if token in vision)  # only those, all of them
    assert len(masked) == 6


def test_each_bad_row_is_dropped_with_its_reason_and_row(qwen2_vl, mm_processor, aligned, rows_dataset, make_args,
                                                         run_map, image, tmp_path):
    template, tokenizer = qwen2_vl
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    rows = [
        media_row(aligned, ["<image>What is this?", "A square."], [image()]),  # kept
        media_row(aligned, ["<image><image>Two?", "One."], [image()]),  # 2 placeholders, 1 image
        media_row(aligned, ["No placeholder.", "Hm."], [image()]),  # 0 placeholders, 1 image
        media_row(aligned, ["<image>Where?", "Gone."], [str(tmp_path / "missing.png")]),
        media_row(aligned, ["<image>Broken?", "Yes."], [str(broken)]),
        media_row(aligned, ["<image>Text only, but a placeholder.", "Hm."], None),  # 1 placeholder, 0 images
        media_row(aligned, ["Just text.", "Fine."], None),  # kept: text rows train beside image rows
    ]
    processor = get_processor("sft", make_args(), template, tokenizer, mm_processor=mm_processor)
    out = run_map(processor, rows_dataset(rows))
    assert list(zip(out["_row"], out["_drop"], strict=True)) == [
        (0, ""),
        (1, "media_count_mismatch"),
        (2, "media_count_mismatch"),
        (3, "missing_media"),
        (4, "missing_media"),
        (5, "media_count_mismatch"),
        (6, ""),
    ]
    assert out[6]["images"] == [] and out[6]["input_ids"]


def test_a_template_without_a_plugin_drops_image_rows(llama3, aligned, rows_dataset, make_args, run_map, image,
                                                      caplog):
    template, tokenizer = llama3
    rows = [media_row(aligned, ["<image>What is this?", "A cat."], [image()], dataset="mllm_demo"),
            media_row(aligned, ["What is this?", "A cat."], None, dataset="mllm_demo")]
    out = run_map(get_processor("sft", make_args(), template, tokenizer), rows_dataset(rows))
    assert list(zip(out["_row"], out["_drop"], strict=True)) == [(0, "unsupported_media"), (1, "")]
    assert "Template 'llama3' does not support images: rows with images are dropped (unsupported_media)." in caplog.text


def test_cutoff_len_never_cuts_inside_the_vision_tokens(qwen2_vl, mm_processor, aligned, rows_dataset, make_args,
                                                        run_map, image):
    template, tokenizer = qwen2_vl
    # A 112x112 image is 16 vision tokens; the system turn and the header already take more than 16 tokens.
    rows = [media_row(aligned, ["<image>What is this?", "A square."], [image(size=112)]),
            media_row(aligned, ["Long enough text to fill most of the budget here.", "Short."], None)]
    processor = get_processor("sft", make_args(cutoff_len=24), template, tokenizer, mm_processor=mm_processor)
    out = run_map(processor, rows_dataset(rows))
    assert list(zip(out["_row"], out["_drop"], strict=True)) == [(0, "vision_tokens_cut"), (1, "")]
    assert len(out[1]["input_ids"]) == 24  # text rows are still truncated as before


def test_placeholders_follow_the_environment(qwen2_vl, mm_processor, aligned, rows_dataset, make_args, run_map,
                                             image, monkeypatch):
    template, tokenizer = qwen2_vl
    monkeypatch.setenv("IMAGE_PLACEHOLDER", "[img]")
    rows = [media_row(aligned, ["[img]What is this?", "A square."], [image()]),
            media_row(aligned, ["<image>What is this?", "A square."], [image()])]
    processor = get_processor("sft", make_args(), template, tokenizer, mm_processor=mm_processor)
    out = run_map(processor, rows_dataset(rows))
    assert out["_drop"] == ["", "media_count_mismatch"]


def test_packing_still_refuses_media_rows(qwen2_vl, mm_processor, aligned, rows_dataset, make_args, image):
    from lmforge.errors import UserError

    template, tokenizer = qwen2_vl
    rows = [media_row(aligned, ["<image>What is this?", "A square."], [image()], dataset="mllm_demo")]
    processor = get_processor("sft", make_args(packing=True), template, tokenizer, mm_processor=mm_processor)
    with pytest.raises(UserError, match="Dataset 'mllm_demo' row 0 has images"):
        processor.process(rows_dataset(rows)[:1])


def test_video_rows_and_the_collator_feed_the_model(qwen2_vl, mm_processor, vl_dir, aligned, rows_dataset, make_args,
                                                    run_map, image, tmp_path):
    """A video row, an image row and a text row: one batch whose pixels and token types the model accepts."""
    av = pytest.importorskip("av")
    import numpy as np
    import torch
    from transformers import AutoModelForImageTextToText

    from lmforge.data.collator import MultiModalDataCollator, SFTDataCollator
    from lmforge.data.templates.mm_plugin import get_mm_plugin

    video = tmp_path / "moving.mp4"
    with av.open(str(video), "w") as container:  # four 56x56 frames at 2 fps: fps 2.0 keeps them all
        stream = container.add_stream("mpeg4", rate=2)
        stream.width = stream.height = 56
        stream.pix_fmt = "yuv420p"
        for i in range(4):
            frame = np.full((56, 56, 3), 255, np.uint8)
            frame[8:40, 4 + 4 * i : 36 + 4 * i] = (255, 0, 0)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    template, tokenizer = qwen2_vl
    rows = [{**aligned(["<video>What moves?", "A square."]), "_videos": [str(video)]},
            media_row(aligned, ["<image>What is this?", "A square."], [image()]),
            media_row(aligned, ["Just text.", "Fine."], None)]
    data_args = make_args()
    out = run_map(get_processor("sft", data_args, template, tokenizer, mm_processor=mm_processor), rows_dataset(rows))
    assert out["_drop"] == ["", "", ""]
    # 4 frames -> 2 temporal patches of a 4x4 grid, merged 2x2: 8 video tokens.
    assert out[0]["input_ids"].count(tokenizer.convert_tokens_to_ids("<|video_pad|>")) == 8

    collate = MultiModalDataCollator(SFTDataCollator.from_tokenizer(tokenizer), get_mm_plugin("qwen2_vl"),
                                     mm_processor, data_args, tokenizer)
    batch = collate([{k: out[i][k] for k in out.column_names if not k.startswith("_")} for i in range(3)])
    assert batch["video_grid_thw"].tolist() == [[2, 4, 4]] and batch["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert (batch["mm_token_type_ids"] == 2).sum() == 8 and (batch["mm_token_type_ids"] == 1).sum() == 4
    model = AutoModelForImageTextToText.from_pretrained(vl_dir, dtype=torch.float32)
    assert torch.isfinite(model(**batch).loss)

"""The inference engine with images: prompts, batches, the terminal chat and batch prediction on the tiny Qwen2-VL.

The model is random, but its greedy answer depends on the pixels, so every check compares an answer
with the one the same image gives alone, or without the image.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lmforge.errors import UserError

Image = pytest.importorskip("PIL.Image")

QUESTION = [{"role": "user", "content": "What colour is the shape?"}]


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    root = tmp_path_factory.mktemp("pictures")
    for colour in ("red", "blue", "green"):
        Image.new("RGB", (56, 56), colour).save(root / f"{colour}.png")
    return root


@pytest.fixture(scope="module")
def engine(tiny_vl_dir):
    from lmforge.chat.hf_engine import HFEngine
    from lmforge.config import parse_config

    return HFEngine(parse_config("chat", [f"model_name_or_path={tiny_vl_dir}", "template=qwen2_vl",
                                          "do_sample=false", "max_new_tokens=6"]))


def media(*images):
    from lmforge.chat.base import Media

    return Media(images=tuple(str(image) for image in images))


def test_the_prompt_holds_the_images_vision_tokens(engine, pictures):
    ids = engine.prompt_ids(QUESTION, media=media(pictures / "red.png"))
    text = engine.tokenizer.decode(ids)
    # A 56x56 image is a 2x2 grid of merged patches: four pad tokens, in front of the question.
    assert "<|im_start|>user\n<|vision_start|>" + "<|image_pad|>" * 4 + "<|vision_end|>What colour is the shape?" \
        in text
    # A placeholder written in the message puts the image there instead.
    ids = engine.prompt_ids([{"role": "user", "content": "Look: <image> What colour?"}],
                            media=media(pictures / "red.png"))
    assert "Look: <|vision_start|>" in engine.tokenizer.decode(ids)


def test_answers_depend_on_the_image_and_batches_keep_each_rows_image(engine, pictures):
    alone = {colour: engine.chat(QUESTION, media=media(pictures / f"{colour}.png")).text
             for colour in ("red", "blue", "green")}
    text_only = engine.chat(QUESTION).text
    assert len(set(alone.values()) | {text_only}) > 2
    rows = [("red",), (), ("green",), ("blue",)]
    prompts = [engine.prompt_ids(QUESTION, media=media(*(pictures / f"{c}.png" for c in row)) if row else None)
               for row in rows]
    batch = engine.generate_batch(prompts, media=[media(*(pictures / f"{c}.png" for c in row)) if row else None
                                                  for row in rows])
    assert [r.text for r in batch] == [alone["red"], text_only, alone["green"], alone["blue"]]
    streamed = "".join(engine.stream_chat(QUESTION, media=media(pictures / "blue.png")))
    assert streamed == alone["blue"]


def test_media_problems_are_user_errors(engine, pictures, tiny_llama_dir):
    with pytest.raises(UserError, match=r"^Image file '.*/nope.png' does not exist\.$"):
        engine.prompt_ids(QUESTION, media=media(pictures / "nope.png"))
    with pytest.raises(UserError, match=r"^The conversation has 1 <image> placeholder\(s\) but 2 images; give one "):
        engine.prompt_ids([{"role": "user", "content": "<image> What?"}],
                          media=media(pictures / "red.png", pictures / "blue.png"))
    from lmforge.chat.hf_engine import HFEngine
    from lmforge.config import parse_config

    text_model = HFEngine(parse_config("chat", [f"model_name_or_path={tiny_llama_dir}", "template=qwen2_vl"]))
    with pytest.raises(UserError, match=r"is a text-only model and cannot read images; serve a vision-language"):
        text_model.prompt_ids(QUESTION, media=media(pictures / "red.png"))


def test_terminal_chat_attaches_images(engine, pictures, tiny_vl_dir):
    red = engine.chat(QUESTION, media=media(pictures / "red.png")).text
    follow_up = [*QUESTION, {"role": "assistant", "content": red}, {"role": "user", "content": "And this one?"}]
    both = engine.chat([{**QUESTION[0], "content": "<image>" + QUESTION[0]["content"]}, follow_up[1],
                        {"role": "user", "content": "<image>And this one?"}],
                       media=media(pictures / "red.png", pictures / "blue.png")).text
    script = (f"/image {pictures / 'red.png'}\n{QUESTION[0]['content']}\n/image {pictures / 'missing.png'}\n"
              f"/image {pictures / 'blue.png'}\nAnd this one?\n")
    result = subprocess.run([sys.executable, "-m", "lmforge", "chat", f"model_name_or_path={tiny_vl_dir}",
                             "template=qwen2_vl", "do_sample=false", "max_new_tokens=6"], input=script,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [red.replace("\n", "\\n"), both.replace("\n", "\\n")]
    assert f"Error: Image file '{pictures / 'missing.png'}' does not exist." in result.stderr


def test_predict_on_an_image_dataset(tiny_vl_dir, pictures, tmp_path, engine):
    rows = [{"messages": [{"role": "user", "content": "<image>What colour is the shape?"},
                          {"role": "assistant", "content": colour}], "images": [f"{colour}.png"]}
            for colour in ("red", "blue")]
    rows.append({"messages": [{"role": "user", "content": "<image>What colour is the shape?"},
                              {"role": "assistant", "content": "none"}], "images": ["gone.png"]})
    (pictures / "colours.json").write_text(json.dumps(rows))
    (pictures / "dataset_info.json").write_text(json.dumps({"colours": {
        "file_name": "colours.json", "formatting": "sharegpt", "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}))
    out = tmp_path / "predict"
    result = subprocess.run([sys.executable, "-m", "lmforge", "train", f"model_name_or_path={tiny_vl_dir}",
                             "template=qwen2_vl", "stage=sft", "do_predict=true", "predict_with_generate=true",
                             "eval_dataset=colours", f"dataset_dir={pictures}", f"output_dir={out}",
                             "max_new_tokens=6", "do_sample=false", "per_device_eval_batch_size=2"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in (out / "generated_predictions.jsonl").read_text().splitlines()]
    assert [line["label"].strip() for line in lines] == ["red", "blue"]
    assert all(("<|vision_start|>" + "<|image_pad|>" * 4 + "<|vision_end|>") in line["prompt"] for line in lines)
    for line, colour in zip(lines, ("red", "blue")):
        assert line["predict"] == engine.chat(QUESTION, media=media(pictures / f"{colour}.png")).text
    results = json.loads((out / "predict_results.json").read_text())
    assert results["predict_samples"] == 2 and results["predict_dropped_samples"] == 1
    assert "missing_media" in result.stderr

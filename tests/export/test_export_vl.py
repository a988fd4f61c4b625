"""`lmforge export` of the tiny Qwen2-VL: weights with the processor files, merged == adapter on the fly for an image
prompt, the export loads and trains as a base model, and what a vision model cannot be exported to is refused."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.export.conftest import export
from tests.train.conftest import train
from tests.train.test_sft_vl import SHAPES, draw

FILES = ["chat_template.jinja", "config.json", "generation_config.json", "lmforge_export.json", "model.safetensors",
         "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"]
QUESTION = "What is in the picture?"


@pytest.fixture(scope="module")
def vl_dir(tmp_path_factory):
    from lmforge.testing.tiny_vl import build_tiny_vl_model

    return build_tiny_vl_model(tmp_path_factory.mktemp("tiny-vl"))


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    """Six generated shape images and a sharegpt dataset asking what each one shows."""
    root = tmp_path_factory.mktemp("shapes")
    rows = []
    for i, (color, shape) in enumerate(SHAPES):
        draw(color, shape).save(root / f"{i}.png")
        rows.append({"messages": [{"role": "user", "content": f"<image>{QUESTION}"},
                                  {"role": "assistant", "content": f"A {color} {shape}."}],
                     "images": [f"{i}.png"]})
    (root / "shapes.json").write_text(json.dumps(rows))
    (root / "dataset_info.json").write_text(json.dumps({"shapes": {
        "file_name": "shapes.json", "formatting": "sharegpt", "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}))
    return root


def train_vl(model_dir, shapes_dir, out, **overrides):
    settings = {"model_name_or_path": model_dir, "stage": "sft", "do_train": "true", "finetuning_type": "lora",
                "dataset": "shapes", "dataset_dir": shapes_dir, "template": "qwen2_vl", "cutoff_len": 128,
                "output_dir": out, "per_device_train_batch_size": 3, "learning_rate": "1e-2", "max_steps": 8,
                "logging_steps": 1, "save_steps": 100, "report_to": "none", "disable_gradient_checkpointing": "true",
                "seed": 0, **overrides}
    train(*[f"{k}={v}" for k, v in settings.items()])
    return out


@pytest.fixture(scope="module")
def lora_run(vl_dir, shapes_dir, tmp_path_factory):
    return train_vl(vl_dir, shapes_dir, tmp_path_factory.mktemp("vl-lora") / "run")


@pytest.fixture(scope="module")
def vl_export(vl_dir, lora_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("vl-export") / "merged"
    assert export(f"model_name_or_path={vl_dir}", f"adapter_name_or_path={lora_run}", "template=qwen2_vl",
                  "finetuning_type=lora", f"export_dir={out}") == 0
    return out


def image_batch(model_dir, image):
    """The generation prompt for one image, built as training builds rows: the template encoding with the plugin's
    vision tokens, and the collator's pixels, grid and mm_token_type_ids."""
    from transformers import AutoTokenizer

    from lmforge.config import DataArguments
    from lmforge.data.collator import MultiModalDataCollator, SFTDataCollator
    from lmforge.data.templates.mm_plugin import get_mm_plugin
    from lmforge.data.templates import get_template
    from lmforge.model.vl_processor import load_processor

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template, processor, plugin, data_args = get_template("qwen2_vl", tokenizer), load_processor(model_dir), \
        get_mm_plugin("qwen2_vl"), DataArguments()
    media = plugin.media_tokens([image], [], processor, data_args)
    messages = [{"role": "user", "content": f"<image>{QUESTION}"}, {"role": "assistant", "content": ""}]
    prompt, _ = template.encode_multiturn(tokenizer, messages, media=media)[0]
    collator = MultiModalDataCollator(SFTDataCollator.from_tokenizer(tokenizer, pad_to_multiple_of=None), plugin,
                                      processor, data_args, tokenizer)
    return collator([{"input_ids": prompt, "attention_mask": [1] * len(prompt), "images": [str(image)]}])


def greedy(model, batch, max_new_tokens: int = 8) -> list[int]:
    import torch

    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    return out[0, batch["input_ids"].shape[1]:].tolist()


def test_vl_export_folder_holds_the_weights_tokenizer_and_processor_files(vl_export, vl_dir, lora_run):
    assert sorted(p.name for p in vl_export.iterdir()) == FILES  # no Modelfile: no GGUF, no images in Ollama's TEMPLATE
    assert not list(vl_export.parent.glob(".staging-*"))
    assert (vl_export / "preprocessor_config.json").read_bytes() == (vl_dir / "preprocessor_config.json").read_bytes()
    config = json.loads((vl_export / "config.json").read_text())
    assert (config["architectures"], config["model_type"]) == (["Qwen2VLForConditionalGeneration"], "qwen2_vl")
    described = json.loads((vl_export / "lmforge_export.json").read_text())
    assert sorted(described["files"]) == FILES
    assert (described["template"], described["adapter_name_or_path"]) == ("qwen2_vl", [str(lora_run)])


def test_merged_vl_export_and_adapter_on_the_fly_give_the_same_greedy_tokens(vl_export, vl_dir, lora_run,
                                                                              shapes_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    merged = AutoModelForImageTextToText.from_pretrained(vl_export).eval()
    on_the_fly = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(vl_dir), lora_run).eval()
    assert any("lora_A" in name for name, _ in on_the_fly.named_parameters())  # unmerged
    base = AutoModelForImageTextToText.from_pretrained(vl_dir).eval()
    for image in ("0.png", "4.png"):
        batch = image_batch(vl_export, shapes_dir / image)
        assert (batch["mm_token_type_ids"] == 1).sum() == (batch["input_ids"] == merged.config.image_token_id).sum() > 0
        tokens = greedy(merged, batch)
        assert tokens == greedy(on_the_fly, batch)
        assert tokens != greedy(base, batch)  # the adapter is in the merged weights
        with torch.inference_mode():
            torch.testing.assert_close(merged(**batch).logits, on_the_fly(**batch).logits, atol=1e-4, rtol=1e-4)


def test_vl_export_loads_with_the_processor_and_renders_images_like_the_template(vl_export, shapes_dir):
    from PIL import Image

    from lmforge.model.vl_processor import load_processor

    processor = load_processor(vl_export)
    assert processor.chat_template == processor.tokenizer.chat_template
    batch = image_batch(vl_export, shapes_dir / "0.png")
    image = Image.open(shapes_dir / "0.png").convert("RGB")
    # transformers' own path: the exported chat template reads the image part, the processor expands its token.
    inputs = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": QUESTION}]}],
        add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    for key in ("input_ids", "pixel_values", "image_grid_thw", "mm_token_type_ids"):
        assert inputs[key].tolist() == batch[key].tolist(), key


def test_lmforge_trains_on_the_vl_export(vl_export, shapes_dir, tmp_path):
    out = train_vl(vl_export, shapes_dir, tmp_path / "again", max_steps=2)
    assert (out / "adapter_model.safetensors").is_file()
    assert json.loads((out / "lmforge_run.json").read_text())["model_name_or_path"] == str(vl_export)


def test_export_size_shards_the_vl_weights(vl_export, lora_run, shapes_dir, tmp_path):
    import torch
    from transformers import AutoModelForImageTextToText

    out = tmp_path / "sharded"
    assert export(f"model_name_or_path={lora_run}", f"export_dir={out}", "export_size=0.001") == 0
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) >= 2 and all(p.stat().st_size <= 1_200_000 for p in out.glob("model-*.safetensors"))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*(f for f in FILES if f != "model.safetensors"), "model.safetensors.index.json", *shards])
    batch = image_batch(out, shapes_dir / "2.png")
    with torch.inference_mode():
        sharded = AutoModelForImageTextToText.from_pretrained(out)(**batch).logits
        whole = AutoModelForImageTextToText.from_pretrained(vl_export)(**batch).logits
    assert torch.equal(sharded, whole)


def test_full_finetuned_vl_run_exports_its_weights_with_the_base_processor_files(vl_dir, shapes_dir, tmp_path):
    from safetensors.torch import load_file

    run = train_vl(vl_dir, shapes_dir, tmp_path / "full", finetuning_type="full", learning_rate="1e-4", max_steps=1)
    # Training saves the processor configs with the weights; a folder without them (copied without them, or
    # written by another tool) gets them from the base model its run file records.
    (run / "preprocessor_config.json").unlink()
    out = tmp_path / "exported"
    assert export(f"model_name_or_path={run}", f"export_dir={out}") == 0
    assert sorted(p.name for p in out.iterdir()) == FILES
    assert (out / "preprocessor_config.json").read_bytes() == (vl_dir / "preprocessor_config.json").read_bytes()
    trained, exported = load_file(str(run / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert trained.keys() == exported.keys() and all((trained[k] == exported[k]).all() for k in trained)


def _refused(capsys) -> str:
    """The error a refused export printed: one line, no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


@pytest.fixture()
def no_weights_load(monkeypatch):
    """Fail the test if an export gets as far as loading weights."""
    def loaded(*args, **kwargs):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr("lmforge.model.loader.load_model", loaded)
    monkeypatch.setattr("lmforge.export.merge.load_merged", loaded)


@pytest.mark.parametrize("formats", ["gguf", "safetensors,gguf"])
def test_gguf_export_of_a_vision_model_is_refused_before_loading(formats, vl_dir, lora_run, tmp_path, capsys,
                                                                  no_weights_load):
    out = tmp_path / "out"
    assert export(f"model_name_or_path={lora_run}", f"export_dir={out}", f"export_format={formats}") == 1
    assert _refused(capsys) == (
        "lmforge export: error: 'qwen2_vl' is a vision-language model, and lmforge cannot export vision models to "
        "GGUF yet (llama.cpp needs the vision tower in a separate mmproj file). Export with export_format: "
        "safetensors instead; llama.cpp's convert_hf_to_gguf.py (with --mmproj) can convert that folder.\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_gptq_export_of_a_vision_model_is_refused_before_loading(vl_dir, tmp_path, capsys, no_weights_load):
    out = tmp_path / "out"
    assert export(f"model_name_or_path={vl_dir}", "template=qwen2_vl", f"export_dir={out}",
                  "export_quantization_bit=4", "export_quantization_dataset=data/pretrain_demo.jsonl") == 1
    assert _refused(capsys) == (
        "lmforge export: error: 'qwen2_vl' is a vision-language model, and export_quantization_bit (GPTQ) quantizes "
        "text-only models. Remove export_quantization_bit to export the merged weights as safetensors.\n")
    assert not out.exists()


def test_vision_model_without_processor_config_is_refused_before_loading(vl_dir, tmp_path, capsys, no_weights_load):
    model = tmp_path / "model"
    shutil.copytree(vl_dir, model)
    (model / "preprocessor_config.json").unlink()
    assert export(f"model_name_or_path={model}", "template=qwen2_vl", f"export_dir={tmp_path / 'out'}") == 1
    assert _refused(capsys) == (
        f"lmforge export: error: '{model}' is a vision-language model without an image processor config "
        "(preprocessor_config.json or processor_config.json), so its export could not read images. Copy "
        f"preprocessor_config.json from the original model into '{model}'.\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

"""What `lmforge export` refuses, and that a failed export never leaves a half-written folder."""

from __future__ import annotations

import json

import pytest

from tests.export.conftest import export


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_non_empty_export_dir_is_refused_unless_overwrite(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert export(f"model_name_or_path={tiny_llama_dir}", "template=llama3", f"export_dir={out}") == 1
    assert _error(capsys) == (
        f"lmforge export: error: export_dir '{out}' is not empty (notes.txt). Set overwrite: true to replace it, "
        "or choose another export_dir.\n"
    )
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert export(f"model_name_or_path={tiny_llama_dir}", "template=llama3", f"export_dir={out}", "overwrite=true") == 0
    assert "notes.txt" not in [p.name for p in out.iterdir()] and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left behind


def test_export_dir_may_not_hold_the_model(tiny_llama_dir, capsys):
    assert export(f"model_name_or_path={tiny_llama_dir}", "template=llama3", f"export_dir={tiny_llama_dir}",
                  "overwrite=true") == 1
    assert f"export_dir '{tiny_llama_dir}' holds the model being exported ('{tiny_llama_dir}'); choose another " \
           "export_dir." in _error(capsys)


def _broken_tokenizer_model(tiny_llama_dir, folder):
    """The tiny Llama with a whitespace pre-tokenizer, which no GGUF pre-tokenizer name describes."""
    import shutil

    shutil.copytree(tiny_llama_dir, folder)
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Whitespace"}
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    return folder


def test_a_failed_export_keeps_the_previous_folder_intact(tiny_llama_dir, tmp_path, capsys):
    source = _broken_tokenizer_model(tiny_llama_dir, tmp_path / "model")
    out = tmp_path / "out"
    assert export(f"model_name_or_path={tiny_llama_dir}", "template=llama3", f"export_dir={out}") == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # The GGUF writer fails after the merged weights are already written into the staging folder.
    assert export(f"model_name_or_path={source}", "template=llama3", f"export_dir={out}", "overwrite=true",
                  "export_format=safetensors,gguf") == 1
    assert "GGUF export supports byte-level BPE tokenizers that split text like GPT-2, Llama 3 or Qwen2" in _error(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "out"]


@pytest.mark.parametrize(("args", "message"), [
    (["export_legacy_format=true"],
     "Config error: 'export_legacy_format' (.bin weights) is not available: transformers 5 writes safetensors only. "
     "Remove it or set it to false."),
    (["export_format=gguf,onnx"],
     "Config error: 'export_format' is 'onnx', which is not one of: safetensors, gguf."),
    (["gguf_type=q4_k"],
     "Config error: 'gguf_type' is 'q4_k', which is not one of: f32, f16, bf16, q8_0."),
    (["export_quantization_bit=4", "export_format=gguf", "export_quantization_dataset=data/pretrain_demo.jsonl"],
     "Config error: 'export_quantization_bit' (GPTQ) writes safetensors; for a quantized GGUF use export_format: "
     "gguf with gguf_type: q8_0 instead."),
])
def test_config_errors(args, message, tiny_llama_dir, tmp_path, capsys):
    assert export(f"model_name_or_path={tiny_llama_dir}", f"export_dir={tmp_path / 'out'}", *args) == 1
    assert _error(capsys) == f"lmforge export: error: {message}\n"


def test_export_dir_is_required(tiny_llama_dir, capsys):
    assert export(f"model_name_or_path={tiny_llama_dir}") == 1
    assert _error(capsys) == (
        "lmforge export: error: Config error: 'export_dir' is required: the folder the exported model is written to.\n"
    )


def test_gptq_is_refused_where_it_cannot_run(tiny_llama_dir, tmp_path, capsys):
    import importlib.util

    import torch

    missing = [name for name in ("gptqmodel", "optimum") if importlib.util.find_spec(name) is None]
    if torch.cuda.is_available() and not missing:
        pytest.fail("GPTQ can run on this machine: this test covers the refusal only; run a real GPTQ export here.")
    out = tmp_path / "out"
    assert export(f"model_name_or_path={tiny_llama_dir}", "template=llama3", f"export_dir={out}",
                  "export_quantization_bit=4", "export_quantization_dataset=data/pretrain_demo.jsonl") == 1
    if not torch.cuda.is_available():
        expected = ("export_quantization_bit (GPTQ) needs a CUDA GPU, and this machine has none. Remove "
                    "export_quantization_bit, or export a quantized GGUF with export_format: gguf and gguf_type: q8_0.")
    else:
        expected = f"export_quantization_bit (GPTQ) needs {' and '.join(missing)}: pip install {' '.join(missing)}"
    assert _error(capsys) == f"lmforge export: error: {expected}\n"
    assert not out.exists()


def test_hub_push_failure_is_reported_after_a_complete_export(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    assert export(f"model_name_or_path={tiny_llama_dir}", "template=llama3", f"export_dir={out}",
                  "export_hub_model_id=someone/tiny-forgebot") == 1
    err = _error(capsys)
    assert (f"lmforge export: error: The export in '{out}' is complete, but pushing it to the hub repo "
            "'someone/tiny-forgebot' failed: Cannot reach https://huggingface.co/") in err
    assert "offline mode is enabled" in err
    assert (out / "model.safetensors").is_file() and (out / "lmforge_export.json").is_file()

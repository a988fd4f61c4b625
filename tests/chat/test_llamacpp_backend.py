"""`infer_backend: llamacpp` in chat, webchat and api: what it refuses, before llama.cpp is needed.

Generation through llama.cpp itself is tested in tests/llamacpp/ (it needs the `llamacpp` extra).
"""

from __future__ import annotations

import sys

import pytest

from lmforge.cli import main
from lmforge.config import parse_config
from lmforge.errors import UserError
from tests.api.serving import free_port


@pytest.fixture(scope="module")
def gguf_dir(tiny_llama_dir, tmp_path_factory):
    """A folder with one GGUF of the tiny Llama."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge.export.gguf import write_gguf

    folder = tmp_path_factory.mktemp("gguf")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    write_gguf(model, AutoTokenizer.from_pretrained(tiny_llama_dir), folder / "model-f32.gguf", "f32")
    return folder


@pytest.mark.parametrize("command", ["chat", "webchat", "api"])
def test_a_folder_without_gguf_is_refused_by_every_serving_command(command, tiny_llama_dir, capsys, monkeypatch):
    monkeypatch.setenv("API_PORT", str(free_port()))
    assert main([command, f"model_name_or_path={tiny_llama_dir}", "template=llama3", "infer_backend=llamacpp"]) == 1
    assert capsys.readouterr().err == (
        f"lmforge {command}: error: infer_backend: llamacpp serves a GGUF file, and '{tiny_llama_dir}' holds none. "
        "Export one with `lmforge export ... export_format=gguf`, or use infer_backend: huggingface.\n"
    )


def _engine(*args):
    from lmforge.chat.factory import create_engine

    return create_engine(parse_config("chat", ["infer_backend=llamacpp", *args]))


def test_gguf_paths_are_checked(gguf_dir, tiny_llama_dir, tmp_path):
    with pytest.raises(UserError, match=r"'.*config.json' is not a \.gguf file"):
        _engine(f"model_name_or_path={tiny_llama_dir / 'config.json'}")
    with pytest.raises(UserError, match="GGUF file or folder '/nowhere/model.gguf' does not exist"):
        _engine("model_name_or_path=/nowhere/model.gguf")
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.gguf", "b.gguf"):
        (two / name).write_bytes((gguf_dir / "model-f32.gguf").read_bytes())
    with pytest.raises(UserError, match=r"holds several GGUF files \(a.gguf, b.gguf\); set model_name_or_path"):
        _engine(f"model_name_or_path={two}")


def test_adapters_must_be_merged_into_the_gguf(gguf_dir):
    with pytest.raises(UserError, match="infer_backend: llamacpp serves a GGUF with its adapters already merged"):
        _engine(f"model_name_or_path={gguf_dir}", f"adapter_name_or_path={gguf_dir}")


def test_missing_llama_cpp_names_the_extra(gguf_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if llama-cpp-python were not installed
    with pytest.raises(UserError) as err:
        _engine(f"model_name_or_path={gguf_dir}")
    assert str(err.value) == (
        "infer_backend: llamacpp needs llama-cpp-python: pip install 'lmforge[llamacpp]' (it compiles llama.cpp: "
        "about 15 minutes on 2 CPU cores, seconds from pip's cache afterwards)."
    )


def test_the_transformers_engine_refuses_the_llamacpp_backend(tiny_llama_dir):
    from lmforge.chat.hf_engine import HFEngine

    with pytest.raises(UserError, match="infer_backend: llamacpp is served by `lmforge chat`, `webchat` and `api`"):
        HFEngine(parse_config("chat", [f"model_name_or_path={tiny_llama_dir}", "infer_backend=llamacpp"]))

"""A GGUF-only export folder given to the transformers engine points the user at llama.cpp."""

from __future__ import annotations

from lmforge.cli import main


def test_gguf_only_folder_suggests_llamacpp(tmp_path, capsys):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "model-f16.gguf").write_bytes(b"GGUF")  # never read: the folder is refused before loading
    (folder / "Modelfile").write_text("FROM ./model-f16.gguf\n")
    assert main(["chat", f"model_name_or_path={folder}"]) == 1
    err = capsys.readouterr().err
    assert err == (f"lmforge chat: error: '{folder}' holds a GGUF file (model-f16.gguf) but no transformers model; "
                   f"serve it with infer_backend: llamacpp (e.g. lmforge chat model_name_or_path={folder} "
                   "infer_backend=llamacpp), or export with export_format: safetensors,gguf.\n")

"""Export fixtures: the quick start run exported once per session, and a helper to run `lmforge export`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples" / "merge_lora"
QUICKSTART_EXPORT = EXAMPLES / "tiny_llama_lora_sft.yaml"


def export(*args: str) -> int:
    """Run `lmforge export ARGS` in-process, as the command line does (UserErrors become exit code 1)."""
    from lmforge.cli import main

    return main(["export", *map(str, args)])


@pytest.fixture(scope="session")
def quickstart_export(quickstart_run, tiny_llama_dir, tmp_path_factory) -> Path:
    """The quick start's adapter merged by the shipped example: safetensors, an f16 GGUF and the Modelfile."""
    out = tmp_path_factory.mktemp("export") / "tiny-llama-forgebot"
    code = export(QUICKSTART_EXPORT, f"model_name_or_path={tiny_llama_dir}", f"adapter_name_or_path={quickstart_run}",
                  f"export_dir={out}")
    assert code == 0
    return out


def greedy_tokens(model, prompt_ids: list[int], max_new_tokens: int = 16) -> list[int]:
    """transformers greedy generation from token ids; the new tokens only."""
    import torch

    ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, temperature=None, top_p=None, top_k=None, eos_token_id=None,
                             pad_token_id=0)
    return out[0, len(prompt_ids):].tolist()


def read_gguf(path):
    """Model and tokenizer rebuilt by transformers from the GGUF file alone (copied into a folder of its own)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = path.parent.parent / f"read-{path.parent.name}-{path.stem}"
    folder.mkdir(exist_ok=True)
    shutil.copy(path, folder / path.name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=path.name)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=path.name)
    return model, tokenizer

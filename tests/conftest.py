"""Shared fixtures: tiny offline models built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("WANDB_DISABLED", "true")

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "data"


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with a llama3-style tokenizer (bos <|begin_of_text|>, eos <|end_of_text|>)."""
    from lmforge.testing.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), arch="llama")


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2 with a ChatML tokenizer (no bos, eos and pad <|endoftext|>)."""
    from lmforge.testing.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), arch="qwen2")


@pytest.fixture(scope="session")
def tiny_vl_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2-VL with its image and video processors (`lmforge tiny-model --arch qwen2_vl`)."""
    from lmforge.testing.tiny_vl import build_tiny_vl_model

    return build_tiny_vl_model(tmp_path_factory.mktemp("tiny-vl"))


@pytest.fixture()
def llama_tokenizer(tiny_llama_dir):
    """A fresh tokenizer per test, so that a test that mutates it cannot leak into another."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


@pytest.fixture()
def qwen_tokenizer(tiny_qwen_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen_dir)


QUICKSTART = REPO_ROOT / "examples" / "train_lora" / "tiny_llama_lora_sft.yaml"


@pytest.fixture(scope="session")
def quickstart_run(tiny_llama_dir, tmp_path_factory) -> Path:
    """The README quick start, run once: LoRA sft of the tiny Llama on identity with the name filled in."""
    from lmforge.config import parse_config
    from lmforge.train.run import run

    out = tmp_path_factory.mktemp("quickstart") / "run"
    run(parse_config("train", [str(QUICKSTART), f"model_name_or_path={tiny_llama_dir}", f"output_dir={out}",
                               f"dataset_dir={DATA_DIR}"]))
    return out

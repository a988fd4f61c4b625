"""Helpers for training tests: run `lmforge train` in-process on the tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import DATA_DIR, QUICKSTART, REPO_ROOT  # noqa: F401 (QUICKSTART is used by the tests)

EXAMPLES = REPO_ROOT / "examples"


def train(*args: str) -> dict:
    """Parse and run a training config (file and/or key=value strings) as `lmforge train` does; return its metrics."""
    from lmforge.commands.common import load_config
    from lmforge.commands.train import run

    return run(load_config("train", list(args)))


def tiny_args(model_dir: Path, output_dir: Path, **overrides) -> list[str]:
    """A small, fast sft config on the bundled identity data."""
    settings = {
        "model_name_or_path": model_dir,
        "stage": "sft",
        "do_train": "true",
        "finetuning_type": "lora",
        "dataset": "identity",
        "dataset_dir": DATA_DIR,
        "template": "llama3",
        "cutoff_len": 128,
        "output_dir": output_dir,
        "per_device_train_batch_size": 4,
        "learning_rate": "5e-3",
        "max_steps": 4,
        "logging_steps": 1,
        "save_steps": 100,
        "report_to": "none",
        "disable_gradient_checkpointing": "true",
    }
    settings.update(overrides)
    return [f"{k}={v}" for k, v in settings.items()]


def greedy_answer(model, tokenizer, question: str, max_new_tokens: int = 32) -> str:
    """Greedy answer through the tokenizer's saved chat template."""
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    stop = [tokenizer.convert_tokens_to_ids("<|eot_id|>"), tokenizer.eos_token_id]
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop)
    return tokenizer.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def load_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture()
def one_thread():
    """The tiny models' matrices are too small for two threads to help; on a busy machine they hurt a lot."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

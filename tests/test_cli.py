"""The `lmforge` command line: help, version, unknown commands, env, start-up imports."""

from __future__ import annotations

import json

import subprocess
import sys

import pytest

from lmforge import __version__
from lmforge.cli import COMMANDS, main

HEAVY = ("torch", "transformers", "datasets", "peft", "trl", "accelerate", "gradio", "fastapi")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmforge", *args], capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_every_command():
    result = run_cli("--help")
    assert result.returncode == 0
    for cmd in COMMANDS:
        assert f"  {cmd.name} " in result.stdout
    assert run_cli("help").stdout == result.stdout


def test_version():
    result = run_cli("version")
    assert result.returncode == 0
    assert result.stdout == f"lmforge {__version__}\n"


@pytest.mark.parametrize("name", [c.name for c in COMMANDS if c.name != "help"])
def test_every_command_help(name, capsys):
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: lmforge " + name)


def test_config_command_help_lists_keys(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for key in ("model_name_or_path", "lora_rank", "cutoff_len", "learning_rate", "max_new_tokens"):
        assert f"  {key} " in out
    assert main(["help", "chat"]) == 0
    chat = capsys.readouterr().out
    assert "  temperature " in chat and "  learning_rate " not in chat


def test_unknown_command_suggests_and_exits_2():
    result = run_cli("trian")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "lmforge: unknown command 'trian'. Did you mean 'train'? Run `lmforge help` to list the commands."
    )


def test_user_error_is_one_line_without_traceback(tmp_path):
    missing = tmp_path / "missing.yaml"
    result = run_cli("data", "check", str(missing))
    assert result.returncode == 1
    assert result.stderr.startswith(f"lmforge data: error: Config file '{missing}' not found. Check the path")
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args", [["--help"], ["version"], ["train", "--help"], ["data", "--help"], ["templates"]])
def test_fast_paths_import_nothing_heavy(args):
    code = (
        "import sys, contextlib, io\n"
        "from lmforge.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    rc = main({args!r})\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(rc, heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "0 []", result.stderr


def test_env_reports_versions():
    result = run_cli("env")
    assert result.returncode == 0
    for name in ("Python", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "CUDA available"):
        assert f"- {name} " in result.stdout


def test_tiny_model_command(tmp_path):
    result = run_cli("tiny-model", str(tmp_path / "m"), "--arch", "qwen2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"Wrote a tiny qwen2 model (tiny, float32) to {tmp_path / 'm'}"
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert (tmp_path / "m" / "tokenizer.json").is_file()
    bad = run_cli("tiny-model", str(tmp_path / "n"), "--arch", "gpt9")
    assert bad.returncode == 1
    assert bad.stderr == ("lmforge tiny-model: error: argument --arch: invalid choice: 'gpt9' (choose from 'llama', "
                          "'qwen2', 'qwen3', 'qwen2_vl', 'qwen2_5_vl'). Usage: lmforge tiny-model [-h] "
                          "[--arch {llama,qwen2,qwen3,qwen2_vl,qwen2_5_vl}] [--size {tiny,0.5b}] [--seed SEED] "
                          "[--dtype {float32,bfloat16}] output_dir\n")


def test_tiny_vision_model_command(tmp_path):
    result = run_cli("tiny-model", str(tmp_path / "vl"), "--arch", "qwen2_vl")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"Wrote a tiny qwen2_vl model (tiny, float32) to {tmp_path / 'vl'}"
    config = json.loads((tmp_path / "vl" / "config.json").read_text())
    assert config["model_type"] == "qwen2_vl"
    assert (tmp_path / "vl" / "preprocessor_config.json").is_file()
    bad = run_cli("tiny-model", str(tmp_path / "big"), "--arch", "qwen2_vl", "--size", "0.5b")
    assert bad.returncode == 1
    assert bad.stderr.startswith("lmforge tiny-model: error: --arch qwen2_vl is built in size tiny and float32 only")

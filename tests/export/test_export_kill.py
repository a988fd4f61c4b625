"""`lmforge export` killed with SIGKILL while it writes: no folder that looks complete, and the rerun completes.

The kill is placed from outside: the test polls for the export's hidden staging folder and kills
the process as soon as a file appears in it (the writing has begun).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.export.conftest import export

# Kill-and-rerun matrices take minutes: a command of their own (see README, Run the tests).
pytestmark = pytest.mark.slow

FILES = ["Modelfile", "chat_template.jinja", "config.json", "generation_config.json", "lmforge_export.json",
         "model-f16.gguf", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]


def kill_while_writing(args: list[str], staging: Path, log: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with log.open("w") as handle:
        process = subprocess.Popen([sys.executable, "-m", "lmforge", "export", *args], env=env, stdout=handle,
                                   stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    try:
        while not (staging.is_dir() and any(staging.iterdir())):
            if process.poll() is not None:
                pytest.fail(f"the export ended (exit {process.returncode}) before it was killed:\n{log.read_text()}")
            assert time.monotonic() < deadline, "the export never started writing"
            time.sleep(0.002)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert staging.is_dir()  # killed in the middle of the write


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_killed_export_never_looks_complete_and_the_rerun_completes(tiny_llama_dir, tmp_path):
    export_dir = tmp_path / "exported"
    staging = tmp_path / ".staging-exported"
    args = [f"model_name_or_path={tiny_llama_dir}", "template=llama3", f"export_dir={export_dir}",
            "export_format=safetensors,gguf"]
    kill_while_writing(args, staging, tmp_path / "killed.log")
    assert not export_dir.exists() or not (export_dir / "lmforge_export.json").exists()

    assert export(*args) == 0  # the same command again
    assert sorted(p.name for p in export_dir.iterdir()) == FILES
    assert sorted(json.loads((export_dir / "lmforge_export.json").read_text())["files"]) == FILES
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind

    # Killed while replacing that export (overwrite: true): the previous folder stays, byte for byte.
    before = snapshot(export_dir)
    kill_while_writing([*args, "overwrite=true", "gguf_type=f32"], staging, tmp_path / "killed-overwrite.log")
    assert snapshot(export_dir) == before

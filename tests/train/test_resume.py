"""A run killed with SIGKILL resumes from its last complete checkpoint and ends like an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from lmforge.config import parse_config
from lmforge.train.outputs import prepare_output_dir
from tests.train.conftest import tiny_args


def launch(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LMFORGE_VERBOSITY": "INFO"}
    return subprocess.Popen([sys.executable, "-m", "lmforge", "train", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_sigkill_then_same_command_resumes(tiny_llama_dir, tmp_path):
    out = tmp_path / "run"
    args = tiny_args(tiny_llama_dir, out, max_steps=60, save_steps=10, logging_steps=5, cutoff_len=256)
    first = launch(args)
    deadline = time.time() + 300
    while not (out / "checkpoint-20").is_dir():
        assert first.poll() is None, first.stdout.read()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (out / "lmforge_run.json").exists()  # a killed run never looks finished
    assert not (out / "adapter_model.safetensors").exists()
    done_before = sorted(p.name for p in out.glob("checkpoint-*"))
    assert done_before and "checkpoint-60" not in done_before
    for checkpoint in out.glob("checkpoint-*"):
        assert (checkpoint / "trainer_state.json").is_file() and (checkpoint / "adapter_model.safetensors").is_file()

    second = launch(args)
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output
    resumed_from = done_before[-1]
    assert f"Resuming from {out / resumed_from}" in output
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 60
    assert (out / "lmforge_run.json").is_file() and (out / "adapter_model.safetensors").is_file()
    logged = [json.loads(line)["current_steps"] for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    # Steps logged before the kill stay; the resumed run continues after its checkpoint up to the end.
    assert logged[-1] == 60 and 60 in logged and 5 in logged
    assert not list(out.glob(".staging-*"))


def test_partial_checkpoint_is_never_resumed(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint-10").mkdir(parents=True)
    (out / "checkpoint-10" / "trainer_state.json").write_text("{}")
    partial = out / ".staging-checkpoint-20" / "checkpoint-20"
    partial.mkdir(parents=True)
    (partial / "adapter_model.safetensors").write_bytes(b"half")
    cfg = parse_config("train", ["model_name_or_path=m", "do_train=true", "dataset=identity", f"output_dir={out}"])
    assert prepare_output_dir(cfg) == str(out / "checkpoint-10")
    assert not (out / ".staging-checkpoint-20").exists()

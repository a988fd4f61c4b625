"""`lmforge train` killed with SIGKILL at five moments; the same command run again ends exactly like an uninterrupted run.

Each kill is placed by watching what the run shows from outside (its console output, the files and
staging folders in output_dir), polled every few milliseconds: no hook in the product. After the
kill the test checks it landed where intended, then reruns the same command and compares the
result with an uninterrupted run of the same command: the final step, the final adapter weights
(bit for bit: same seed, same data order, RNG state restored from the checkpoint, one CPU thread),
the logged losses, and the list of files written.
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
import torch

from tests.train.conftest import load_safetensors, tiny_args

# Kill-and-rerun matrices take minutes: a command of their own (see README, Run the tests).
pytestmark = pytest.mark.slow

MAX_STEPS, SAVE_STEPS = 12, 4  # checkpoints 4, 8 and 12 (the Trainer also saves at the last step)
POLL_S = 0.002
TIMEOUT_S = 300


def command(model_dir: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "lmforge", "train",
            *tiny_args(model_dir, out, max_steps=MAX_STEPS, save_steps=SAVE_STEPS, logging_steps=1)]


def environment(tmp: Path) -> dict:
    # One thread: the same float operations in the same order in every run (and no oversubscribed
    # cores on a busy 2-core machine). A fresh datasets cache: the first run of each test tokenizes.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "HF_DATASETS_CACHE": str(tmp / "datasets")}


def run_to_end(model_dir: Path, out: Path, tmp: Path, log: Path) -> str:
    with log.open("w") as handle:
        done = subprocess.run(command(model_dir, out), env=environment(tmp), stdout=handle, stderr=subprocess.STDOUT,
                              timeout=TIMEOUT_S)
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    return text


def kill_when(model_dir: Path, out: Path, tmp: Path, log: Path, moment) -> None:
    """Start the run; SIGKILL it as soon as `moment(log text, out)` is true."""
    with log.open("w") as handle:
        process = subprocess.Popen(command(model_dir, out), env=environment(tmp), stdout=handle,
                                   stderr=subprocess.STDOUT)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not moment(log.read_text(errors="replace"), out):
            if process.poll() is not None:
                pytest.fail(f"the run ended (exit {process.returncode}) before the moment to kill it:\n"
                            f"{log.read_text()[-3000:]}")
            assert time.monotonic() < deadline, "the moment to kill the run never came"
            time.sleep(POLL_S)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL  # killed, not finished


def steps_and_losses(out: Path) -> list[tuple]:
    records = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    return [(r["current_steps"], r.get("loss"), r.get("lr")) for r in records]


def listing(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*"))


@pytest.fixture(scope="module")
def uninterrupted(tiny_llama_dir, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("uninterrupted")
    run_to_end(tiny_llama_dir, tmp / "run", tmp, tmp / "train.log")
    return tmp / "run"


def staging(name: str):
    return lambda text, out: (out / f".staging-{name}").exists()


def logged_a_step(text: str, out: Path) -> bool:
    log = out / "trainer_log.jsonl"
    return log.is_file() and log.read_text().count("\n") >= 1


# (moment, when to kill, the checkpoints complete after the kill, the one the rerun resumes from)
MOMENTS = [
    ("loading data", lambda text, out: "Tokenizing train" in text, [], None),
    ("in a step before the first checkpoint", logged_a_step, [], None),
    ("while checkpoint-8 is written", staging("checkpoint-8"), ["checkpoint-4"], "checkpoint-4"),
    ("right after checkpoint-4", lambda text, out: (out / "checkpoint-4").is_dir(), ["checkpoint-4"], "checkpoint-4"),
    ("while the final weights are written", staging("final"), ["checkpoint-12", "checkpoint-4", "checkpoint-8"],
     "checkpoint-12"),
]


@pytest.mark.parametrize(("moment", "when", "complete", "resumed_from"), MOMENTS, ids=[m[0] for m in MOMENTS])
def test_killed_run_resumes_to_the_same_weights(moment, when, complete, resumed_from, uninterrupted, tiny_llama_dir,
                                                tmp_path):
    out = tmp_path / "run"
    kill_when(tiny_llama_dir, out, tmp_path, tmp_path / "killed.log", when)
    # Where the kill landed: never a finished-looking run, only complete checkpoints.
    assert not (out / "lmforge_run.json").exists()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == complete
    if moment == "loading data":
        assert not (out / "trainer_log.jsonl").exists()  # training had not started
    if moment.startswith("while"):
        assert list(out.glob(".staging-*"))  # killed in the middle of the write

    text = run_to_end(tiny_llama_dir, out, tmp_path, tmp_path / "rerun.log")
    if resumed_from:
        assert f"Resuming from {out / resumed_from} (found in output_dir)" in text
    else:
        assert "Resuming from" not in text
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == MAX_STEPS
    final, expected = load_safetensors(out / "adapter_model.safetensors"), load_safetensors(
        uninterrupted / "adapter_model.safetensors")
    assert final.keys() == expected.keys()
    different = [name for name in expected if not torch.equal(final[name], expected[name])]
    assert different == [], f"{len(different)} of {len(expected)} tensors differ from the uninterrupted run"
    # Every step logged once, with the uninterrupted run's loss and learning rate.
    assert steps_and_losses(out) == steps_and_losses(uninterrupted)
    # The same files: no staging folder, no half-written leftover.
    assert listing(out) == listing(uninterrupted)


def test_sigterm_saves_a_checkpoint_and_the_rerun_resumes_to_the_same_weights(uninterrupted, tiny_llama_dir,
                                                                              tmp_path):
    """SIGTERM (LLaMA Board's Abort, `kill`) ends the step, saves a checkpoint there and exits without final weights."""
    out, log = tmp_path / "run", tmp_path / "stopped.log"
    with log.open("w") as handle:
        process = subprocess.Popen(command(tiny_llama_dir, out), env=environment(tmp_path), stdout=handle,
                                   stderr=subprocess.STDOUT)
    deadline = time.monotonic() + TIMEOUT_S
    while not (out / "checkpoint-4").is_dir():  # stop between two checkpoints
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(POLL_S)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=TIMEOUT_S) == 1
    text = log.read_text()
    step = json.loads(Path(out / "trainer_log.jsonl").read_text().splitlines()[-1])["current_steps"]
    assert 4 <= step < MAX_STEPS
    assert text.rstrip("\n").splitlines()[-1] == (
        f"lmforge train: error: Stopped by SIGTERM after step {step}: {out}/checkpoint-{step} is saved. Run the same "
        "command again to resume from it.")
    assert "Traceback" not in text
    assert (out / f"checkpoint-{step}" / "adapter_model.safetensors").is_file()
    assert not (out / "lmforge_run.json").exists() and not (out / "adapter_model.safetensors").exists()

    text = run_to_end(tiny_llama_dir, out, tmp_path, tmp_path / "rerun.log")
    assert f"Resuming from {out / f'checkpoint-{step}'} (found in output_dir)" in text
    final, expected = load_safetensors(out / "adapter_model.safetensors"), load_safetensors(
        uninterrupted / "adapter_model.safetensors")
    assert all(torch.equal(final[name], expected[name]) for name in expected)
    assert steps_and_losses(out) == steps_and_losses(uninterrupted)

"""Training with its output redirected (a log file, CI) prints progress lines, not nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.train.conftest import tiny_args


def _train(tiny_llama_dir, out, progress=None, **overrides):
    """Run `lmforge train` with stdout and stderr going to a file; return (exit code, the file's text)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("LMFORGE_PROGRESS", None)
    if progress is not None:
        env["LMFORGE_PROGRESS"] = progress
    out.mkdir(parents=True)
    log = out / "train.log"
    with log.open("w") as handle:
        code = subprocess.run([sys.executable, "-m", "lmforge", "train",
                               *tiny_args(tiny_llama_dir, out / "run", max_steps=20, **overrides)],
                              stdout=handle, stderr=subprocess.STDOUT, env=env, timeout=600).returncode
    return code, log.read_text()


def test_redirected_training_prints_a_line_every_five_percent(tiny_llama_dir, tmp_path):
    code, text = _train(tiny_llama_dir, tmp_path / "a", logging_steps=500)  # the Trainer logs nothing
    assert code == 0, text[-3000:]
    steps = [int(m) for m in re.findall(r"^step (\d+)/20 \(\d+%\)", text, flags=re.M)]
    assert steps == list(range(1, 21))  # 5% of 20 steps is one step
    assert not re.search(r"^\s*train:", text, flags=re.M)  # no training progress bar drawn into the file


def test_log_lines_carry_the_loss_and_progress_can_be_turned_off(tiny_llama_dir, tmp_path):
    code, text = _train(tiny_llama_dir, tmp_path / "a", logging_steps=10)
    assert code == 0, text[-3000:]
    assert re.search(r"^step 10/20 \(50%\)  loss \d+\.\d{4}  lr \d", text, flags=re.M)
    assert len(re.findall(r"^step 10/20", text, flags=re.M)) == 1  # the step line gives way to the log line
    code, quiet = _train(tiny_llama_dir, tmp_path / "b", progress="off", logging_steps=10)
    assert code == 0 and not re.search(r"^step \d+/20", quiet, flags=re.M)
    code, wrong = _train(tiny_llama_dir, tmp_path / "c", progress="loud")
    assert code == 1
    assert "lmforge train: error: LMFORGE_PROGRESS='loud' is not one of: bar, lines, off." in wrong

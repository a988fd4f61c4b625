"""`lmforge train` on a CPU runs under jemalloc where it is installed (scripts/setup.sh installs it), learns the
same, and keeps to the system's allocator when told or when the user preloads one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.utils import allocator
from tests.train.conftest import tiny_args

TIMEOUT_S = 300


def _train(args: list[str], **extra_env) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra_env}
    if "LD_PRELOAD" not in extra_env:
        env.pop("LD_PRELOAD", None)  # whatever the test process was started with
    return subprocess.run([sys.executable, "-m", "lmforge", "train", *args], env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S, check=False)


def _losses(out: Path) -> list[float]:
    records = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    return [record["loss"] for record in records if "loss" in record]


def _allocator_lines(stderr: str) -> list[str]:
    return [line.split(": ", 1)[1] for line in stderr.splitlines() if "Memory allocator:" in line]


def test_a_cpu_run_trains_under_jemalloc_and_learns_what_the_system_allocator_learns(tiny_llama_dir, tmp_path):
    assert allocator.find_jemalloc(), "jemalloc is not installed: apt-get install libjemalloc2 (scripts/setup.sh)"
    common = {"max_steps": 3, "seed": 0, "use_cpu": "true"}
    fast = _train(tiny_args(tiny_llama_dir, tmp_path / "jemalloc", **common))
    assert fast.returncode == 0, fast.stderr[-3000:]
    assert _allocator_lines(fast.stderr) == ["Memory allocator: jemalloc (LMFORGE_ALLOCATOR=system for the system's)."]
    system = _train(tiny_args(tiny_llama_dir, tmp_path / "system", **common), LMFORGE_ALLOCATOR="system")
    assert system.returncode == 0, system.stderr[-3000:]
    assert _allocator_lines(system.stderr) == ["Memory allocator: the system's (LMFORGE_ALLOCATOR=system)."]
    assert _losses(tmp_path / "jemalloc") == _losses(tmp_path / "system") and len(_losses(tmp_path / "system")) == 3


def test_an_unknown_allocator_is_refused_in_one_line(tiny_llama_dir, tmp_path):
    run = _train(tiny_args(tiny_llama_dir, tmp_path / "run", use_cpu="true"), LMFORGE_ALLOCATOR="tcmalloc")
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == ("lmforge train: error: LMFORGE_ALLOCATOR='tcmalloc' is not one of "
                                                   "jemalloc, system; unset it for jemalloc.")
    assert "Traceback" not in run.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize("preload, expected", [
    ("", None),
    ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "jemalloc"),
    ("libiomp5.so /opt/gperftools/lib/libtcmalloc_minimal.so.4", "tcmalloc"),
    ("/usr/lib/libfoo.so:/usr/local/lib/libmimalloc.so.2", "mimalloc"),
    ("/opt/intel/lib/libiomp5.so", None),
])
def test_an_allocator_the_user_preloads_is_recognised_and_kept(preload, expected):
    assert allocator.preloaded({"LD_PRELOAD": preload}) == expected


def test_only_the_command_itself_on_a_cpu_with_no_allocator_preloaded_starts_again(monkeypatch):
    """`restart_with_jemalloc` replaces the process only for `lmforge train ...` itself; otherwise it returns and the
    process goes on as it is (a program that calls lmforge's main in its own process, as these tests do)."""
    replaced = []
    monkeypatch.setattr(os, "execve", lambda *args: replaced.append(args))
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    argv = ["train", "x.yaml"]
    monkeypatch.setattr(sys, "argv", ["/venv/bin/pytest", "tests"])
    allocator.restart_with_jemalloc(argv, on_cpu=True)  # a program calling lmforge's main in its own process
    monkeypatch.setattr(sys, "argv", ["/venv/bin/lmforge", "webui"])
    allocator.restart_with_jemalloc(argv, on_cpu=True)  # LLaMA Board training in its own process
    monkeypatch.setattr(sys, "argv", ["/venv/bin/lmforge", *argv])
    allocator.restart_with_jemalloc(argv, on_cpu=False)  # a run that may use a GPU
    # datasets' multi-process map replaces os.environ with a copy: the check reads the one in place now.
    monkeypatch.setattr(os, "environ", os.environ.copy())
    monkeypatch.setenv("LD_PRELOAD", "/opt/lib/libtcmalloc.so.4")
    allocator.restart_with_jemalloc(argv, on_cpu=True)  # the user's own allocator
    assert replaced == []
    monkeypatch.delenv("LD_PRELOAD")
    allocator.restart_with_jemalloc(argv, on_cpu=True)
    monkeypatch.setattr(sys, "argv", ["/venv/lib/python3.11/site-packages/lmforge/__main__.py", *argv])
    allocator.restart_with_jemalloc(argv, on_cpu=True)
    assert [args[1] for args in replaced] == [[sys.executable, "-m", "lmforge", "train", "x.yaml"]] * 2
    assert replaced[0][2]["LD_PRELOAD"] == allocator.find_jemalloc()

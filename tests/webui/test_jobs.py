"""LLaMA Board's jobs without a browser: they outlive the board that started them, and their end is recorded."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from tests.conftest import DATA_DIR

TIMEOUT_S = 240


def settings(model_dir: Path, out: Path, **overrides) -> dict:
    return {"model_name_or_path": str(model_dir), "template": "llama3", "stage": "sft", "do_train": True,
            "dataset": "identity", "dataset_dir": str(DATA_DIR), "cutoff_len": 64, "per_device_train_batch_size": 4,
            "max_steps": 400, "save_steps": 1000, "logging_steps": 1, "output_dir": str(out), "report_to": "none",
            "disable_gradient_checkpointing": True, **overrides}


def wait_for(manager, job_id: str, statuses: tuple[str, ...]):
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        job = manager.get(job_id)
        if job.status in statuses:
            return job
        assert time.monotonic() < deadline, (job.status, job.log_tail())
        time.sleep(0.2)


def wait_for_steps(out: Path) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not ((out / "trainer_log.jsonl").is_file() and (out / "trainer_log.jsonl").read_text().count("\n") >= 2):
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_a_job_outlives_its_board_and_a_new_board_aborts_it(tiny_llama_dir, tmp_path):
    from lmforge.webui.jobs import JobManager

    first = JobManager(tmp_path / "cache", tmp_path)
    job = first.submit("train", "train", settings(tiny_llama_dir, tmp_path / "run"), str(tmp_path / "run"))
    assert (tmp_path / "run" / "training_args.yaml").is_file()
    wait_for(first, job.id, ("running",))
    wait_for_steps(tmp_path / "run")
    del first  # the board is gone; the job is not

    second = JobManager(tmp_path / "cache", tmp_path)  # a restarted board finds it from its folder
    assert [(j.id, j.status) for j in second.jobs()] == [(job.id, "running")]
    queued = second.submit("train", "train", settings(tiny_llama_dir, tmp_path / "next"), str(tmp_path / "next"))
    assert queued.status == "queued"  # one job at a time
    second.abort(job.id)
    ended = wait_for(second, job.id, ("aborted", "failed", "finished"))
    assert (ended.status, ended.exit_code) == ("aborted", 1)
    assert ended.error_line().startswith("lmforge train: error: Stopped by SIGTERM after step ")
    assert list((tmp_path / "run").glob("checkpoint-*"))
    second.abort(queued.id)
    assert second.get(queued.id).status == "cancelled"
    second.schedule()
    assert second.get(queued.id).status == "cancelled"  # a cancelled job never starts


def test_a_job_killed_without_a_word_is_shown_lost(tiny_llama_dir, tmp_path):
    from lmforge.webui.jobs import JobManager

    manager = JobManager(tmp_path / "cache", tmp_path)
    job = manager.submit("train", "train", settings(tiny_llama_dir, tmp_path / "run"), str(tmp_path / "run"))
    job = wait_for(manager, job.id, ("running",))
    os.killpg(job.runner_pid, signal.SIGKILL)  # runner and command at once: nobody records the end
    deadline = time.monotonic() + 30
    while manager.get(job.id).status != "lost":
        assert time.monotonic() < deadline, manager.get(job.id).status
        time.sleep(0.2)
    assert manager.get(job.id).exit_code is None


def test_a_command_that_fails_records_its_exit_code_and_error(tmp_path):
    from lmforge.webui.jobs import JobManager

    manager = JobManager(tmp_path / "cache", tmp_path)
    job = manager.submit("train", "train", settings(tmp_path / "no-such-model", tmp_path / "run"), str(tmp_path / "run"))
    ended = wait_for(manager, job.id, ("failed", "finished"))
    assert (ended.status, ended.exit_code) == ("failed", 1)
    assert ended.error_line() == (f"lmforge train: error: Model folder '{tmp_path / 'no-such-model'}' does not exist. "
                                  "Check model_name_or_path, or build a tiny test model with `lmforge tiny-model DIR`.")



def test_a_job_with_several_processes_runs_under_torchrun(tiny_llama_dir, tmp_path):
    from lmforge.webui.settings import launch_env
    from lmforge.webui.jobs import JobManager

    manager = JobManager(tmp_path / "cache", tmp_path)
    env = launch_env({"nproc": 2})
    assert env == {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"} and launch_env({"nproc": 1}) == {}
    job = manager.submit("train", "train", settings(tiny_llama_dir, tmp_path / "run", max_steps=2,
                                                    per_device_train_batch_size=2), str(tmp_path / "run"), env)
    ended = wait_for(manager, job.id, ("finished", "failed", "lost"))
    assert ended.status == "finished", ended.log_tail()
    assert "Launching torchrun --nproc-per-node 2" in ended.log_tail(200)
    assert json.loads((tmp_path / "run" / "lmforge_run.json").read_text())["processes"] == 2

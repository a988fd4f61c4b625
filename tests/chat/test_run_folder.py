"""A training run folder works from any directory: paths are recorded absolute, older relative ones are found."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from lmforge.model.resolve import RUN_FILE


def _chat(run_folder, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmforge", "chat", f"model_name_or_path={run_folder}",
                           "do_sample=false", "max_new_tokens=16"], input="Who are you?\n", capture_output=True,
                          text=True, timeout=300, cwd=cwd, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_run_started_with_relative_paths_records_them_absolute(tiny_llama_dir, tmp_path):
    from lmforge.commands.train import main

    project = tmp_path / "project"
    shutil.copytree(tiny_llama_dir, project / "models" / "tiny")
    import os

    here = os.getcwd()
    os.chdir(project)
    try:
        main(["model_name_or_path=models/tiny", "stage=sft", "do_train=true", "dataset=identity",
              f"dataset_dir={here}/data", "template=llama3", "output_dir=saves/run", "max_steps=1",
              "report_to=none", "disable_gradient_checkpointing=true"])
    finally:
        os.chdir(here)
    run = json.loads((project / "saves" / "run" / RUN_FILE).read_text())
    assert run["model_name_or_path"] == str((project / "models" / "tiny").resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = _chat(project / "saves" / "run", elsewhere)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip()  # one answer line


def test_older_run_with_a_relative_base_is_found_from_another_directory(quickstart_run, tiny_llama_dir, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(tiny_llama_dir, project / "models" / "tiny-llama")
    run_folder = project / "saves" / "tiny-llama" / "lora" / "sft"
    shutil.copytree(quickstart_run, run_folder)
    run_file = run_folder / RUN_FILE
    run = json.loads(run_file.read_text())
    run["model_name_or_path"] = "models/tiny-llama"  # as runs recorded it before: relative to the project
    run_file.write_text(json.dumps(run))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = _chat(run_folder, elsewhere)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ForgeBot" in result.stdout  # the quick-start adapter was applied on the base it was trained on


def test_missing_recorded_base_names_the_run_file(quickstart_run, tmp_path):
    run_folder = tmp_path / "run"
    shutil.copytree(quickstart_run, run_folder)
    run_file = run_folder / RUN_FILE
    run = json.loads(run_file.read_text())
    run["model_name_or_path"] = str(tmp_path / "moved-away" / "tiny-llama")
    run_file.write_text(json.dumps(run))
    result = _chat(run_folder, tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        f"lmforge chat: error: {run_file} records model_name_or_path '{tmp_path / 'moved-away' / 'tiny-llama'}', "
        f"which does not exist (looked from {tmp_path} and the folders above {run_folder}). Set model_name_or_path "
        f"to the base model and adapter_name_or_path to {run_folder} instead.\n")

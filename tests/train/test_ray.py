"""`USE_RAY=1 lmforge train`: the same training inside Ray Train, on a local Ray instance or an existing cluster.
Needs the `ray` extra (see the README): `pytest -m ray`.

Two CPU workers, gloo: with the same global batch they train exactly like one process, as torchrun's ranks do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train.conftest import tiny_args
from tests.train.test_distributed import env, free_port, listing, losses, train

pytestmark = pytest.mark.ray

RAY = {"USE_RAY": "1", "RAY_AUTH_MODE": "disabled"}


def ray_args(model_dir, out, **overrides) -> list[str]:
    settings = dict(per_device_train_batch_size=2, max_steps=4, save_steps=2, logging_steps=1, seed=0,
                    ray_num_workers=2, ray_storage_path=out.parent / "ray_runs")
    settings.update(overrides)
    return tiny_args(model_dir, out, **settings)


@pytest.fixture(scope="module")
def one_process(tiny_llama_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    done = train(tiny_args(tiny_llama_dir, out, per_device_train_batch_size=4, max_steps=4, save_steps=2,
                           logging_steps=1, seed=0), env(out.parent))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_two_ray_workers_on_a_local_instance_train_like_one_process(one_process, tiny_llama_dir, tmp_path):
    out = tmp_path / "ray"
    done = train(ray_args(tiny_llama_dir, out, ray_init_kwargs='{"num_cpus": 2}'), env(tmp_path, **RAY))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Training on Ray: 2 workers, {'CPU': 1} each (PACK)" in done.stderr
    single, workers = losses(one_process), losses(out)
    assert [step for step, _ in workers] == [1, 2, 3, 4]
    for (_, a), (_, b) in zip(single, workers, strict=True):
        assert abs(a - b) < 1e-4, (single, workers)
    assert json.loads((out / "lmforge_run.json").read_text())["processes"] == 2
    extra = {f"checkpoint-{n}/rng_state_{r}.pth" for n in (2, 4) for r in (0, 1)}
    assert set(listing(out)) - extra == set(listing(one_process)) - {"checkpoint-2/rng_state.pth",
                                                                      "checkpoint-4/rng_state.pth"}
    # The progress reaches the console once per step, from the main worker only.
    assert len([line for line in (done.stdout + done.stderr).splitlines() if "step 1/4 (25%)" in line]) == 1


def test_an_existing_cluster_named_by_ray_address(one_process, tiny_llama_dir, tmp_path):
    port = free_port()
    temp = Path(os.environ.get("TMPDIR", "/tmp")) / f"lmf-ray-{port}"
    ray_bin = Path(sys.executable).parent / "ray"
    cluster_env = env(tmp_path, RAY_AUTH_MODE="disabled")
    started = subprocess.run([str(ray_bin), "start", "--head", f"--port={port}", "--num-cpus=2",
                              "--node-ip-address=127.0.0.1", "--include-dashboard=false", f"--temp-dir={temp}"],
                             env=cluster_env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stderr[-3000:]
    try:
        out = tmp_path / "ray"
        done = train(ray_args(tiny_llama_dir, out), env(tmp_path, RAY_ADDRESS=f"127.0.0.1:{port}", **RAY))
        assert done.returncode == 0, done.stderr[-3000:]
        for (_, a), (_, b) in zip(losses(one_process), losses(out), strict=True):
            assert abs(a - b) < 1e-4
    finally:
        subprocess.run([str(ray_bin), "stop", "--force"], env=cluster_env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_workers_the_cluster_cannot_hold_are_one_line(tiny_llama_dir, tmp_path):
    out = tmp_path / "ray"
    done = train(ray_args(tiny_llama_dir, out, ray_num_workers=3, ray_init_kwargs='{"num_cpus": 2}'),
                 env(tmp_path, **RAY))
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        "lmforge train: error: The Ray cluster has 2 CPU in all; ray_num_workers 3 x resources_per_worker "
        "{'CPU': 1} needs 3. Lower ray_num_workers or resources_per_worker, or add nodes.")
    assert not out.exists()


def test_a_failing_worker_is_one_line_naming_it(tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    out = tmp_path / "ray"
    done = train(ray_args(empty, out, ray_init_kwargs='{"num_cpus": 2}'), env(tmp_path, **RAY))
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"lmforge train: error: Ray worker 0 failed: '{empty}' is a folder but holds no model (no config.json or "
        "tokenizer_config.json). Point model_name_or_path at a model folder or a hub id.")

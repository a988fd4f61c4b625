"""`lmforge train` on several processes (torchrun, gloo on CPU): the same training as one process, and no rank left behind.

With the same global batch (per-device batch x processes x accumulation), DDP on 2 processes gives the
losses of one process step by step: the processes take consecutive batches of the same shuffled order,
and their gradients are averaged.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.train.conftest import tiny_args

TIMEOUT_S = 300


def losses(out: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    return [(r["current_steps"], r["loss"]) for r in records if "loss" in r]


def listing(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*"))


def env(tmp: Path, **extra) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "HF_DATASETS_CACHE": str(tmp / "datasets"), **extra}


def train(args: list[str], environ: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmforge", "train", *args], env=environ, capture_output=True,
                          text=True, timeout=TIMEOUT_S)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("finetuning_type", ["lora", "full"])
def test_two_processes_train_exactly_like_one(finetuning_type, tiny_llama_dir, tmp_path):
    common = dict(max_steps=6, save_steps=3, logging_steps=1, seed=0, finetuning_type=finetuning_type,
                  learning_rate="5e-3" if finetuning_type == "lora" else "1e-4")
    one = train(tiny_args(tiny_llama_dir, tmp_path / "one", per_device_train_batch_size=4, **common), env(tmp_path))
    assert one.returncode == 0, one.stderr[-3000:]
    two = train(tiny_args(tiny_llama_dir, tmp_path / "two", per_device_train_batch_size=2, **common),
                env(tmp_path, FORCE_TORCHRUN="1", NPROC_PER_NODE="2"))
    assert two.returncode == 0, two.stderr[-3000:]
    assert "Launching torchrun --nproc-per-node 2" in two.stderr
    single, ddp = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [step for step, _ in ddp] == [1, 2, 3, 4, 5, 6]
    for (_, a), (_, b) in zip(single, ddp, strict=True):
        assert abs(a - b) < 1e-4, (single, ddp)
    assert json.loads((tmp_path / "two" / "lmforge_run.json").read_text())["processes"] == 2
    # Only the main process writes: the folder looks like a single-process run's (each rank's RNG state aside).
    extra = {"checkpoint-3/rng_state_0.pth", "checkpoint-3/rng_state_1.pth", "checkpoint-6/rng_state_0.pth",
             "checkpoint-6/rng_state_1.pth"}
    assert set(listing(tmp_path / "two")) - extra == set(listing(tmp_path / "one")) - {"checkpoint-3/rng_state.pth",
                                                                                          "checkpoint-6/rng_state.pth"}


def test_two_nodes_on_one_machine_train_like_one_process(tiny_llama_dir, tmp_path):
    """NNODES=2, one process each, the same command with its NODE_RANK: LLaMA-Factory's multi-node recipe."""
    args = tiny_args(tiny_llama_dir, tmp_path / "two-nodes", per_device_train_batch_size=2, max_steps=4,
                     logging_steps=1, seed=0)
    nodes = {"FORCE_TORCHRUN": "1", "NNODES": "2", "NPROC_PER_NODE": "1", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(free_port())}
    started = [subprocess.Popen([sys.executable, "-m", "lmforge", "train", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env(tmp_path, NODE_RANK=str(rank), **nodes))
               for rank in (0, 1)]
    outputs = [process.communicate(timeout=TIMEOUT_S)[0] for process in started]
    assert [process.returncode for process in started] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    one = train(tiny_args(tiny_llama_dir, tmp_path / "one", per_device_train_batch_size=4, max_steps=4,
                          logging_steps=1, seed=0), env(tmp_path))
    assert one.returncode == 0, one.stderr[-3000:]
    for (_, a), (_, b) in zip(losses(tmp_path / "one"), losses(tmp_path / "two-nodes"), strict=True):
        assert abs(a - b) < 1e-4


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "X"
    return state != "Z"


def _start_and_wait_for_checkpoint(tiny_llama_dir, out: Path, tmp: Path, log: Path):
    args = tiny_args(tiny_llama_dir, out, per_device_train_batch_size=2, max_steps=400, save_steps=2,
                     logging_steps=1, seed=0)
    with log.open("w") as handle:
        process = subprocess.Popen([sys.executable, "-m", "lmforge", "train", *args], stdout=handle,
                                   stderr=subprocess.STDOUT, env=env(tmp, FORCE_TORCHRUN="1", NPROC_PER_NODE="2"))
    deadline = time.monotonic() + TIMEOUT_S
    while not (out / "checkpoint-2").is_dir():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    ranks = _children(process.pid)
    assert len(ranks) == 2, ranks
    return process, ranks, args


@pytest.mark.slow
def test_a_killed_rank_ends_the_run_with_one_line_and_the_rerun_resumes(tiny_llama_dir, tmp_path):
    out, log = tmp_path / "run", tmp_path / "killed.log"
    process, ranks, args = _start_and_wait_for_checkpoint(tiny_llama_dir, out, tmp_path, log)
    os.kill(ranks[1], signal.SIGKILL)
    assert process.wait(timeout=60) == 1
    assert not any(_alive(rank) for rank in ranks)
    text = log.read_text()
    assert text.rstrip("\n").splitlines()[-1].startswith("lmforge train: error: Rank ")
    assert "was killed by signal 9 (SIGKILL)" in text and "Traceback" not in text.split("lmforge train: error: Rank")[-1]
    last = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    rerun = train([*args, "max_steps=" + str(int(last.name.split("-")[1]) + 2)],
                  env(tmp_path, FORCE_TORCHRUN="1", NPROC_PER_NODE="2"))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"Resuming from {last}" in rerun.stderr


@pytest.mark.slow
@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_stopping_the_launcher_stops_every_rank(sent, tiny_llama_dir, tmp_path):
    process, ranks, _ = _start_and_wait_for_checkpoint(tiny_llama_dir, tmp_path / "run", tmp_path,
                                                       tmp_path / "run.log")
    process.send_signal(sent)
    code = process.wait(timeout=60)
    assert code == 128 + sent
    deadline = time.monotonic() + 10
    while any(_alive(rank) for rank in ranks):
        assert time.monotonic() < deadline, "a rank outlived the launcher"
        time.sleep(0.1)
    assert f"lmforge train: stopped by {signal.Signals(sent).name}; every rank was stopped." in (
        tmp_path / "run.log").read_text()


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "dataset", "metric"), [("pt", "pretrain_demo", "loss"),
                                                          ("dpo", "dpo_en_demo", "rewards/margins"),
                                                          ("kto", "kto_en_demo", "kl")])
def test_other_stages_run_on_two_processes(stage, dataset, metric, tiny_llama_dir, tmp_path):
    out = tmp_path / "run"
    done = train(tiny_args(tiny_llama_dir, out, stage=stage, dataset=dataset, per_device_train_batch_size=2,
                           max_steps=2, cutoff_len=64), env(tmp_path, FORCE_TORCHRUN="1", NPROC_PER_NODE="2"))
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((out / "lmforge_run.json").read_text())
    assert (run["stage"], run["processes"]) == (stage, 2)
    assert any(metric in json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines())


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("NPROC_PER_NODE", "two", "NPROC_PER_NODE='two' is not an integer; expected a number from 1 to 1000000."),
    ("NODE_RANK", "-1", "NODE_RANK=-1 is out of range; expected a number from 0 to 1000000."),
    ("MASTER_PORT", "70000", "MASTER_PORT=70000 is out of range; expected a number from 1 to 65535.")])
def test_a_bad_launch_variable_is_one_line_before_anything_starts(name, value, expected, tiny_llama_dir, tmp_path,
                                                                  monkeypatch, capsys):
    from lmforge.cli import main

    monkeypatch.setenv("FORCE_TORCHRUN", "1")
    monkeypatch.setenv(name, value)
    assert main(["train", *tiny_args(tiny_llama_dir, tmp_path / "run")]) == 1
    assert capsys.readouterr().err.rstrip("\n").splitlines()[-1] == f"lmforge train: error: {expected}"
    assert not (tmp_path / "run").exists()


def _yaml_config(path: Path, args: list[str], **extra) -> Path:
    import yaml

    settings = dict(arg.split("=", 1) for arg in args)
    settings.update(extra)
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


@pytest.mark.parametrize("finetuning_type", ["full", pytest.param("lora", marks=pytest.mark.slow)])
def test_fsdp_on_cpus_shards_the_model_and_trains_like_one_process(finetuning_type, tiny_llama_dir, tmp_path):
    """On CPUs the Trainer alone would run plain DDP under the name FSDP; lmforge makes it FSDP2 for real."""
    common = dict(max_steps=4, logging_steps=1, seed=0, finetuning_type=finetuning_type,
                  learning_rate="1e-4" if finetuning_type == "full" else "5e-3")
    one = train(tiny_args(tiny_llama_dir, tmp_path / "one", per_device_train_batch_size=4, **common), env(tmp_path))
    assert one.returncode == 0, one.stderr[-3000:]
    config = _yaml_config(tmp_path / "fsdp.yaml", tiny_args(tiny_llama_dir, tmp_path / "fsdp",
                                                            per_device_train_batch_size=2, **common),
                          fsdp="full_shard", fsdp_config={"fsdp_version": 2})
    two = train([str(config)], env(tmp_path, FORCE_TORCHRUN="1", NPROC_PER_NODE="2"))
    assert two.returncode == 0, two.stderr[-3000:]
    # Every weight (frozen base ones too, under LoRA) is a DTensor split in two: half the model per process.
    total = 39 if finetuning_type == "full" else 39 + 56
    assert f"FSDP2: {total} of {total} parameter tensors sharded over 2 processes; this process holds 50.0%" in (
        two.stderr), two.stderr[-3000:]
    for (_, a), (_, b) in zip(losses(tmp_path / "one"), losses(tmp_path / "fsdp"), strict=True):
        assert abs(a - b) < 1e-4
    from safetensors.torch import load_file

    name = "model.safetensors" if finetuning_type == "full" else "adapter_model.safetensors"
    want, got = load_file(tmp_path / "one" / name), load_file(tmp_path / "fsdp" / name)
    # Saved whole (gathered from both processes), as the single process saved it.
    assert {k: tuple(v.shape) for k, v in got.items()} == {k: tuple(v.shape) for k, v in want.items()}
    assert max((want[k] - got[k]).abs().max().item() for k in want) < 1e-4


@pytest.mark.slow
def test_accelerate_launch_with_the_shipped_fsdp_config(tiny_llama_dir, tmp_path):
    """`accelerate launch --config_file examples/accelerate/fsdp_config.yaml -m lmforge train ...`: FSDP2 too."""
    common = dict(max_steps=4, logging_steps=1, seed=0, finetuning_type="full", learning_rate="1e-4")
    one = train(tiny_args(tiny_llama_dir, tmp_path / "one", per_device_train_batch_size=4, **common), env(tmp_path))
    assert one.returncode == 0, one.stderr[-3000:]
    config = Path(__file__).resolve().parents[2] / "examples" / "accelerate" / "fsdp_config.yaml"
    launched = subprocess.run(
        [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(config), "--main_process_port",
         str(free_port()), "--mixed_precision", "no", "-m", "lmforge", "train",
         *tiny_args(tiny_llama_dir, tmp_path / "fsdp", per_device_train_batch_size=2, **common)],
        env=env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "FSDP2: 39 of 39 parameter tensors sharded over 2 processes" in launched.stderr
    for (_, a), (_, b) in zip(losses(tmp_path / "one"), losses(tmp_path / "fsdp"), strict=True):
        assert abs(a - b) < 1e-4


@pytest.mark.parametrize(("setting", "environ", "expected"), [
    ("placement_strategy=PACKED", {"USE_RAY": "1"},
     "placement_strategy 'PACKED' is not one of PACK, SPREAD, STRICT_PACK, STRICT_SPREAD."),
    ("ray_num_workers=0", {"USE_RAY": "1"}, "ray_num_workers must be at least 1, got 0."),
    ("ray_storage_filesystem=s3", {"USE_RAY": "1"}, "ray_storage_filesystem is not supported: give ray_storage_path "
     "a folder every node shares, and remove ray_storage_filesystem."),
    ("fsdp=full_shard", {"FORCE_TORCHRUN": "1"},
     "fsdp is not supported by stage ppo; use deepspeed or plain DDP (FORCE_TORCHRUN=1)."),
])
def test_a_bad_engine_setting_is_one_line_before_anything_starts(setting, environ, expected, tiny_llama_dir,
                                                                 tmp_path, monkeypatch, capsys):
    from lmforge.cli import main

    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    stage = ["stage=ppo", "reward_model=" + str(tmp_path)] if setting.startswith("fsdp") else []
    assert main(["train", *tiny_args(tiny_llama_dir, tmp_path / "run"), *stage, setting]) == 1
    assert capsys.readouterr().err.rstrip("\n").splitlines()[-1] == f"lmforge train: error: {expected}"
    assert not (tmp_path / "run").exists()


def test_a_finished_worker_leaves_its_process_group(monkeypatch):
    """`lmforge train` ends a launched worker by leaving its process group, not at the interpreter's exit."""
    import torch.distributed as dist

    from lmforge.utils import distributed

    distributed.shutdown()  # no group: nothing to do
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun tells a worker; the group below has this rank only
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    assert dist.is_initialized()
    distributed.shutdown()
    assert not dist.is_initialized()


def _failure(tmp: Path, rank: int, exitcode: int, seconds_ago: int | None = None):
    """torchrun's record of a failed rank; with `seconds_ago`, the rank wrote an error file that long ago."""
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    error_file = tmp / f"error-{len(list(tmp.iterdir()))}.json"  # a file of its own (or none) for each record
    if seconds_ago is not None:
        stamp = str(int(time.time()) - seconds_ago)
        error_file.write_text(json.dumps({"message": {"message": "RuntimeError: peer closed",
                                                      "extraInfo": {"timestamp": stamp}}}))
    return ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=exitcode, error_file=str(error_file))


def test_the_rank_named_as_the_cause_is_the_killed_one_not_the_peer_that_lost_it(tmp_path):
    from lmforge.train.launcher import first_failure

    # Rank 1 was SIGKILLed; rank 0 then failed on the broken collective and wrote its error file first.
    failures = {0: _failure(tmp_path, 0, 1, seconds_ago=1), 1: _failure(tmp_path, 1, -9)}
    assert first_failure(failures)[0] == 1
    # Ranks that torchrun stopped with SIGTERM are never the cause while another rank failed.
    failures = {0: _failure(tmp_path, 0, -15, seconds_ago=5), 1: _failure(tmp_path, 1, 2), 2: _failure(tmp_path, 2, -15)}
    assert first_failure(failures)[0] == 1
    # Two ranks with an error of their own: the earlier one, whatever its rank.
    failures = {0: _failure(tmp_path, 0, 1), 3: _failure(tmp_path, 3, 1, seconds_ago=3)}
    assert first_failure(failures)[0] == 3
    # Only SIGTERMs (the launcher itself was stopped): the lowest rank.
    failures = {2: _failure(tmp_path, 2, -15), 1: _failure(tmp_path, 1, -15)}
    assert first_failure(failures)[0] == 1

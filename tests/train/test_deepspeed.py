"""DeepSpeed ZeRO through `deepspeed: FILE.json`: the shipped configs train exactly like DDP, resume, and save a
model that loads. Needs the `deepspeed` extra (see the README): `pytest -m deepspeed`.

Two processes on gloo. The first run compiles DeepSpeed's CPU communication op (and the offload configs its CPU
Adam), about a minute each, into the folder lmforge sets (`TORCH_EXTENSIONS_DIR`, see `train/engines.py`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train.conftest import tiny_args
from tests.train.test_distributed import env, listing, losses, train

pytestmark = pytest.mark.deepspeed

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "deepspeed"
TWO = {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"}


def ds_args(model_dir, out, config: str | None, **overrides) -> list[str]:
    settings = dict(per_device_train_batch_size=2, max_steps=6, save_steps=3, logging_steps=1, seed=0)
    settings.update(overrides)
    args = tiny_args(model_dir, out, **settings)
    return [*args, f"deepspeed={EXAMPLES / config}"] if config else args


@pytest.fixture(scope="module")
def ddp_lora(tiny_llama_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "lora"
    done = train(ds_args(tiny_llama_dir, out, None), env(out.parent, **TWO))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_the_shipped_configs_are_the_five_zero_setups():
    names = sorted(p.name for p in EXAMPLES.glob("*.json"))
    assert names == ["ds_z0_config.json", "ds_z2_config.json", "ds_z2_offload_config.json", "ds_z3_config.json",
                     "ds_z3_offload_config.json"]
    for name in names:
        config = json.loads((EXAMPLES / name).read_text())
        # Sizes, clipping and precision come from the lmforge config (the Trainer fills "auto").
        assert [config[k] for k in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                                    "gradient_clipping")] == ["auto"] * 3
        assert config["bf16"]["enabled"] == "auto" and config["zero_allow_untested_optimizer"] is True
        zero = config["zero_optimization"]
        assert zero["stage"] == int(name[4])
        assert ("offload_optimizer" in zero) == ("offload" in name)
        if zero["stage"] == 3:
            assert zero["stage3_gather_16bit_weights_on_model_save"] is True


@pytest.mark.parametrize("config", ["ds_z2_config.json", "ds_z3_config.json", "ds_z3_offload_config.json"])
def test_zero_trains_exactly_like_ddp(config, ddp_lora, tiny_llama_dir, tmp_path):
    out = tmp_path / "zero"
    done = train(ds_args(tiny_llama_dir, out, config), env(tmp_path, **TWO))
    assert done.returncode == 0, done.stderr[-3000:]
    ddp, zero = losses(ddp_lora), losses(out)
    assert [step for step, _ in zero] == [1, 2, 3, 4, 5, 6]
    for (_, a), (_, b) in zip(ddp, zero, strict=True):
        assert abs(a - b) < 1e-4, (ddp, zero)
    from safetensors.torch import load_file

    want, got = load_file(ddp_lora / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert sorted(got) == sorted(want)
    assert max((want[k] - got[k]).abs().max().item() for k in want) < 1e-3
    # The run folder is a single-process one, plus DeepSpeed's own state in each checkpoint.
    assert {"adapter_model.safetensors", "lmforge_run.json", "trainer_log.jsonl"} <= set(listing(out))
    assert (out / "checkpoint-3" / "global_step3").is_dir()
    assert json.loads((out / "lmforge_run.json").read_text())["processes"] == 2


def test_zero3_full_finetuning_saves_the_gathered_model_that_chat_loads(tiny_llama_dir, tmp_path):
    runs = {}
    for name, config in (("ddp", None), ("zero3", "ds_z3_config.json")):
        runs[name] = tmp_path / name
        done = train(ds_args(tiny_llama_dir, runs[name], config, finetuning_type="full", learning_rate="1e-4",
                             max_steps=3), env(tmp_path, **TWO))
        assert done.returncode == 0, done.stderr[-3000:]
    from safetensors.torch import load_file

    want, got = load_file(runs["ddp"] / "model.safetensors"), load_file(runs["zero3"] / "model.safetensors")
    # Every weight whole (not a rank's partition, not an empty placeholder) and trained as DDP trained it.
    assert {k: tuple(v.shape) for k, v in got.items()} == {k: tuple(v.shape) for k, v in want.items()}
    assert max((want[k] - got[k]).abs().max().item() for k in want) < 1e-4
    base = load_file(tiny_llama_dir / "model.safetensors")
    assert any((base[k] - got[k]).abs().max().item() > 1e-4 for k in base)
    answers = [subprocess.run([sys.executable, "-m", "lmforge", "chat", f"model_name_or_path={runs[name]}",
                               "do_sample=false", "max_new_tokens=12"], input="Who are you?\n", capture_output=True,
                              text=True, timeout=300, env=env(tmp_path)) for name in ("ddp", "zero3")]
    assert [a.returncode for a in answers] == [0, 0], answers[1].stderr[-2000:]
    assert answers[0].stdout.strip() and answers[1].stdout == answers[0].stdout


@pytest.mark.parametrize("config", ["ds_z2_config.json", "ds_z3_config.json"])
def test_a_zero_checkpoint_resumes_to_the_same_losses(config, tiny_llama_dir, tmp_path):
    out = tmp_path / "zero"
    args = ds_args(tiny_llama_dir, out, config)
    first = train(args, env(tmp_path, **TWO))
    assert first.returncode == 0, first.stderr[-3000:]
    full = losses(out)
    # As if the run had been stopped after checkpoint 3: only that checkpoint and the log remain.
    for path in out.iterdir():
        if path.name not in ("checkpoint-3", "trainer_log.jsonl"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    again = train(args, env(tmp_path, **TWO))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Resuming from {out / 'checkpoint-3'}" in again.stderr
    resumed = losses(out)
    assert [step for step, _ in resumed] == [1, 2, 3, 4, 5, 6]
    # Steps 4-6 equal only if DeepSpeed's optimizer state (Adam moments) came back with the weights.
    for (_, a), (_, b) in zip(full, resumed, strict=True):
        assert abs(a - b) < 1e-5, (full, resumed)


@pytest.mark.parametrize(("stage", "dataset", "metric"), [("pt", "pretrain_demo", "loss"),
                                                          ("dpo", "dpo_en_demo", "rewards/margins"),
                                                          ("kto", "kto_en_demo", "kl")])
def test_other_stages_run_under_zero2(stage, dataset, metric, tiny_llama_dir, tmp_path):
    out = tmp_path / "run"
    done = train(ds_args(tiny_llama_dir, out, "ds_z2_config.json", stage=stage, dataset=dataset, max_steps=2,
                         cutoff_len=64), env(tmp_path, **TWO))
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((out / "lmforge_run.json").read_text())
    assert (run["stage"], run["processes"]) == (stage, 2)
    assert any(metric in json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines())


def test_deepspeed_in_one_process_launches_its_process_group(tiny_llama_dir, tmp_path):
    """DeepSpeed runs only in a launched process group: lmforge launches one rather than fail inside DeepSpeed."""
    out = tmp_path / "run"
    done = train(ds_args(tiny_llama_dir, out, "ds_z0_config.json", max_steps=2), env(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Launching torchrun --nproc-per-node 1" in done.stderr
    assert json.loads((out / "lmforge_run.json").read_text())["processes"] == 1


def test_a_broken_deepspeed_config_is_one_line(tiny_llama_dir, tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text('{"zero_optimization": {"stage": 2,}}')
    done = train([*tiny_args(tiny_llama_dir, tmp_path / "run"), f"deepspeed={bad}"], env(tmp_path, **TWO))
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (f"lmforge train: error: deepspeed: '{bad}' is not valid JSON: Expecting "
                                            "property name enclosed in double quotes at line 1, column 35.")
    assert not (tmp_path / "run").exists()


def test_dpo_with_a_reference_model_under_zero3_scores_like_ddp(tiny_llama_dir, tmp_path):
    """Full-model DPO keeps a frozen reference copy; ZeRO-3 loads it partitioned, so it must run in an engine that
    gathers its weights (otherwise its forward sees empty tensors)."""
    logs = {}
    for name, config in (("ddp", None), ("zero3", "ds_z3_config.json")):
        out = tmp_path / name
        done = train(ds_args(tiny_llama_dir, out, config, stage="dpo", dataset="dpo_en_demo", finetuning_type="full",
                             learning_rate="1e-4", max_steps=2, cutoff_len=64), env(tmp_path, **TWO))
        assert done.returncode == 0, done.stderr[-3000:]
        logs[name] = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    for key in ("loss", "rewards/margins", "logps/chosen"):
        want = [r[key] for r in logs["ddp"] if key in r]
        got = [r[key] for r in logs["zero3"] if key in r]
        assert len(got) == len(want) == 2 and all(abs(a - b) < 1e-4 for a, b in zip(want, got, strict=True)), key


def test_a_deepspeed_config_without_a_valid_stage_is_one_line(tiny_llama_dir, tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text('{"zero_optimization": {"stage": 4}}')
    done = train([*tiny_args(tiny_llama_dir, tmp_path / "run"), f"deepspeed={bad}"], env(tmp_path, **TWO))
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (f"lmforge train: error: deepspeed: '{bad}' must be a JSON object whose "
                                            "zero_optimization.stage is 0, 1, 2 or 3 (found 4); see examples/deepspeed/.")

"""Which checkpoint a run resumes from; a killed run's leftovers (see test_kill_resume.py for SIGKILL end to end)."""

from __future__ import annotations

import json

from lmforge.config import parse_config
from lmforge.train.outputs import prepare_output_dir


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


def test_resume_drops_what_the_killed_run_wrote_after_its_checkpoint(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint-2").mkdir(parents=True)
    logged = [{"current_steps": 1, "loss": 3.0}, {"current_steps": 2, "loss": 2.0}]
    (out / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"global_step": 2, "log_history": logged}))
    lines = [json.dumps(r) for r in [*logged, {"current_steps": 3, "loss": 1.0}]]
    # Step 3 was logged after the checkpoint, then the kill cut the line of step 4 short.
    (out / "trainer_log.jsonl").write_text("\n".join(lines) + '\n{"current_steps": 4, "lo')
    (out / ".lmforge_run.json.k2j3.tmp").write_text('{"half": ')  # a JSON write killed before its rename
    cfg = parse_config("train", ["model_name_or_path=m", "do_train=true", "dataset=identity", f"output_dir={out}"])
    assert prepare_output_dir(cfg) == str(out / "checkpoint-2")
    # The resumed run logs step 3 again: it must appear once.
    assert (out / "trainer_log.jsonl").read_text() == "\n".join(lines[:2]) + "\n"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2", "trainer_log.jsonl"]

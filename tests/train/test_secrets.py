"""Hub tokens given to a run never reach a file: run file, checkpoints, training_args.bin, logs, export, hub upload.

Every file is read as bytes (the pickled training_args.bin included, inspected with pickletools,
never unpickled): a token written anywhere, in any encoding Python's pickle or JSON uses for
ASCII text, would show up verbatim.
"""

from __future__ import annotations

import os
import pickletools
import subprocess
import sys
import zipfile
from pathlib import Path

from transformers import TrainerCallback

from tests.export.hub import fake_hub
from tests.train.conftest import tiny_args

TOKENS = {"hf_hub_token": "hf_FAKE_SECRET_123", "hub_token": "hf_FAKE_HUB_TOKEN_456"}
ENV_TOKEN = "hf_FAKE_ENV_TOKEN_789"  # HF_TOKEN: huggingface_hub's own fallback
SECRETS = (*TOKENS.values(), ENV_TOKEN)


def files_with_secrets(folder: Path) -> dict[str, list[str]]:
    """Every file under `folder` (hidden ones too) whose bytes contain a token, with the tokens found."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            hits = [s for s in SECRETS if s.encode() in data]
            if hits:
                found[str(path.relative_to(folder))] = hits
    return found


def pickled_globals(path: Path) -> set[str]:
    """The `module.name` globals a torch.save file refers to, read with pickletools (nothing is unpickled)."""
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    names, strings = set(), []
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif opcode.name == "STACK_GLOBAL":
            names.add(".".join(strings[-2:]))
        elif opcode.name == "GLOBAL":
            names.add(arg.replace(" ", "."))
    return names


class SeenToken(TrainerCallback):
    """Records the hub token the Trainer's live arguments hold while training."""

    def __init__(self):
        self.hub_token = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.hub_token = args.hub_token


def test_tokens_never_reach_a_file_a_log_or_the_hub(tiny_llama_dir, tmp_path, monkeypatch, capfd):
    from lmforge.commands.common import load_config
    from lmforge.train.run import run

    monkeypatch.setenv("HF_TOKEN", ENV_TOKEN)
    out = tmp_path / "run"
    seen = SeenToken()
    # Two steps, a checkpoint after each, TensorBoard logging: every kind of file a run writes.
    args = tiny_args(tiny_llama_dir, out, max_steps=2, save_steps=1, report_to="tensorboard", **TOKENS)
    run(load_config("train", args), callbacks=[seen])
    assert seen.hub_token == TOKENS["hub_token"]  # the live run keeps its token; only the files lose it
    train_log = capfd.readouterr()

    export_dir = tmp_path / "export"
    with fake_hub() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf-home"),
               "HF_TOKEN": ENV_TOKEN, "OMP_NUM_THREADS": "1"}
        export = subprocess.run(
            [sys.executable, "-m", "lmforge", "export", f"model_name_or_path={out}", f"export_dir={export_dir}",
             "export_hub_model_id=forge/tiny-secret", f"hf_hub_token={TOKENS['hf_hub_token']}"],
            env=env, capture_output=True, text=True, timeout=600)
    assert export.returncode == 0, export.stderr[-3000:]

    # What is scanned holds everything: checkpoints with training_args.bin, the run and export files, TB events.
    written = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    for name in ("run/lmforge_run.json", "run/training_args.bin", "run/checkpoint-1/training_args.bin",
                 "run/checkpoint-2/trainer_state.json", "run/trainer_state.json", "run/trainer_log.jsonl",
                 "export/lmforge_export.json"):
        assert name in written
    assert any(name.startswith("run/runs/") and "tfevents" in name for name in written), sorted(written)
    assert files_with_secrets(tmp_path) == {}
    for text in (train_log.out, train_log.err, export.stdout, export.stderr):
        assert not [s for s in SECRETS if s in text]
    # training_args.bin is transformers' own class, loadable without lmforge.
    classes = pickled_globals(out / "checkpoint-1" / "training_args.bin")
    assert "transformers.training_args_seq2seq.Seq2SeqTrainingArguments" in classes
    assert not [name for name in classes if name.startswith("lmforge")]

    # The hub got a private repo, the exported files (none holding a token), and the token only in its header.
    assert hub.unknown == []
    create = next(r for r in hub.requests if r["path"] == "/api/repos/create")
    assert create["json"]["name"] == "tiny-secret" and create["json"]["organization"] == "forge"
    assert create["json"].get("visibility") == "private" or create["json"].get("private") is True
    assert sorted(hub.uploaded) == sorted(p.name for p in export_dir.iterdir())
    assert not [name for name, data in hub.uploaded.items() if any(s.encode() in data for s in SECRETS)]
    authorized = {r["headers"].get("authorization") for r in hub.requests if r["path"] != "/api/agent-harnesses"}
    assert authorized == {f"Bearer {TOKENS['hf_hub_token']}"}

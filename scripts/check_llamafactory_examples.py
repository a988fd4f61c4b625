"""Run LLaMA-Factory's example configs through lmforge, as a user switching over would, and count the outcomes.

    python scripts/check_llamafactory_examples.py PATH/TO/LLaMA-Factory/examples [--only train_lora,extras]

Each YAML of train_lora/, train_full/, train_qlora/, inference/, merge_lora/ and extras/ runs unchanged
except for what cannot exist here: the hub model becomes a tiny local one of the same family (built
with `lmforge tiny-model`), the dataset folder is lmforge's `data/` (a dataset it does not bundle becomes a bundled one of the same kind),
outputs go to a temporary folder, training stops after 2 steps (generation after 16 tokens), and an adapter or reward model the
config names is a tiny run made first. A training config runs `lmforge train`, an export config
`lmforge export`, an inference config `lmforge chat` with one question. Each outcome is one of:

- ok: the command finished;
- refused: it exited with one line saying why (a feature lmforge does not have, a GPU it needs);
- failed: anything else (a traceback, a crash, a timeout).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("train_lora", "train_full", "train_qlora", "inference", "merge_lora", "extras")
# A dataset lmforge does not bundle becomes the bundled one of its kind.
STAND_INS = {"pt": "pretrain_demo", "rm": "dpo_en_demo", "dpo": "dpo_en_demo", "kto": "kto_en_demo"}


def lmforge(*args: str, stdin: str | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "lmforge", *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=REPO)


def tiny_models(work: Path) -> dict[str, Path]:
    models = {}
    for arch in ("llama", "qwen2", "qwen2_vl"):
        folder = work / f"tiny-{arch}"
        if not folder.exists():
            result = lmforge("tiny-model", str(folder), "--arch", arch)
            if result.returncode:
                raise SystemExit(f"tiny-model --arch {arch} failed: {result.stderr.strip().splitlines()[-1]}")
        models[arch] = folder
    return models


def model_for(settings: dict, models: dict[str, Path]) -> Path:
    name = str(settings.get("model_name_or_path", "")).lower()
    template = str(settings.get("template", ""))
    if "vl" in name or "vl" in template or "llava" in name or "moss" in name:
        return models["qwen2_vl"]
    if "qwen" in name or template.startswith("qwen"):
        return models["qwen2"]
    return models["llama"]


def base_run(kind: str, model: Path, template: str, work: Path) -> Path:
    """A tiny LoRA run (sft or rm) on `model`: what a config's adapter_name_or_path or reward_model names."""
    out = work / f"base-{kind}-{model.name}-{template}"
    if not (out / "adapter_config.json").is_file():
        stage, dataset = ("rm", "dpo_en_demo") if kind == "rm" else ("sft", "identity")
        lmforge("train", f"model_name_or_path={model}", f"stage={stage}", "do_train=true", "finetuning_type=lora",
                f"dataset={dataset}", f"dataset_dir={REPO / 'data'}", f"template={template}", "cutoff_len=128",
                f"output_dir={out}", "max_steps=2", "overwrite_output_dir=true")
    return out


def overrides(settings: dict, models: dict[str, Path], work: Path, out: Path) -> tuple[str, list[str]]:
    model = model_for(settings, models)
    template = settings.get("template") or ("qwen" if "qwen" in model.name else "llama3")
    args = [f"model_name_or_path={model}"]
    if settings.get("adapter_name_or_path"):
        args.append(f"adapter_name_or_path={base_run('sft', model, template, work)}")
    if settings.get("reward_model"):
        args.append(f"reward_model={base_run('rm', model, template, work)}")
    if "export_dir" in settings:
        return "export", [*args, f"export_dir={out}"]
    if "stage" not in settings:
        return "chat", [*args, "do_sample=false", "max_new_tokens=8"]
    args += [f"dataset_dir={REPO / 'data'}", f"output_dir={out}", "max_steps=2", "logging_steps=1",
             "save_steps=1000", "preprocessing_num_workers=1", "dataloader_num_workers=0", "cutoff_len=256"]
    bundled = json.loads((REPO / "data" / "dataset_info.json").read_text())
    stand_in = STAND_INS.get(settings.get("stage"), "identity")
    for key in ("dataset", "eval_dataset"):
        if settings.get(key):
            names = [n.strip() for n in str(settings[key]).split(",")]
            args.append(f"{key}={','.join(dict.fromkeys(n if n in bundled else stand_in for n in names))}")
    if settings.get("deepspeed"):
        args.append(f"deepspeed={REPO / 'examples' / 'deepspeed' / Path(str(settings['deepspeed'])).name}")
    if settings.get("stage") == "ppo" or settings.get("do_predict"):
        args.append("max_new_tokens=16")  # a random tiny model writes to the limit
    return "train", args


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("examples", type=Path, help="LLaMA-Factory's examples/ folder")
    parser.add_argument("--only", default=",".join(SECTIONS), help="sections, comma-separated")
    parser.add_argument("--json", type=Path, help="also write the outcomes to this file")
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lmforge-lf-examples-"))
    models = tiny_models(work)
    outcomes = []
    for section in opts.only.split(","):
        for path in sorted((opts.examples / section).rglob("*.yaml")):
            settings = yaml.safe_load(path.read_text()) or {}
            if not isinstance(settings, dict) or "model_name_or_path" not in settings:
                continue  # not a run config (e.g. a token list)
            out = work / "out" / path.relative_to(opts.examples).with_suffix("")
            command, args = overrides(settings, models, work, out)
            try:
                result = lmforge(command, str(path), *args, stdin="Who are you?\nexit\n" if command == "chat" else None)
                last = (result.stderr.strip().splitlines() or [""])[-1]
                if result.returncode == 0:
                    status = "ok"
                elif "Traceback" not in result.stderr and ": error: " in last:
                    status = "refused"
                else:
                    status = "failed"
            except subprocess.TimeoutExpired:
                status, last = "failed", "timeout"
            outcomes.append({"config": str(path.relative_to(opts.examples)), "command": command, "status": status,
                             "line": "" if status == "ok" else last[:300]})
            print(f"{status:8} {outcomes[-1]['config']}" + (f"\n         {last[:300]}" if status != "ok" else ""),
                  flush=True)
    counts = {s: sum(o["status"] == s for o in outcomes) for s in ("ok", "refused", "failed")}
    print(f"{len(outcomes)} configs: {counts['ok']} ok, {counts['refused']} refused, {counts['failed']} failed")
    if opts.json:
        opts.json.write_text(json.dumps({"counts": counts, "outcomes": outcomes}, indent=2, ensure_ascii=False))
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())

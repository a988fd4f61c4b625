"""Step time and peak memory of the preference and RL stages against LoRA SFT on the same model and data.

Run (from the repository root):

    .venv/bin/python benchmarks/preference_memory.py --model tiny --out benchmarks/results/preference_tiny_cpu.json
    .venv/bin/python benchmarks/preference_memory.py --model 0.5b --steps 4 --out benchmarks/results/preference_0.5b_cpu.json

Every configuration is one `lmforge train` child process on the demo pairs (`dpo_en_demo`); SFT trains
on the same rows' chosen answers (the same file, read without `ranking`), so the data is the same.
Measured per configuration: peak RSS of the child (`os.wait4`, whole run: load, tokenize, train,
save) and seconds per optimizer step (the Trainer's train_runtime over the steps, the first included). The
ratio column compares each with LoRA SFT of the same run (a grpo step also samples its completions, so
its time is mostly generation): LoRA DPO without `ref_model` uses the
policy with its adapter switched off as the reference, so it needs no second copy of the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {
    "sft (lora)": {"stage": "sft", "dataset": "dpo_as_sft"},
    "dpo sigmoid (lora, no ref_model)": {"stage": "dpo", "dataset": "dpo_en_demo", "pref_loss": "sigmoid"},
    "dpo orpo (lora)": {"stage": "dpo", "dataset": "dpo_en_demo", "pref_loss": "orpo"},
    "kto (lora)": {"stage": "kto", "dataset": "kto_en_demo"},
    "rm (lora)": {"stage": "rm", "dataset": "dpo_en_demo"},
    # One prompt per step, `batch` sampled completions of up to 32 tokens each, scored by a built-in rule.
    "grpo (lora, no KL)": {"stage": "grpo", "dataset": "dpo_as_sft", "reward_funcs": "length_penalty",
                           "max_completion_length": 32, "beta": 0.0},
}


def _dataset_dir(tmp: Path) -> Path:
    """The bundled data plus `dpo_as_sft`: dpo_en_demo's prompts with their chosen answers, for SFT."""
    folder = tmp / "data"
    shutil.copytree(REPO / "data", folder)
    info = json.loads((folder / "dataset_info.json").read_text())
    info["dpo_as_sft"] = {"file_name": "dpo_en_demo.json", "columns": {"prompt": "instruction", "query": "input",
                                                                       "response": "chosen"}}
    (folder / "dataset_info.json").write_text(json.dumps(info))
    return folder


def _run(model: Path, data: Path, out: Path, settings: dict, steps: int, batch: int, checkpointing: bool) -> dict:
    args = {"model_name_or_path": model, "do_train": "true", "dataset_dir": data, "template": "qwen",
            "output_dir": out, "cutoff_len": 256, "max_steps": steps, "per_device_train_batch_size": batch,
            "learning_rate": "1e-4", "logging_steps": 1, "save_steps": 10_000, "report_to": "none",
            "disable_gradient_checkpointing": str(not checkpointing).lower(), **settings}
    if settings["stage"] == "grpo":
        args["num_generations"] = batch  # per_device_train_batch_size counts completions
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LMFORGE_PROGRESS": "off"}
    proc = subprocess.Popen([sys.executable, "-m", "lmforge", "train", *[f"{k}={v}" for k, v in args.items()]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{settings} failed:\n{proc.stderr.read()[-3000:]}")
    runtime = json.loads((out / "train_results.json").read_text())["train_runtime"]
    return {"peak_rss_gib": round(usage.ru_maxrss / 2**20, 3), "s_per_step": round(runtime / steps, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=("tiny", "0.5b"), default="tiny")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--no-checkpointing", action="store_true",
                        help="disable_gradient_checkpointing (lmforge recomputes activations by default)")
    parser.add_argument("--out")
    args = parser.parse_args()
    steps = args.steps or (20 if args.model == "tiny" else 4)
    batch = args.batch_size or (4 if args.model == "tiny" else 2)
    from lmforge.testing.tiny import build_tiny_model

    rows = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = build_tiny_model(tmp / "model", arch="qwen2", size=args.model)
        data = _dataset_dir(tmp)
        for name, settings in CONFIGS.items():
            rows[name] = _run(model, data, tmp / name.split()[0].replace("(", ""), settings, steps, batch,
                             not args.no_checkpointing)
            shutil.rmtree(tmp / name.split()[0].replace("(", ""), ignore_errors=True)
    base = rows["sft (lora)"]
    ckpt = "no activation checkpointing" if args.no_checkpointing else "activation checkpointing"
    print(f"| {args.model}, {steps} steps, batch {batch}, {ckpt} | peak RSS GiB | x SFT | s/step | x SFT |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        row["rss_vs_sft"] = round(row["peak_rss_gib"] / base["peak_rss_gib"], 2)
        row["time_vs_sft"] = round(row["s_per_step"] / base["s_per_step"], 2) if base["s_per_step"] else None
        print(f"| {name} | {row['peak_rss_gib']} | {row['rss_vs_sft']} | {row['s_per_step']} | {row['time_vs_sft']} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "steps": steps, "batch": batch, "rows": rows,
                                              "activation_checkpointing": not args.no_checkpointing,
                                              "platform": platform.platform(), "cpus": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()

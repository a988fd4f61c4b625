"""Peak memory and step time of QLoRA (bitsandbytes 4-bit and 8-bit) against LoRA on full-precision weights.

Run (from the repository root, with the `quantization` extra installed):

    .venv/bin/python benchmarks/qlora_memory.py --model 0.5b --out benchmarks/results/qlora_0.5b_cpu.json
    .venv/bin/python benchmarks/qlora_memory.py --model tiny --out benchmarks/results/qlora_tiny_cpu.json

Every configuration is one `lmforge train` child process: LoRA sft (rank 8, all linear layers) on the identity
data, `cutoff_len` 256, the same steps and batch, fp32 compute, activation checkpointing (lmforge's default).
Measured per configuration: the child's peak RSS (`os.wait4`: the whole run, loading included), its peak
anonymous RSS (`RssAnon` in /proc, polled every 0.2 s: the memory the process allocated, without the page cache of
the mmapped safetensors file that the peak RSS also counts), the peak RSS once training has started (polled
from the moment the run writes its training log: loading excluded), the seconds per optimizer step (the Trainer's train_runtime over the steps, the first included), and, in a second child, the
bytes the loaded model's weights take (`get_memory_footprint()`, the model as lmforge loads it for training).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {
    "lora (fp32 weights)": {},
    "qlora 4-bit (nf4, double quantization)": {"quantization_bit": 4},
    "qlora 8-bit": {"quantization_bit": 8},
}

FOOTPRINT = """
import json, sys
from lmforge.config import parse_config
from lmforge.model.tokenizer import load_tokenizer_and_template
from lmforge.train.common import load_trainable_model
cfg = parse_config("train", sys.argv[1:])
tokenizer, template = load_tokenizer_and_template(cfg.model, cfg.data)
model = load_trainable_model(cfg, tokenizer, template)
print(json.dumps({"weights_gib": model.get_memory_footprint() / 2**30}))
"""


def _args(model: Path, out: Path, settings: dict, steps: int, batch: int) -> list[str]:
    args = {"model_name_or_path": model, "do_train": "true", "stage": "sft", "finetuning_type": "lora",
            "dataset": "identity", "dataset_dir": REPO / "data", "template": "qwen", "output_dir": out,
            "cutoff_len": 256, "max_steps": steps, "per_device_train_batch_size": batch, "learning_rate": "1e-4",
            "logging_steps": 1, "save_steps": 10_000, "report_to": "none", **settings}
    return [f"{k}={v}" for k, v in args.items()]


def _run(model: Path, out: Path, settings: dict, steps: int, batch: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LMFORGE_PROGRESS": "off"}
    args = _args(model, out, settings, steps, batch)
    load_before = os.getloadavg()[0]  # the machine may be shared: step times are only comparable at a low load
    err = (out.parent / f"{out.name}.stderr").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "lmforge", "train", *args], stdout=subprocess.DEVNULL,
                            stderr=err, env=env, text=True)
    peak_anon = peak_training = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        rss, anon = _rss(proc.pid)
        peak_anon = max(peak_anon, anon)
        if (out / "trainer_log.jsonl").exists():  # the first step is logged: loading is over
            peak_training = max(peak_training, rss)
        time.sleep(0.2)
    if status != 0:
        err.seek(0)
        raise SystemExit(f"{settings} failed:\n{err.read()[-3000:]}")
    runtime = json.loads((out / "train_results.json").read_text())["train_runtime"]
    footprint = subprocess.run([sys.executable, "-c", FOOTPRINT, *args], capture_output=True, text=True, env=env,
                               check=True)
    weights = json.loads(footprint.stdout.strip().splitlines()[-1])["weights_gib"]
    return {"load_average_before": round(load_before, 2), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 3), "peak_anon_rss_gib": round(peak_anon / 2**20, 3),
            "training_rss_gib": round(peak_training / 2**20, 3),
            "weights_gib": round(weights, 3),
            "s_per_step": round(runtime / steps, 3)}


def _rss(pid: int) -> tuple[int, int]:
    """(VmRSS, RssAnon) of `pid` in KiB ((0, 0) once it has exited)."""
    values = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                values[key] = int(rest.split()[0])
    except OSError:
        pass
    return values.get("VmRSS", 0), values.get("RssAnon", 0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=("tiny", "0.5b"), default="tiny")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--out")
    args = parser.parse_args()
    steps = args.steps or (20 if args.model == "tiny" else 4)
    batch = args.batch_size or (4 if args.model == "tiny" else 2)
    from lmforge.testing.tiny import build_tiny_model

    rows = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = build_tiny_model(tmp / "model", arch="qwen2", size=args.model)
        for i, (name, settings) in enumerate(CONFIGS.items()):
            rows[name] = _run(model, tmp / f"run{i}", settings, steps, batch)
            print(name, rows[name], flush=True)
    base = rows["lora (fp32 weights)"]
    print(f"\n| {args.model}, {steps} steps, batch {batch} | weights GiB | peak RSS GiB (whole run) | x LoRA | "
          "peak RSS GiB (training) | x LoRA | peak anonymous RSS GiB | s/step | x LoRA |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        for key in ("peak_rss_gib", "training_rss_gib", "s_per_step"):
            row[f"{key}_vs_lora"] = round(row[key] / base[key], 2) if base[key] else None
        print(f"| {name} | {row['weights_gib']} | {row['peak_rss_gib']} | {row['peak_rss_gib_vs_lora']} | "
              f"{row['training_rss_gib']} | {row['training_rss_gib_vs_lora']} | {row['peak_anon_rss_gib']} | "
              f"{row['s_per_step']} | {row['s_per_step_vs_lora']} |")
    if args.out:
        import bitsandbytes
        import torch

        Path(args.out).write_text(json.dumps({
            "model": args.model, "steps": steps, "batch": batch, "cutoff_len": 256, "rows": rows,
            "platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "bitsandbytes": bitsandbytes.__version__, "cuda": torch.cuda.is_available()}, indent=2) + "\n")


if __name__ == "__main__":
    main()

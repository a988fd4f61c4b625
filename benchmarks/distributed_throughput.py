"""One process against two (torchrun, DDP over gloo) on this machine: the same training, the same global batch.

Run (from the repository root):

    .venv/bin/python benchmarks/distributed_throughput.py --model tiny --out benchmarks/results/distributed_tiny_cpu.json
    .venv/bin/python benchmarks/distributed_throughput.py --model 0.5b --steps 4 --out benchmarks/results/distributed_0.5b_cpu.json

    .venv/bin/python benchmarks/distributed_throughput.py --model 0.5b --finetuning full --engines --steps 3 \
        --out benchmarks/results/distributed_engines_0.5b_cpu.json

Each configuration is one `lmforge train` command (sft on the identity data): 1 process with
per-device batch B, then `FORCE_TORCHRUN=1 NPROC_PER_NODE=2` with batch B/2, so both see the same
global batch. Measured: seconds per optimizer step (train_runtime / steps), training tokens per
second, with the threads split fairly (one process: all cores; two: half each), and the peak resident
memory of the largest process. On a 2-core CPU the second process mostly adds communication; on a
multi-GPU machine the same command scales. `--engines` adds DeepSpeed ZeRO-2 and ZeRO-3 (the shipped
configs; needs the deepspeed extra) and FSDP2 on the same two processes: what they change is the
memory each process holds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


# Runs a command and prints the peak RSS (KiB) of its largest process: the ranks are the launcher's
# children, whose peaks reach us through getrusage once the launcher has waited for them.
_PEAK = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)")
ENGINES = {"ZeRO-2": {"deepspeed": REPO / "examples" / "deepspeed" / "ds_z2_config.json"},
           "ZeRO-3": {"deepspeed": REPO / "examples" / "deepspeed" / "ds_z3_config.json"},
           "FSDP2": {"fsdp": "full_shard", "fsdp_config": {"fsdp_version": 2}}}


def _run(model: Path, out: Path, processes: int, steps: int, batch: int, finetuning: str = "lora",
         engine: dict | None = None) -> dict:
    cores = os.cpu_count() or 1
    args = {"finetuning_type": finetuning, **(engine or {}), "model_name_or_path": model, "stage": "sft", "do_train": "true", "dataset": "identity",
            "dataset_dir": REPO / "data", "template": "qwen", "cutoff_len": 256, "output_dir": out,
            "per_device_train_batch_size": batch // processes, "max_steps": steps, "logging_steps": 1,
            "save_steps": 10_000, "learning_rate": "1e-4", "report_to": "none", "seed": 0}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LMFORGE_PROGRESS": "off",
           "OMP_NUM_THREADS": str(max(1, cores // processes))}
    if processes > 1:
        env.update(FORCE_TORCHRUN="1", NPROC_PER_NODE=str(processes))
    config = out.parent / f"{out.name}.yaml"
    config.write_text(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in args.items()}))
    done = subprocess.run([sys.executable, "-c", _PEAK, sys.executable, "-m", "lmforge", "train", str(config)],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{processes} processes failed:\n{done.stderr[-3000:]}")
    results = json.loads((out / "train_results.json").read_text())
    losses = [json.loads(line).get("loss") for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    return {"s_per_step": round(results["train_runtime"] / steps, 3),
            "peak_rss_mib": round(int(done.stderr.strip().splitlines()[-1]) / 1024),
            "tokens_per_second": results.get("train_tokens_per_second"),
            "losses": [round(loss, 4) for loss in losses if loss is not None]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=("tiny", "0.5b"), default="tiny")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--finetuning", choices=("lora", "full"), default="lora")
    parser.add_argument("--engines", action="store_true", help="add ZeRO-2, ZeRO-3 and FSDP2 on 2 processes")
    parser.add_argument("--only", nargs="+", choices=tuple(ENGINES), help="of the engines, run only these")
    parser.add_argument("--out")
    args = parser.parse_args()
    steps = args.steps or (30 if args.model == "tiny" else 4)
    from lmforge.testing.tiny import build_tiny_model

    rows = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = build_tiny_model(tmp / "model", arch="qwen2", size=args.model)
        for processes in (1, 2):
            rows[f"{processes} process{'es' if processes > 1 else ''}"] = _run(
                model, tmp / str(processes), processes, steps, args.batch_size, args.finetuning)
        for name, engine in ENGINES.items() if args.engines else ():
            if args.only and name not in args.only:
                continue
            rows[f"2 processes, {name}"] = _run(model, tmp / name, 2, steps, args.batch_size, args.finetuning, engine)
    one = rows["1 process"]
    print(f"| {args.model} {args.finetuning}, {steps} steps, global batch {args.batch_size} | s/step | x 1 process | "
          "tokens/s | peak RSS of a process (MiB) | same losses |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        row["time_vs_one"] = round(row["s_per_step"] / one["s_per_step"], 2)
        same = all(abs(a - b) < 1e-3 for a, b in zip(row["losses"], one["losses"], strict=True))
        print(f"| {name} | {row['s_per_step']} | {row['time_vs_one']} | {row['tokens_per_second']} | "
              f"{row['peak_rss_mib']} | {same} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "finetuning": args.finetuning, "steps": steps,
                                              "global_batch": args.batch_size,
                                              "rows": rows, "platform": platform.platform(),
                                              "cpus": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()

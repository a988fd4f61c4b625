"""Training throughput of lmforge's LoRA SFT path, with ablations measured against its defaults.

Run (from the repository root):

    .venv/bin/python benchmarks/train_throughput.py --model tiny --out benchmarks/results/train_throughput_tiny_cpu.json
    .venv/bin/python benchmarks/train_throughput.py --model 0.5b --out benchmarks/results/train_throughput_0.5b_cpu.json
    .venv/bin/python benchmarks/train_throughput.py --model all --steps 3 --out benchmarks/results/all.json

Defaults: tiny 20 steps at batch 4, 0.5b 3 steps at batch 1 (1024-token steps of the 0.5b model take
about a minute on 2 CPU cores); `--steps` / `--batch-size` apply to every model of the run.

Every configuration runs `lmforge.train.run.run(cfg)` (tokenize with the template, SFTDataCollator,
ForgeTrainer, checkpoint and result writing) in its own child process, so the child's peak RSS
(`os.wait4` rusage) belongs to that configuration alone. Models are built with
`lmforge.testing.tiny.build_tiny_model` into a temporary folder outside the repository and
deleted afterwards (the 0.5b one is Qwen2.5-0.5B-shaped, ~2 GB in fp32).

Measured per configuration, over the steps after the first (warm-up) step, from one
`on_step_end` to the next (so data loading, collation, forward, backward, optimizer, logging):
  * tokens/s      non-padding tokens fed per second (tokens that belong to a real sample),
  * samples/s     conversations per second (a packed row holds several),
  * pad frac      padded tokens / all tokens fed (batch x padded length),
  * s/step        mean and median wall seconds per optimizer step; CPU s/step is the process CPU time,
  * peak RSS      maximum resident set of the child process, GiB (whole run: load, tokenize, train, save).
The ablations are also given as ratios against the baseline of the same model.

The collator is lmforge's SFTDataCollator; the benchmark only wraps it (a subclass installed in
`lmforge.train.sft`) to count real / fed tokens, and, for the `pad_to_cutoff` ablation, to pad every
batch to cutoff_len by giving it pad_to_multiple_of=cutoff_len, which is what a naive pipeline does.

`--device cuda` (with `--bf16` for bf16 everywhere) is accepted for a GPU run; it is untested on the
machine these results were taken on, which had no GPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = REPO / "data"

# name -> (what it changes, lmforge config overrides, benchmark-only options)
TINY_CONFIGS: dict[str, tuple[str, dict[str, str], dict]] = {
    "baseline": ("lmforge defaults: pad to longest (multiple of 8), SDPA, no packing, grad ckpt on", {}, {}),
    "pad_to_cutoff": ("every batch padded to cutoff_len (naive pipeline)", {}, {"pad_to_cutoff": True}),
    "eager_attention": ("flash_attn=disabled (eager attention) instead of SDPA", {"flash_attn": "disabled"}, {}),
    "packing": ("packing=true (cutoff_len blocks)", {"packing": "true"}, {}),
    "packing_eager": ("packing=true with eager attention: SDPA's effect on 1024-token rows",
                      {"packing": "true", "flash_attn": "disabled"}, {}),
    "neat_packing": ("neat_packing=true (block-diagonal 4D mask)", {"neat_packing": "true"}, {}),
    "no_grad_ckpt": ("disable_gradient_checkpointing=true", {"disable_gradient_checkpointing": "true"}, {}),
}
QWEN_CONFIGS: dict[str, tuple[str, dict[str, str], dict]] = {
    "baseline": ("lmforge defaults: pad to longest (multiple of 8), SDPA, no packing, grad ckpt on, fp32", {}, {}),
    "pad_to_cutoff": ("every batch padded to cutoff_len (naive pipeline)", {}, {"pad_to_cutoff": True}),
    "packing": ("packing=true (cutoff_len blocks)", {"packing": "true"}, {}),
    "no_grad_ckpt": ("disable_gradient_checkpointing=true", {"disable_gradient_checkpointing": "true"}, {}),
    # Skipped on a CPU without native bf16 (AVX2-only: measured 0.03x of fp32, ~9 minutes for 3 steps)
    # unless asked for with --configs bf16.
    "bf16": ("bf16=true (bf16 weights + autocast)", {"bf16": "true"}, {"needs_native_bf16": True}),
}
MODELS = {
    # model key -> (tiny-model arch, size, template, batch size, default steps, configs)
    "tiny": ("llama", "tiny", "llama3", 4, 20, TINY_CONFIGS),
    "0.5b": ("qwen2", "0.5b", "qwen", 1, 3, QWEN_CONFIGS),
}
CUTOFF_LEN = 1024


# ------------------------------------------------------------------------------------------------
# child: one configuration, in its own process
# ------------------------------------------------------------------------------------------------
def _real_length(feature) -> int:
    """Tokens of a processed row that belong to a sample (packed rows end in padding)."""
    if "position_ids" in feature:
        mask = list(feature["attention_mask"])
        if any(m > 1 for m in mask):  # neat packing: sample indices, 0 = padding
            return sum(1 for m in mask if m)
        positions = list(feature["position_ids"])
        # Plain packing attends over its padding (mask 1): the padding tail has position 0.
        last = max((i for i, p in enumerate(positions) if p != 0), default=-1)
        return last + 1
    return len(feature["input_ids"])


def _samples_in(feature) -> int:
    """Conversations in a processed row: 1, or the number of packed samples."""
    if "position_ids" not in feature:
        return 1
    positions = list(feature["position_ids"])[: _real_length(feature)]
    return sum(1 for p in positions if p == 0)


def run_child(spec: dict) -> dict:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("LMFORGE_PROGRESS", "0")
    import torch
    from transformers import TrainerCallback

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])

    import lmforge.train.sft as sft_module
    from lmforge.config import parse_config
    from lmforge.data.collator import SFTDataCollator
    from lmforge.train.run import run

    batches: list[dict] = []
    pad_to = spec["cutoff_len"] if spec["options"].get("pad_to_cutoff") else None

    class BenchCollator(SFTDataCollator):
        """lmforge's collator, counting what it feeds (and padding to cutoff_len for that ablation)."""

        def __post_init__(self) -> None:
            super().__post_init__()
            if pad_to:
                self.pad_to_multiple_of = pad_to  # every sample <= cutoff_len: pads to exactly cutoff_len

        def __call__(self, features):
            batch = super().__call__(features)
            real = sum(_real_length(f) for f in features)
            supervised = sum(1 for f in features for label in f["labels"] if label != -100)
            batches.append({
                "real": real,
                "fed": int(batch["input_ids"].numel()),
                "rows": len(features),
                "samples": sum(_samples_in(f) for f in features),
                "supervised": supervised,
                "length": int(batch["input_ids"].shape[1]),
            })
            return batch

    sft_module.SFTDataCollator = BenchCollator

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.wall: list[float] = []
            self.cpu: list[float] = []
            self.train_begin = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.train_begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if spec["device"] == "cuda":
                torch.cuda.synchronize()
            self.wall.append(time.perf_counter())
            self.cpu.append(time.process_time())

    timer = StepTimer()
    cfg = parse_config("train", spec["argv"])
    start = time.perf_counter()
    metrics = run(cfg, callbacks=[timer])
    total = time.perf_counter() - start

    steps = len(timer.wall)
    if steps < 2:
        raise SystemExit("need at least 2 steps (1 warm-up + 1 timed)")
    if len(batches) < steps:
        raise SystemExit(f"the benchmark collator saw {len(batches)} batches for {steps} steps: was it bypassed?")
    step_wall = [b - a for a, b in zip(timer.wall, timer.wall[1:])]
    step_cpu = [b - a for a, b in zip(timer.cpu, timer.cpu[1:])]
    timed = batches[1:steps]  # batch k feeds step k+1 (gradient_accumulation_steps=1); the first is warm-up
    seconds = sum(step_wall)
    real = sum(b["real"] for b in timed)
    fed = sum(b["fed"] for b in timed)
    log_path = Path(cfg.train.output_dir) / "trainer_log.jsonl"
    log_lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()] if log_path.exists() else []
    result = {
        "steps": steps,
        "timed_steps": len(step_wall),
        "warmup_step_s": round(timer.wall[0] - timer.train_begin, 3),
        "tokens_per_s": round(real / seconds, 2),
        "samples_per_s": round(sum(b["samples"] for b in timed) / seconds, 4),
        "rows_per_s": round(sum(b["rows"] for b in timed) / seconds, 4),
        "supervised_tokens_per_s": round(sum(b["supervised"] for b in timed) / seconds, 2),
        "fed_tokens_per_s": round(fed / seconds, 2),
        "padding_fraction": round(1 - real / fed, 4) if fed else 0.0,
        "mean_batch_length": round(statistics.mean(b["length"] for b in timed), 1),
        "real_tokens_per_step": round(real / len(timed), 1),
        "s_per_step_mean": round(seconds / len(step_wall), 4),
        "s_per_step_median": round(statistics.median(step_wall), 4),
        "cpu_s_per_step": round(sum(step_cpu) / len(step_cpu), 4),
        "step_wall_s": [round(s, 4) for s in step_wall],
        "step_real_tokens": [b["real"] for b in timed],
        "run_total_s": round(total, 2),
        "torch_threads": torch.get_num_threads(),
        # What lmforge / the HF Trainer report themselves (include the warm-up step; for plain packing
        # the padding counts as "non-padding" tokens because its attention mask is 1).
        "lmforge_train_tokens_per_second": metrics.get("train_tokens_per_second"),
        "lmforge_train_samples_per_second": metrics.get("train_samples_per_second"),
        "lmforge_num_input_tokens_seen": metrics.get("num_input_tokens_seen"),
        "lmforge_log_throughput": log_lines[-1].get("throughput") if log_lines else None,
        "train_loss": metrics.get("train_loss"),
    }
    if spec["device"] == "cuda":
        result["cuda_peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return result


# ------------------------------------------------------------------------------------------------
# parent: build models, spawn children, tabulate
# ------------------------------------------------------------------------------------------------
def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 matrix instructions (AVX512-BF16 or AMX); without them bf16 is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def machine_info() -> dict:
    import importlib.metadata as md

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    versions = {}
    for name in ("torch", "transformers", "peft", "accelerate", "datasets", "lmforge"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "memory_gib": mem_gib,
        "cpu_native_bf16": cpu_has_native_bf16(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        **versions,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def build_model(arch: str, size: str, root: Path) -> tuple[Path, float]:
    """Build the random model in a child process (so its memory does not stay in this one)."""
    out = root / f"{arch}-{size}"
    code = (
        "import sys; from lmforge.testing.tiny import build_tiny_model; "
        "build_tiny_model(sys.argv[1], arch=sys.argv[2], size=sys.argv[3], seed=0)"
    )
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(out), arch, size], check=True, stdout=subprocess.DEVNULL)
    return out, time.perf_counter() - start


def config_argv(model_dir: Path, template: str, batch: int, steps: int, overrides: dict, output_dir: Path,
                device: str, bf16: bool, seed: int) -> list[str]:
    values = {
        "model_name_or_path": str(model_dir),
        "stage": "sft",
        "do_train": "true",
        "finetuning_type": "lora",
        "lora_target": "all",
        "dataset": "identity,alpaca_en_demo",
        "dataset_dir": str(DATA_DIR),
        "template": template,
        "cutoff_len": str(CUTOFF_LEN),
        "per_device_train_batch_size": str(batch),
        "gradient_accumulation_steps": "1",
        "max_steps": str(steps),
        "learning_rate": "1e-4",
        "output_dir": str(output_dir),
        "overwrite_output_dir": "true",
        "logging_steps": str(max(1, steps // 2)),
        "save_steps": str(10 * steps),
        "report_to": "none",
        "seed": str(seed),
    }
    if device == "cpu":
        values["use_cpu"] = "true"
    if bf16:
        values["bf16"] = "true"
    values.update(overrides)
    return [f"{k}={v}" for k, v in values.items()]


def run_config(spec: dict, work: Path) -> dict:
    """Run one configuration in a child; return its measurements plus the child's peak RSS."""
    spec_path, result_path, log_path = work / "spec.json", work / "result.json", work / "child.log"
    spec_path.write_text(json.dumps(spec))
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    env = dict(os.environ)
    if spec.get("threads"):
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(spec["threads"])
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path), "--result", str(result_path)],
                                stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not result_path.exists():
        tail = log_path.read_text()[-3000:]
        return {"error": f"exit code {proc.returncode}", "log_tail": tail, "child_wall_s": round(wall, 1)}
    result = json.loads(result_path.read_text())
    result["peak_rss_gib"] = round(usage.ru_maxrss / 2**20, 3)  # Linux: KiB
    result["child_wall_s"] = round(wall, 1)
    result["child_cpu_s"] = round(usage.ru_utime + usage.ru_stime, 1)
    result["loadavg_1m_before"] = round(load_before, 2)
    return result


RATIO_KEYS = ("tokens_per_s", "samples_per_s", "s_per_step_mean", "peak_rss_gib")


def add_ratios(results: dict) -> None:
    base = results.get("baseline")
    if not base or "tokens_per_s" not in base:
        return
    for res in results.values():
        if "tokens_per_s" not in res:
            continue
        res["vs_baseline"] = {k: round(res[k] / base[k], 3) for k in RATIO_KEYS if base.get(k)}


def best_of(runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r and "skipped" not in r]
    if not ok:
        return runs[-1]
    best = dict(max(ok, key=lambda r: r["tokens_per_s"]))
    if len(ok) > 1:
        best["repeats_tokens_per_s"] = [r["tokens_per_s"] for r in ok]
        best["peak_rss_gib"] = max(r["peak_rss_gib"] for r in ok)
    return best


def _reported(value) -> str:
    if not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.3g} (invalid)" if value < 0 else f"{value:.1f}"


def markdown_table(model_key: str, group: dict) -> str:
    results = group["results"]
    lines = [
        f"**{model_key}** ({group['model']}, template {group['template']}, batch {group['batch_size']}, "
        f"cutoff {CUTOFF_LEN}, {group['steps']} steps = 1 warm-up + {group['steps'] - 1} timed, {group['device']}, "
        f"{group.get('threads') or 'default'} thread(s), best of {group['repeats']})",
        "",
        "| config | tokens/s | x base | samples/s | x base | pad frac | s/step mean (median) | CPU s/step "
        "| peak RSS GiB | x base | lmforge-reported tokens/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, res in results.items():
        if "tokens_per_s" not in res:
            why = f"skipped: {res['skipped']}" if "skipped" in res else f"failed: {res.get('error')}"
            lines.append(f"| {name} | {why} | | | | | | | | | |")
            continue
        ratio = res.get("vs_baseline", {})
        lines.append(
            f"| {name} | {res['tokens_per_s']:.1f} | {ratio.get('tokens_per_s', 1):.2f}x "
            f"| {res['samples_per_s']:.3f} | {ratio.get('samples_per_s', 1):.2f}x "
            f"| {res['padding_fraction']:.3f} | {res['s_per_step_mean']:.3f} ({res['s_per_step_median']:.3f}) "
            f"| {res['cpu_s_per_step']:.3f} | {res['peak_rss_gib']:.2f} | {ratio.get('peak_rss_gib', 1):.2f}x "
            f"| {_reported(res['lmforge_train_tokens_per_second'])} |"
        )
    return "\n".join(lines)


def run_model(model_key: str, args, root: Path) -> dict:
    arch, size, template, batch, default_steps, configs = MODELS[model_key]
    batch = args.batch_size or batch
    steps = args.steps or default_steps
    if args.configs:
        configs = {k: v for k, v in configs.items() if k in args.configs or k == "baseline"}
    print(f"[{model_key}] building {arch} {size} model in {root} ...", file=sys.stderr, flush=True)
    model_dir, build_s = build_model(arch, size, root)
    group = {"model": f"{arch} {size}", "template": template, "batch_size": batch, "steps": steps,
             "cutoff_len": CUTOFF_LEN, "device": args.device, "bf16_everywhere": args.bf16,
             "model_build_s": round(build_s, 1), "repeats": args.repeats, "threads": args.threads,
             "configs": {}, "results": {}}
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    try:
        # Repeats are interleaved (all configurations, then again), so a burst of load on a shared
        # machine does not hit every run of one configuration.
        for repeat in range(args.repeats):
            for name, (desc, overrides, options) in configs.items():
                group["configs"][name] = {"description": desc, "overrides": overrides, "options": options}
                if (options.get("needs_native_bf16") and args.device == "cpu" and not cpu_has_native_bf16()
                        and not (args.configs and name in args.configs)):
                    reason = "CPU without AVX512-BF16/AMX: bf16 is emulated (run with --configs bf16 to measure)"
                    runs[name].append({"skipped": reason})
                    print(f"[{model_key}] {name}: skipped ({reason})", file=sys.stderr, flush=True)
                    continue
                work = Path(tempfile.mkdtemp(prefix=f"{model_key}-{name}-", dir=root))
                spec = {
                    "argv": config_argv(model_dir, template, batch, steps, overrides, work / "out", args.device,
                                        args.bf16, args.seed),
                    "options": options,
                    "cutoff_len": CUTOFF_LEN,
                    "device": args.device,
                    "threads": args.threads,
                }
                print(f"[{model_key}] {name} (run {repeat + 1}/{args.repeats}) ...", file=sys.stderr, flush=True)
                res = run_config(spec, work)
                if "error" in res:
                    print(f"[{model_key}] {name} FAILED: {res['error']}\n{res['log_tail']}", file=sys.stderr)
                else:
                    print(f"[{model_key}] {name}: {res['tokens_per_s']:.1f} tok/s, {res['s_per_step_mean']:.3f} s/step, "
                          f"pad {res['padding_fraction']:.3f}, RSS {res['peak_rss_gib']:.2f} GiB, "
                          f"child {res['child_wall_s']:.0f} s, load {res['loadavg_1m_before']}", file=sys.stderr,
                          flush=True)
                runs[name].append(res)
                shutil.rmtree(work, ignore_errors=True)
        for name in configs:
            group["results"][name] = best_of(runs[name])
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
    add_ratios(group["results"])
    return group


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "0.5b", "all"], default="tiny")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps per configuration, the first is warm-up (default: tiny 20, 0.5b 3)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: tiny 4, 0.5b 1")
    parser.add_argument("--configs", nargs="*", default=None, help="only these configurations (plus baseline)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration; the fastest is kept")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda is accepted for a GPU run but untested where these results were taken")
    parser.add_argument("--bf16", action="store_true", help="bf16=true in every configuration (for GPU runs)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch / OpenMP threads in each child (default: torch's default, one per core)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=None, help="write the raw results JSON here")
    parser.add_argument("--render", type=Path, default=None, help="print the tables of a saved results JSON and exit")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = run_child(json.loads(args.child.read_text()))
        args.result.write_text(json.dumps(result))
        return
    if args.render:
        print_report(json.loads(args.render.read_text()))
        return
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device")
    known = {name for *_, configs in MODELS.values() for name in configs}
    unknown = sorted(set(args.configs or ()) - known)
    if unknown:
        parser.error(f"unknown configuration(s) {unknown}; known: {sorted(known)}")
    if args.steps is not None and args.steps < 2:
        parser.error("--steps must be at least 2 (1 warm-up + 1 timed)")

    start = time.perf_counter()
    report = {"machine": machine_info(), "argv": sys.argv[1:], "groups": {}}
    keys = list(MODELS) if args.model == "all" else [args.model]
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-") as tmp:
        for key in keys:
            group_start = time.perf_counter()
            report["groups"][key] = run_model(key, args, Path(tmp))
            report["groups"][key]["group_wall_s"] = round(time.perf_counter() - group_start, 1)
    report["total_wall_s"] = round(time.perf_counter() - start, 1)

    print_report(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"Raw results: {args.out}")


def print_report(report: dict) -> None:
    m = report["machine"]
    print(f"\nMachine: {m['cpu']}, {m['logical_cpus']} CPUs, {m['memory_gib']} GiB, Python {m['python']}, "
          f"torch {m['torch']}, transformers {m['transformers']}, peft {m['peft']}, {m['date']}\n")
    for key, group in report["groups"].items():
        print(markdown_table(key, group))
        print(f"\n(model build {group['model_build_s']} s, group total {group['group_wall_s']} s)\n")
    print(f"Total: {report['total_wall_s']} s")


if __name__ == "__main__":
    main()

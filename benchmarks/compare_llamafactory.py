"""The same training YAML through `lmforge train` and LLaMA-Factory's `llamafactory-cli train`, side by side.

Run (from the repository root), after `bash ../shared/peer/install_llamafactory.sh` (LLaMA-Factory 0.9.5 in
its own virtual environment, by default under ~/.cache/llamafactory-peer):

    .venv/bin/python benchmarks/compare_llamafactory.py --model tiny --out benchmarks/results/compare_lf_tiny_cpu.json
    .venv/bin/python benchmarks/compare_llamafactory.py --model 0.5b --repeats 1 \
        --out benchmarks/results/compare_lf_0.5b_cpu.json
    .venv/bin/python benchmarks/compare_llamafactory.py --stage dpo --model all \
        --out benchmarks/results/compare_lf_dpo_cpu.json

Both tools read one YAML file, written once per model: LLaMA-Factory's own keys only (a LoRA SFT run on
the bundled identity and alpaca_en_demo data (221 rows), cutoff 1024, seed 42; the tiny model 4 epochs at
batch 4, the 0.5b one the first 8 rows of each dataset for one epoch at batch 1), so the data, its order and
the hyper-parameters are the same. `--stage dpo` runs LoRA DPO (sigmoid loss, beta 0.1, the policy with its
adapter switched off as the reference) on the bundled `dpo_en_demo` (42 preference pairs) instead: the tiny
model 4 epochs at batch 2, the 0.5b one the first 8 pairs at batch 1. Gradient checkpointing is left unset, so each tool takes its own
default. Each run is a child process; the runs alternate (lmforge, LLaMA-Factory, lmforge, ...) for
`--repeats` rounds so that a change in the machine's load hits both, and the fastest run of each is kept.

Reported per tool: train_runtime (the Trainer's own timing of the training loop, without model loading
and tokenization), tokens/s (the tokens the Trainer counted over train_runtime, padding excluded: the YAML
sets `include_num_input_tokens_seen: non_padding`, so the tools' different padding does not count), peak
RSS of the whole child process (`os.wait4`), the final train_loss and the wall time of the whole command.
The ratios are lmforge over LLaMA-Factory for speed (higher is better) and for memory (lower is better).

The tiny model is built by `lmforge tiny-model` (a 4-layer Llama, hidden 128, vocabulary 4096); `0.5b`
is Qwen2.5-0.5B's shape with random weights (about 2 GB on disk, in a temporary folder deleted afterwards).
Extra YAML keys for both tools: `--set key=value` (repeatable); extra environment variables for both tools'
processes: `--env NAME=VALUE` (repeatable). bf16 on a CPU with AVX512-BF16/AMX:
`--set bf16=true --set use_cpu=true --checkpoint-dtype bfloat16` (LLaMA-Factory refuses bf16 on a machine
without a GPU unless `use_cpu` is set; `--checkpoint-dtype bfloat16` stores the model's weights in bf16, as
released checkpoints such as Qwen2.5's are).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PEER = Path(os.environ.get("LLAMAFACTORY_PEER", Path.home() / ".cache" / "llamafactory-peer"))

# model -> (tiny-model arguments, template, batch size, max samples per dataset, epochs)
MODELS = {
    "tiny": (["--arch", "llama"], "llama3", 4, 1000, 4),
    "0.5b": (["--arch", "qwen2", "--size", "0.5b"], "qwen", 1, 8, 1),
}
# stage -> (its own YAML keys, batch size per model where it differs from MODELS')
STAGES = {
    "sft": ({"stage": "sft", "dataset": "identity,alpaca_en_demo"}, {}),
    "dpo": ({"stage": "dpo", "dataset": "dpo_en_demo", "pref_beta": "0.1", "pref_loss": "sigmoid"}, {"tiny": 2}),
}


def write_yaml(path: Path, model_dir: Path, output_dir: Path, template: str, batch: int, max_samples: int,
               epochs: int, extra: dict[str, str], stage: str = "sft") -> None:
    keys = {
        "model_name_or_path": str(model_dir),
        "trust_remote_code": "false",
        **STAGES[stage][0],
        "do_train": "true",
        "finetuning_type": "lora",
        "lora_target": "all",
        "lora_rank": "8",
        "dataset_dir": str(REPO / "data"),
        "template": template,
        "cutoff_len": "1024",
        "max_samples": str(max_samples),
        "overwrite_cache": "true",
        "preprocessing_num_workers": "1",
        "output_dir": str(output_dir),
        "logging_steps": "10",
        "save_strategy": "\"no\"",
        "overwrite_output_dir": "true",
        "report_to": "none",
        "per_device_train_batch_size": str(batch),
        "gradient_accumulation_steps": "1",
        "learning_rate": "1.0e-4",
        "num_train_epochs": str(float(epochs)),
        "lr_scheduler_type": "cosine",
        "warmup_ratio": "0.1",
        "seed": "42",
        "include_num_input_tokens_seen": "non_padding",
    }
    keys.update(extra)
    path.write_text("".join(f"{k}: {v}\n" for k, v in keys.items()), encoding="utf-8")


def run_tool(name: str, command: list[str], output_dir: Path, log: Path, threads: int | None,
             extra_env: dict[str, str] | None = None) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", CUDA_VISIBLE_DEVICES="",
               TRANSFORMERS_OFFLINE="1", DISABLE_VERSION_CHECK="1", WANDB_DISABLED="true")
    env.update(extra_env or {})  # last, so that e.g. CUDA_VISIBLE_DEVICES=0 can choose a GPU
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    shutil.rmtree(output_dir, ignore_errors=True)
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise SystemExit(f"{name} failed with exit code {code}; the end of {log}:\n" + "\n".join(tail))
    results = json.loads((output_dir / "train_results.json").read_text(encoding="utf-8"))
    state = json.loads((output_dir / "trainer_state.json").read_text(encoding="utf-8"))
    tokens = state.get("num_input_tokens_seen") or results.get("num_input_tokens_seen") or 0
    runtime = results["train_runtime"]
    return {
        "train_runtime_s": runtime,
        "tokens": tokens,
        "tokens_per_s": tokens / runtime if runtime else None,
        "train_loss": results.get("train_loss"),
        "peak_rss_mib": usage.ru_maxrss / 1024,  # KiB on Linux
        "wall_s": wall,
        "steps": state.get("global_step"),
    }


def compare(args, model_key: str, work: Path) -> dict:
    arch_args, template, batch, max_samples, epochs = MODELS[model_key]
    batch = args.batch_size or STAGES[args.stage][1].get(model_key, batch)
    max_samples = args.max_samples or max_samples
    model_dir = work / f"model-{model_key}-{args.checkpoint_dtype}"
    if not model_dir.exists():
        subprocess.run([str(REPO / ".venv/bin/lmforge"), "tiny-model", str(model_dir), *arch_args,
                        "--dtype", args.checkpoint_dtype], check=True, stdout=subprocess.DEVNULL)
    extra = dict(item.split("=", 1) for item in args.set)
    extra_env = dict(item.split("=", 1) for item in args.env)
    runs: dict[str, list[dict]] = {"lmforge": [], "llamafactory": []}
    for tool in runs:
        yaml = work / f"{model_key}-{tool}.yaml"
        write_yaml(yaml, model_dir, work / f"out-{tool}", template, batch, max_samples, epochs, extra, args.stage)
    for round_ in range(args.repeats):
        for tool, exe in (("lmforge", REPO / ".venv/bin/lmforge"), ("llamafactory", args.peer / "venv/bin/llamafactory-cli")):
            yaml = work / f"{model_key}-{tool}.yaml"
            result = run_tool(tool, [str(exe), "train", str(yaml)], work / f"out-{tool}",
                              work / f"{model_key}-{tool}-{round_}.log", args.threads, extra_env)
            runs[tool].append(result)
            print(f"  {model_key} round {round_ + 1} {tool}: {result['train_runtime_s']:.1f} s, "
                  f"{result['peak_rss_mib']:.0f} MiB, loss {result['train_loss']:.4f}", flush=True)
    best = {tool: min(results, key=lambda r: r["train_runtime_s"]) for tool, results in runs.items()}
    lm, lf = best["lmforge"], best["llamafactory"]
    return {
        "model": model_key, "checkpoint_dtype": args.checkpoint_dtype, "stage": args.stage, "batch_size": batch, "max_samples": max_samples, "epochs": epochs, "extra_keys": extra,
        "extra_env": extra_env,
        "runs": runs, "best": best,
        "speedup_train_runtime": lf["train_runtime_s"] / lm["train_runtime_s"],
        "tokens_per_s_ratio": (lm["tokens_per_s"] / lf["tokens_per_s"]) if lm["tokens_per_s"] and lf["tokens_per_s"]
        else None,
        "peak_rss_ratio": lm["peak_rss_mib"] / lf["peak_rss_mib"],
        "loss_difference": lm["train_loss"] - lf["train_loss"],
    }


def render(report: dict) -> str:
    lines = [f"load average at start {report['loadavg_start']}, at end {report['loadavg_end']}", "",
             "| model | tool | train_runtime s | tokens/s | peak RSS MiB | train_loss |", "|---|---|---|---|---|---|"]
    for result in report["results"]:
        for tool in ("lmforge", "llamafactory"):
            r = result["best"][tool]
            tps = f"{r['tokens_per_s']:.0f}" if r["tokens_per_s"] else "-"
            lines.append(f"| {result['model']} {result.get('stage', 'sft')} | {tool} | {r['train_runtime_s']:.1f} | {tps} | "
                         f"{r['peak_rss_mib']:.0f} | {r['train_loss']:.4f} |")
    lines.append("")
    for result in report["results"]:
        lines.append(f"{result['model']} {result.get('stage', 'sft')}: speed x{result['speedup_train_runtime']:.2f} (train_runtime), "
                     f"peak RSS x{result['peak_rss_ratio']:.2f}, loss difference {result['loss_difference']:+.4f}")
    return "\n".join(lines)


def _cpuinfo(key: str) -> str | None:
    """The value of the first `key` line of Linux's /proc/cpuinfo (None elsewhere)."""
    path = Path("/proc/cpuinfo")
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        if line.startswith(key):
            return line.split(":", 1)[1].strip()
    return None


def _cpu_name() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    """The CPU features bf16 speed depends on (AVX512-BF16, AMX), as /proc/cpuinfo lists them."""
    wanted = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    return sorted(wanted & set((_cpuinfo("flags") or "").split()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=[*MODELS, "all"], default="tiny")
    parser.add_argument("--stage", choices=list(STAGES), default="sft")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--max-samples", type=int)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--checkpoint-dtype", choices=["float32", "bfloat16"], default="float32",
                        help="how the model's weights are stored on disk (released checkpoints are bfloat16)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an extra YAML key for both")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for both tools' processes (e.g. ONEDNN_PRIMITIVE_CACHE_CAPACITY=64)")
    parser.add_argument("--peer", type=Path, default=DEFAULT_PEER, help="LLaMA-Factory's install folder")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--render", type=Path, help="print the tables of a saved result file")
    args = parser.parse_args()
    if args.render:
        print(render(json.loads(args.render.read_text(encoding="utf-8"))))
        return
    if not (args.peer / "venv/bin/llamafactory-cli").exists():
        raise SystemExit(f"LLaMA-Factory is not installed in {args.peer}: run ../shared/peer/install_llamafactory.sh")
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": _cpu_name(),
              "cpu_flags": _cpu_flags(), "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(),
              "python": sys.version.split()[0], "results": []}
    with tempfile.TemporaryDirectory(prefix="lmforge-vs-lf-") as tmp:
        for model_key in (MODELS if args.model == "all" else [args.model]):
            report["results"].append(compare(args, model_key, Path(tmp)))
    report["loadavg_end"] = os.getloadavg()
    print(render(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

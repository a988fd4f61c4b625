"""One training YAML through `lmforge train` under different environments, alternating: the memory allocator
(`LMFORGE_ALLOCATOR`, docs/performance.md) and anything else set per variant.

    .venv/bin/python benchmarks/allocator_ab.py RUN.yaml --rounds 3 \
        --variant system:LMFORGE_ALLOCATOR=system --variant jemalloc: \
        --variant 'jemalloc-decay200:MALLOC_CONF=dirty_decay_ms:200,muzzy_decay_ms:0' \
        --out benchmarks/results/allocator_0.5b_sft.json

Each variant is `NAME:` followed by `VAR=VALUE` settings separated by `;`. Runs alternate variant by variant
for `--rounds` rounds (a change in the machine's load hits all of them); each run is a child process, its peak
RSS read with `os.wait4`, its train_runtime and train_loss from `train_results.json`. The YAML's output_dir is
replaced by a temporary folder. Prints one line per run and each variant's range.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, settings = text.partition(":")
    env = {}
    for item in filter(None, settings.split(";")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--variant {text!r}: {item!r} is not VAR=VALUE")
        env[key] = value
    return name, env


def run_once(config: str, env: dict[str, str], output_dir: Path) -> dict:
    lmforge = Path(sys.executable).parent / "lmforge"
    log = output_dir.parent / "stderr.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen([str(lmforge), "train", config, f"output_dir={output_dir}",
                                    "overwrite_output_dir=true"], env={**os.environ, **env},
                                   stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)  # the child's own peak RSS, not the largest child's so far
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"lmforge train failed ({env}):\n{log.read_text()[-2000:]}")
    results = json.loads((output_dir / "train_results.json").read_text())
    return {"train_runtime": results["train_runtime"], "train_loss": results["train_loss"],
            "peak_rss_mib": round(usage.ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--variant", action="append", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()
    variants = dict(parse_variant(text) for text in args.variant)
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(1, args.rounds + 1):
            for name, env in variants.items():
                result = run_once(args.config, env, Path(tmp) / "run")
                runs[name].append(result)
                print(f"round {round_} {name}: {result['train_runtime']:.2f} s, peak {result['peak_rss_mib']} MiB, "
                      f"loss {result['train_loss']:.4f}", flush=True)
    for name, results in runs.items():
        times = sorted(r["train_runtime"] for r in results)
        peaks = sorted(r["peak_rss_mib"] for r in results)
        print(f"{name}: {times[0]:.2f} to {times[-1]:.2f} s, {peaks[0]} to {peaks[-1]} MiB")
    if args.out:
        Path(args.out).write_text(json.dumps({"config": args.config, "variants": variants, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()

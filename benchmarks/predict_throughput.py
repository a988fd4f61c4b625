"""Batch prediction speed (`lmforge train` with `do_predict`) at several `per_device_eval_batch_size`s.

Run (from the repository root):

    .venv/bin/python benchmarks/predict_throughput.py
    .venv/bin/python benchmarks/predict_throughput.py --size 0.5b --samples 32 --batch-sizes 1,8 \
        --out benchmarks/results/predict_throughput_0.5b_cpu.json

It builds a tiny random Llama (`--size tiny`, about 1M parameters) or the Qwen2.5-0.5B-shaped one
(`--size 0.5b`) in a temporary folder and predicts the first `--samples` rows of the bundled
`alpaca_en_demo` with greedy decoding and `--max-new-tokens`, once per batch size, in this process
(the model is loaded by each run, outside the timed part). Reported per batch size:
  * samples/s     predict_samples_per_second of predict_results.json (generation, decoding, scoring, writing),
  * gen tok/s     predict_tokens_per_second: generated tokens (stop tokens excluded) / predict_runtime,
  * speed-up      samples/s relative to batch size 1.
The random model seldom stops early, so most answers are `--max-new-tokens` long.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=["tiny", "0.5b"])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", default="1,4,16")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    import torch

    from lmforge.config import parse_config
    from lmforge.testing.tiny import build_tiny_model
    from lmforge.eval.predict import run_predict

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "model", arch="llama", size=args.size)
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            out = Path(tmp) / f"predict-{batch_size}"
            metrics = run_predict(parse_config("train", [
                f"model_name_or_path={model}", "stage=sft", "do_predict=true", "predict_with_generate=true",
                "eval_dataset=alpaca_en_demo", f"dataset_dir={REPO / 'data'}", "template=llama3",
                f"max_samples={args.samples}", f"per_device_eval_batch_size={batch_size}", "do_sample=false",
                f"max_new_tokens={args.max_new_tokens}", f"output_dir={out}",
            ]))
            rows.append({"batch_size": batch_size, "samples_per_second": metrics["predict_samples_per_second"],
                         "generated_tokens_per_second": metrics["predict_tokens_per_second"],
                         "runtime_s": metrics["predict_runtime"]})
    base = rows[0]["samples_per_second"]
    print("| batch size | samples/s | gen tok/s | speed-up |")
    print("|---|---|---|---|")
    for row in rows:
        row["speedup"] = round(row["samples_per_second"] / base, 2) if base else None
        print(f"| {row['batch_size']} | {row['samples_per_second']} | {row['generated_tokens_per_second']} | "
              f"{row['speedup']}x |")
    if args.out:
        result = {"size": args.size, "samples": args.samples, "max_new_tokens": args.max_new_tokens, "rows": rows,
                  "torch": torch.__version__, "threads": torch.get_num_threads(), "platform": platform.platform(),
                  "python": sys.version.split()[0]}
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

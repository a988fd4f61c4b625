"""Activation memory of one LoRA training step, with transformers' gated MLP and with lmforge's lighter one.

Run (from the repository root):

    .venv/bin/python benchmarks/activation_memory.py --model 0.5b --out benchmarks/results/activation_memory_0.5b_cpu.json

For each sequence length: one forward and backward pass of a batch of random token ids through the model in
bf16 (float32 LoRA adapters of rank 8 on every linear layer, bf16 autocast, as `bf16: true` trains), once with
the MLP's own forward and once with `lmforge.model.mlp.keep_gate_and_up_only`, alternating. Reported: the
bytes the autograd graph keeps for the backward pass (every saved tensor's storage counted once, the model's
weights not counted), the step's wall time (best of `--repeats`, after one
warm-up step), and the loss and the gradients' equality.
The model is `lmforge tiny-model`'s: `tiny` (a 4-layer Llama, hidden 128) or `0.5b` (Qwen2.5-0.5B's shape with
random weights, about 1 GB in bf16, in a temporary folder).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS = {"tiny": ["--arch", "llama"], "0.5b": ["--arch", "qwen2", "--size", "0.5b"]}


def _step(model, ids) -> tuple[float, int, float, dict]:
    """(loss, bytes kept for backward, seconds, gradients) of one forward and backward pass."""
    import torch

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(tensor):
        ptr = tensor.untyped_storage().data_ptr()
        if ptr not in weights:
            kept.setdefault(ptr, tensor.untyped_storage().nbytes())
        return tensor

    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    seconds = time.perf_counter() - start
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return loss.item(), sum(kept.values()), seconds, grads


def measure(model_dir: Path, lengths: list[int], batch: int, repeats: int) -> list[dict]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lmforge.model.mlp import _mlp_forward, is_gated_silu_mlp

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    mlps = [m for m in model.modules() if is_gated_silu_mlp(m)]

    def use(lighter: bool) -> None:
        from types import MethodType

        for module in mlps:
            if lighter:
                module.forward = MethodType(_mlp_forward, module)
            else:
                vars(module).pop("forward", None)

    rows = []
    for length in lengths:
        ids = torch.randint(0, model.config.vocab_size, (batch, length))
        runs: dict[str, list] = {"transformers": [], "lmforge": []}
        use(False)
        _step(model, ids)  # warm-up: the first pass at a new shape also builds its CPU kernels
        for _ in range(repeats):
            for name, results in runs.items():
                use(name == "lmforge")
                results.append(_step(model, ids))
        plain, light = runs["transformers"], runs["lmforge"]
        same_grads = all(torch.equal(grad, light[0][3][name]) for name, grad in plain[0][3].items())
        row = {"tokens": batch * length, "batch": batch, "length": length,
               "kept_mib": {"transformers": plain[0][1] / 2**20, "lmforge": light[0][1] / 2**20},
               "kept_ratio": light[0][1] / plain[0][1],
               "step_s": {"transformers": min(r[2] for r in plain), "lmforge": min(r[2] for r in light)},
               "same_loss": plain[0][0] == light[0][0], "same_gradients": same_grads}
        rows.append(row)
        print(f"  {batch} x {length}: kept {row['kept_mib']['transformers']:.0f} -> {row['kept_mib']['lmforge']:.0f} MiB "
              f"(x{row['kept_ratio']:.2f}), step {row['step_s']['transformers']:.2f} -> {row['step_s']['lmforge']:.2f} s, "
              f"same loss {row['same_loss']}, same gradients {same_grads}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=list(MODELS), default="tiny")
    parser.add_argument("--lengths", default="128,512,1024", help="comma-separated sequence lengths")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.processor()
              or platform.machine(), "cpus": os.cpu_count(), "model": args.model, "loadavg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="lmforge-activations-") as tmp:
        model_dir = Path(tmp) / "model"
        subprocess.run([sys.executable, "-m", "lmforge", "tiny-model", str(model_dir), *MODELS[args.model],
                        "--dtype", "bfloat16"], check=True, stdout=subprocess.DEVNULL, cwd=str(REPO))
        report["results"] = measure(model_dir, [int(n) for n in args.lengths.split(",")], args.batch_size,
                                    args.repeats)
    report["loadavg_end"] = os.getloadavg()
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

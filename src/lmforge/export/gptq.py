"""GPTQ export (`export_quantization_bit`): calibrate on a text dataset and save the quantized weights.

It needs a CUDA GPU and the gptqmodel and optimum packages (through transformers' `GPTQConfig`);
everywhere else it is a clear error before any model is loaded.
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.errors import UserError

if TYPE_CHECKING:
    from lmforge.config import RunConfig


def check_gptq_available() -> None:
    """Refuse GPTQ where it cannot run: no CUDA GPU, or missing libraries."""
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            "export_quantization_bit (GPTQ) needs a CUDA GPU, and this machine has none. Remove "
            "export_quantization_bit, or export a quantized GGUF with export_format: gguf and gguf_type: q8_0."
        )
    missing = [name for name in ("gptqmodel", "optimum") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"export_quantization_bit (GPTQ) needs {' and '.join(missing)}: "
                        f"pip install {' '.join(missing)}")


def calibration_texts(cfg: RunConfig, tokenizer) -> list[str]:
    """`export_quantization_nsamples` random windows of `export_quantization_maxlen` tokens from the dataset."""
    from datasets import load_dataset

    export = cfg.export
    source = export.export_quantization_dataset
    path = Path(source)
    if path.is_file():
        kind = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}.get(path.suffix)
        if kind is None:
            raise UserError(f"export_quantization_dataset '{source}': use a .json, .jsonl, .csv, .parquet or .txt file.")
        rows = load_dataset(kind, data_files=str(path), split="train")
    else:
        try:
            rows = load_dataset(source, split="train", cache_dir=cfg.model.cache_dir)
        except Exception as err:  # datasets raises many kinds for a missing dataset
            raise UserError(f"Cannot load export_quantization_dataset '{source}': {str(err).splitlines()[0]}") from None
    if "text" not in rows.column_names:
        raise UserError(f"export_quantization_dataset '{source}' has no 'text' column (columns: "
                        f"{', '.join(rows.column_names)}).")
    maxlen, rng = export.export_quantization_maxlen, random.Random(0)
    long_rows = [ids for ids in (tokenizer(t, add_special_tokens=False).input_ids for t in rows["text"]) if len(ids) > maxlen]
    if not long_rows:
        raise UserError(f"No row of export_quantization_dataset '{source}' is longer than export_quantization_maxlen "
                        f"({maxlen} tokens); lower export_quantization_maxlen or use longer texts.")
    texts = []
    for _ in range(export.export_quantization_nsamples):
        ids = rng.choice(long_rows)
        start = rng.randint(0, len(ids) - maxlen - 1)
        texts.append(tokenizer.decode(ids[start:start + maxlen]))
    return texts


def load_quantized(cfg: RunConfig, base: str, tokenizer):
    """Load `base` quantized with GPTQ at `export_quantization_bit` bits, calibrated on the dataset."""
    import torch
    from transformers import AutoModelForCausalLM, GPTQConfig

    from lmforge.model.loader import hub_kwargs

    config = GPTQConfig(bits=cfg.export.export_quantization_bit, tokenizer=tokenizer,
                        dataset=calibration_texts(cfg, tokenizer))
    model = AutoModelForCausalLM.from_pretrained(base, quantization_config=config, device_map="auto",
                                                 dtype=torch.float16, **hub_kwargs(cfg.model))
    model.eval()
    return model

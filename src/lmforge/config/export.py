"""Export settings: merged weights, shards, GGUF and the Ollama Modelfile."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ExportArguments:
    """`lmforge export` settings (LLaMA-Factory's names, plus GGUF)."""

    export_dir: str | None = field(default=None, metadata={"help": "Folder the exported model is written to."})
    export_size: float = field(default=5, metadata={"help": "Largest safetensors shard, in GB (fractions allowed)."})
    export_device: str = field(default="cpu", metadata={"help": "Device used to merge: cpu or auto."})
    export_quantization_bit: int | None = field(default=None, metadata={"help": "GPTQ bits: 2, 3, 4 or 8 (CUDA GPU)."})
    export_quantization_dataset: str | None = field(
        default=None, metadata={"help": "Calibration data for GPTQ: a JSON/JSONL file or hub dataset with a text column."}
    )
    export_quantization_nsamples: int = field(default=128, metadata={"help": "Calibration samples for GPTQ."})
    export_quantization_maxlen: int = field(default=1024, metadata={"help": "Calibration sample length for GPTQ."})
    export_legacy_format: bool = field(
        default=False, metadata={"help": "Write .bin weights: refused, transformers 5 writes safetensors only."}
    )
    export_hub_model_id: str | None = field(default=None, metadata={"help": "Push the export to this hub repo."})
    export_format: list[str] = field(
        default_factory=lambda: ["safetensors"],
        metadata={"help": "safetensors, gguf, or both (comma-separated): merged weights and/or one GGUF file."},
    )
    gguf_type: str = field(default="f16", metadata={"help": "GGUF weight type: f32, f16, bf16 or q8_0."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty export_dir."})

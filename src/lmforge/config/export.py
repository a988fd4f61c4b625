"""Export settings: merged weights, shards, GGUF and the Ollama Modelfile."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmforge.config.readers import EXPORT

EXPORT_FORMATS = ("safetensors", "gguf")
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")  # the tensor types lmforge's GGUF writer produces


@dataclass
class ExportArguments:
    """`lmforge export` settings (LLaMA-Factory's names, plus GGUF)."""

    export_dir: str | None = field(
        default=None, metadata={"help": "Folder the exported model is written to.", "read_by": (EXPORT,)}
    )
    export_size: float = field(
        default=5, metadata={"help": "Largest safetensors shard, in GB (fractions allowed).", "read_by": (EXPORT,)}
    )
    export_device: str = field(
        default="cpu", metadata={"help": "Device used to merge: cpu or auto.", "read_by": (EXPORT,)}
    )
    export_quantization_bit: int | None = field(
        default=None, metadata={"help": "GPTQ bits: 2, 3, 4 or 8 (CUDA GPU).", "read_by": (EXPORT,)}
    )
    export_quantization_dataset: str | None = field(
        default=None,
        metadata={
            "help": "Calibration data for GPTQ: a JSON/JSONL file or hub dataset with a text column.",
            "read_by": (EXPORT,),
        },
    )
    export_quantization_nsamples: int = field(
        default=128, metadata={"help": "Calibration samples for GPTQ.", "read_by": (EXPORT,)}
    )
    export_quantization_maxlen: int = field(
        default=1024, metadata={"help": "Calibration sample length for GPTQ.", "read_by": (EXPORT,)}
    )
    export_legacy_format: bool = field(
        default=False,
        metadata={"help": "Write .bin weights: refused, transformers 5 writes safetensors only.", "read_by": (EXPORT,)},
    )
    export_hub_model_id: str | None = field(
        default=None, metadata={"help": "Push the export to this hub repo.", "read_by": (EXPORT,)}
    )
    export_hub_private: bool = field(
        default=True,
        metadata={
            "help": "Create the export_hub_model_id repo private (lmforge's key; false: public). An existing repo "
            "keeps its visibility.",
            "read_by": (EXPORT,),
        },
    )
    export_format: list[str] = field(
        default_factory=lambda: ["safetensors"],
        metadata={
            "help": "safetensors, gguf, or both (comma-separated): merged weights and/or one GGUF file.",
            "read_by": (EXPORT,),
        },
    )
    gguf_type: str = field(
        default="f16", metadata={"help": "GGUF weight type: f32, f16, bf16 or q8_0.", "read_by": (EXPORT,)}
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty export_dir.", "read_by": (EXPORT,)})

"""Which model to load and how: paths, adapters, dtype, attention, quantization, inference backend."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmforge.config.readers import ENGINE, EXPORT, GENERATION, MODEL, SERVING, TOKENIZER, TRAINING


@dataclass
class ModelArguments:
    """Model and tokenizer loading settings (LLaMA-Factory's names)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Hub id (Qwen/Qwen2.5-0.5B-Instruct), local folder, or a training output_dir.",
            "read_by": (TOKENIZER,),
        },
    )
    adapter_name_or_path: list[str] | None = field(
        default=None,
        metadata={
            "help": "LoRA adapter folders or hub ids, comma-separated; applied in order.",
            "read_by": (MODEL, TRAINING),
        },
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where hub downloads are cached.", "read_by": (TOKENIZER,)}
    )
    use_fast_tokenizer: bool = field(
        default=True, metadata={"help": "Use a fast (Rust) tokenizer.", "read_by": (TOKENIZER,)}
    )
    resize_vocab: bool = field(
        default=False, metadata={"help": "Resize the embeddings when tokens are added.", "read_by": (MODEL,)}
    )
    split_special_tokens: bool = field(
        default=False, metadata={"help": "Tokenize special-token strings as text.", "read_by": (TOKENIZER,)}
    )
    add_tokens: list[str] | None = field(
        default=None, metadata={"help": "Plain tokens to add, comma-separated.", "read_by": (TOKENIZER,)}
    )
    add_special_tokens: list[str] | None = field(
        default=None, metadata={"help": "Special tokens to add, comma-separated.", "read_by": (TOKENIZER,)}
    )
    model_revision: str = field(
        default="main", metadata={"help": "Hub revision (branch, tag or commit).", "read_by": (TOKENIZER,)}
    )
    low_cpu_mem_usage: bool = field(
        default=True, metadata={"help": "Load weights without a full extra copy in memory.", "read_by": ()}
    )
    rope_scaling: str | None = field(
        default=None, metadata={"help": "RoPE scaling: linear, dynamic, yarn or llama3.", "read_by": (MODEL,)}
    )
    flash_attn: str = field(
        default="auto",
        metadata={"help": "Attention kernel: auto, disabled (eager), sdpa, fa2 or fa3.", "read_by": (MODEL,)},
    )
    disable_gradient_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Turn gradient checkpointing off (true) or on (false). Unset: for sft and pt, on only when a full "
            "batch's activations would take over half the memory left after the model; other stages, on.",
            "read_by": (TRAINING,),
        },
    )
    use_reentrant_gc: bool = field(
        default=True, metadata={"help": "Use reentrant gradient checkpointing.", "read_by": (TRAINING,)}
    )
    upcast_layernorm: bool = field(
        default=False, metadata={"help": "Keep layer norms in float32.", "read_by": (TRAINING,)}
    )
    train_from_scratch: bool = field(
        default=False, metadata={"help": "Initialise weights randomly from the config.", "read_by": (MODEL,)}
    )
    infer_backend: str = field(
        default="huggingface",
        metadata={"help": "Inference engine: huggingface, vllm or llamacpp.", "read_by": (ENGINE, SERVING)},
    )
    use_kv_cache: bool = field(
        default=True, metadata={"help": "Use the KV cache during generation.", "read_by": (GENERATION,)}
    )
    merge_adapters: bool = field(
        default=False,
        metadata={
            "help": "Inference: merge LoRA adapters into the weights instead of applying them on the fly.",
            "read_by": (ENGINE,),
        },
    )
    infer_dtype: str = field(
        default="auto",
        metadata={"help": "Inference dtype: auto, float16, bfloat16 or float32.", "read_by": (ENGINE, EXPORT)},
    )
    hf_hub_token: str | None = field(
        default=None, metadata={"help": "Hugging Face Hub token.", "read_by": (TOKENIZER,)}
    )
    ms_hub_token: str | None = field(default=None, metadata={"help": "ModelScope Hub token.", "read_by": ()})
    om_hub_token: str | None = field(default=None, metadata={"help": "Modelers Hub token.", "read_by": ()})
    print_param_status: bool = field(
        default=False, metadata={"help": "Print every parameter's dtype and trainability.", "read_by": (TRAINING,)}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow model code from the hub to run.", "read_by": (TOKENIZER,)}
    )
    quantization_method: str = field(
        default="bnb",
        metadata={"help": "On-the-fly quantization: bnb (bitsandbytes; CPU or CUDA), hqq or eetq (CUDA).",
                  "read_by": (MODEL,)},
    )
    quantization_bit: int | None = field(
        default=None,
        metadata={"help": "Quantize the model as it loads: 4 or 8 bits (QLoRA; bnb), training LoRA or for inference.",
                  "read_by": (MODEL,)},
    )
    quantization_type: str = field(
        default="nf4", metadata={"help": "bnb 4-bit data type: nf4 or fp4.", "read_by": (MODEL,)}
    )
    double_quantization: bool = field(
        default=True, metadata={"help": "bnb 4-bit: quantize the quantization constants too.", "read_by": (MODEL,)}
    )
    quantization_device_map: str | None = field(
        default=None,
        metadata={"help": "auto: spread a quantized model over the GPUs and the CPU (inference only).",
                  "read_by": (MODEL,)},
    )
    vllm_maxlen: int = field(default=4096, metadata={"help": "vLLM: maximum sequence length.", "read_by": (SERVING,)})
    vllm_gpu_util: float = field(
        default=0.7, metadata={"help": "vLLM: fraction of GPU memory to use.", "read_by": (SERVING,)}
    )
    vllm_enforce_eager: bool = field(
        default=False, metadata={"help": "vLLM: disable CUDA graphs.", "read_by": (SERVING,)}
    )
    vllm_max_lora_rank: int = field(
        default=32, metadata={"help": "vLLM: largest LoRA rank served.", "read_by": (SERVING,)}
    )
    vllm_config: dict | None = field(
        default=None, metadata={"help": "vLLM: extra engine arguments.", "read_by": (SERVING,)}
    )
    llamacpp_n_ctx: int = field(
        default=4096,
        metadata={"help": "llama.cpp: context length in tokens (0: the model's own).", "read_by": (SERVING,)},
    )
    llamacpp_n_gpu_layers: int = field(
        default=-1,
        metadata={
            "help": "llama.cpp: layers offloaded to a GPU build (-1: all; ignored on CPU builds).",
            "read_by": (SERVING,),
        },
    )

"""Load models (weights, dtype, attention, quantization, RoPE scaling) the way users expect from the hub.

`model_name_or_path` is a hub id or a local folder; this is the same code path for both, the
tests just point it at a local tiny model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.errors import UserError

if TYPE_CHECKING:
    from lmforge.config import ModelArguments


def hub_kwargs(model_args: ModelArguments) -> dict:
    """Arguments shared by every from_pretrained call."""
    return {
        "cache_dir": model_args.cache_dir,
        "revision": model_args.model_revision,
        "token": model_args.hf_hub_token,
        "trust_remote_code": model_args.trust_remote_code,
    }


def check_model_path(path: str, key: str = "model_name_or_path") -> None:
    """Fail early, with the fix, when a local-looking model path (the setting `key`) does not exist."""
    local = Path(path).expanduser()
    if local.exists():
        if local.is_dir() and not (local / "config.json").exists() and not (local / "tokenizer_config.json").exists():
            ggufs = sorted(p.name for p in local.glob("*.gguf"))
            if ggufs:
                # A GGUF-only export folder: llama.cpp serves it, transformers cannot.
                raise UserError(
                    f"'{path}' holds a GGUF file ({', '.join(ggufs)}) but no transformers model; serve it with "
                    f"infer_backend: llamacpp (e.g. lmforge chat model_name_or_path={path} infer_backend=llamacpp), "
                    "or export with export_format: safetensors,gguf."
                )
            raise UserError(
                f"'{path}' is a folder but holds no model (no config.json or tokenizer_config.json). "
                f"Point {key} at a model folder or a hub id."
            )
        return
    if path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise UserError(
            f"Model folder '{path}' does not exist. Check {key}, or build a tiny test model with "
            "`lmforge tiny-model DIR`."
        )


ATTENTION = {"auto": "sdpa", "sdpa": "sdpa", "disabled": "eager", "fa2": "flash_attention_2", "fa3": "flash_attention_3"}


def resolve_dtype(name: str | None, fallback: str = "float32"):
    """Map 'auto'/'bfloat16'/... to a torch dtype ('auto' picks bf16 on a GPU that has it, else fp32 on CPU)."""
    import torch

    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return getattr(torch, fallback)
    return getattr(torch, name)


def quantization_config(model_args: ModelArguments, compute_dtype):
    """The bitsandbytes config for QLoRA, or a clear error where it cannot run."""
    if model_args.quantization_bit is None:
        return None
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            f"quantization_bit={model_args.quantization_bit} (QLoRA) needs a CUDA GPU with bitsandbytes; "
            "this machine has no CUDA device. Remove quantization_bit to train without quantization."
        )
    if model_args.quantization_method != "bnb":
        raise UserError(f"quantization_method '{model_args.quantization_method}' is not supported; use bnb.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError("quantization_bit needs bitsandbytes: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    if model_args.quantization_bit == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=model_args.double_quantization,
        bnb_4bit_quant_type=model_args.quantization_type,
        bnb_4bit_quant_storage=compute_dtype,
    )


def _apply_rope_scaling(config, model_args: ModelArguments, max_length: int | None) -> None:
    """Stretch RoPE so the model covers `max_length` tokens (the factor is max_length / native length)."""
    import math

    native = getattr(config, "max_position_embeddings", None)
    if not native or not max_length or max_length <= native:
        raise UserError(
            f"rope_scaling needs cutoff_len ({max_length}) above the model's native length ({native}); "
            "remove rope_scaling or raise cutoff_len."
        )
    factor = float(math.ceil(max_length / native))
    scaling = {"rope_type": model_args.rope_scaling, "factor": factor}
    if model_args.rope_scaling in ("dynamic", "yarn", "llama3"):
        scaling["original_max_position_embeddings"] = native
    if model_args.rope_scaling == "llama3":
        scaling.update(low_freq_factor=1.0, high_freq_factor=4.0)
    # transformers 5 keeps RoPE settings (rope_theta included) in `rope_parameters`.
    config.rope_parameters = {**(getattr(config, "rope_parameters", None) or {}), **scaling}
    config.max_position_embeddings = native * int(factor)


def load_model(model_args: ModelArguments, tokenizer, dtype, trainable: bool, device_map=None,
               max_length: int | None = None):
    """Load the causal LM of `model_args.model_name_or_path` (weights, or random from its config).

    A vision-language model (Qwen2-VL, Qwen2.5-VL) loads whole, vision tower included, with
    `AutoModelForImageTextToText`, as LLaMA-Factory does; `AutoModelForCausalLM` has no mapping for it.
    """
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
    )

    from lmforge.model.multimodal import is_multimodal

    path = model_args.model_name_or_path
    check_model_path(path)
    common = hub_kwargs(model_args)
    try:
        config = AutoConfig.from_pretrained(path, **common)
    except (OSError, ValueError) as err:
        raise UserError(f"Cannot load the model config of '{path}': {str(err).splitlines()[0]}") from None
    kwargs = dict(dtype=dtype, attn_implementation=ATTENTION[model_args.flash_attn], **common)
    quant = quantization_config(model_args, dtype)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = device_map or {"": _current_device()}
    elif device_map is not None:
        kwargs["device_map"] = device_map
    if model_args.rope_scaling:
        _apply_rope_scaling(config, model_args, max_length)
    auto_class = AutoModelForImageTextToText if is_multimodal(config) else AutoModelForCausalLM
    if model_args.train_from_scratch:
        model = auto_class.from_config(config, dtype=dtype, attn_implementation=kwargs["attn_implementation"])
    else:
        try:
            model = auto_class.from_pretrained(path, config=config, **kwargs)
        except OSError as err:
            raise UserError(f"Cannot load the model weights of '{path}': {str(err).splitlines()[0]}") from None
    if model_args.resize_vocab and len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
    if not trainable:
        model.requires_grad_(False)
        model.eval()
    else:
        model.config.use_cache = False
    return model


def _current_device() -> str:
    import torch

    return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"

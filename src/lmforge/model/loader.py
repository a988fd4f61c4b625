"""Load models (weights, dtype, attention, quantization, RoPE scaling) the way users expect from the hub.

Quantization (on the fly or of a checkpoint quantized beforehand) is decided in `model.quantization`.

`model_name_or_path` is a hub id or a local folder; this is the same code path for both, the
tests just point it at a local tiny model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.errors import UserError
from lmforge.model.quantization import (
    check_prequantized,
    prequantized_method,
    quantization_config,
    quantized_device_map,
    quiet_bitsandbytes,
    quiet_gptqmodel,
    release_checkpoint_file,
)

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


def hidden_size(model_args: ModelArguments) -> int | None:
    """The model's hidden size from its config (a vision-language model's text model's), or None where the config
    cannot be read: `load_model` reports a missing or broken model in its own words."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_args.model_name_or_path, **hub_kwargs(model_args))
    except (OSError, ValueError, KeyError):
        return None
    text = getattr(config, "text_config", None) or config
    return getattr(text, "hidden_size", None) or getattr(config, "hidden_size", None)


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
    quiet_gptqmodel()
    common = hub_kwargs(model_args)
    try:
        config = AutoConfig.from_pretrained(path, **common)
    except (OSError, ValueError) as err:
        raise UserError(f"Cannot load the model config of '{path}': {str(err).splitlines()[0]}") from None
    kwargs = dict(dtype=dtype, attn_implementation=ATTENTION[model_args.flash_attn], **common)
    prequantized = prequantized_method(config)
    quant = None
    if prequantized is not None:
        check_prequantized(prequantized, path, model_args)
    else:
        quant = quantization_config(model_args, dtype)
        if quant is not None:
            kwargs["quantization_config"] = quant
    if prequantized is not None or quant is not None:
        if model_args.train_from_scratch:
            raise UserError("train_from_scratch builds random full-precision weights; remove quantization_bit "
                            "(or use a model that is not quantized).")
        # Quantized weights are placed as they load; they cannot be moved afterwards.
        kwargs["device_map"] = device_map if device_map == "auto" else quantized_device_map(model_args, trainable)
        quiet_bitsandbytes()
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
        except (NotImplementedError, ImportError) as err:
            if prequantized is None and quant is None:
                raise
            # transformers' quantizers report what they cannot do on this machine or version here.
            raise UserError(f"Cannot load '{path}' quantized ({prequantized or model_args.quantization_method}): "
                            f"{str(err).splitlines()[0]}") from None
    if quant is not None:
        release_checkpoint_file(model)
    if model_args.resize_vocab and len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
    if not trainable:
        model.requires_grad_(False)
        model.eval()
    else:
        model.config.use_cache = False
    return model

"""Load the model to export: the base weights with every adapter merged in, and the fitted tokenizer.

The same resolution as `lmforge chat` (a training output_dir, or a base model plus adapters), and
the same adapter loader (`model.adapters.load_adapters`), so the merged export answers like the adapter applied on
the fly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.errors import UserError
from lmforge.utils.logging import get_logger

if TYPE_CHECKING:
    from lmforge.model.resolve import ResolvedModel
    from lmforge.config import RunConfig

logger = get_logger(__name__)


@dataclass
class MergedModel:
    """A model ready to save: merged weights, its tokenizer and template (and a vision model's processor files)."""

    model: Any
    tokenizer: Any
    template: Any
    resolved: ResolvedModel
    processor_files: dict[str, Path] = field(default_factory=dict)  # name -> the base model's file


def load_export_tokenizer(cfg: RunConfig, resolved: ResolvedModel):
    """The tokenizer fitted to the template, carrying the template's chat_template, padding on the left."""
    from lmforge.model.tokenizer import load_tokenizer_and_template

    tokenizer, template = load_tokenizer_and_template(cfg.model, cfg.data, resolved, padding_side="left")
    # Whatever chat_template the tokenizer came with, the export renders exactly like the template.
    tokenizer.chat_template = template.to_jinja(tokenizer)
    return tokenizer, template


def export_dtype(name: str):
    """`infer_dtype` as the dtype the model is loaded (and saved) in; `auto` keeps the checkpoint's own."""
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def load_merged(cfg: RunConfig) -> MergedModel:
    """Load the base model, merge the adapters in order, and fit the tokenizer and generation config."""
    from lmforge.model.adapters import load_adapters
    from lmforge.model.loader import load_model
    from lmforge.model.quantization import describe, is_quantized
    from lmforge.model.resolve import resolve_model
    from lmforge.model.tokenizer import with_model_path

    resolved = resolve_model(cfg)
    tokenizer, template = load_export_tokenizer(cfg, resolved)
    device_map = "auto" if cfg.export.export_device == "auto" else None
    model = load_model(with_model_path(cfg.model, resolved.base), tokenizer, export_dtype(cfg.model.infer_dtype),
                       trainable=False, device_map=device_map)
    if resolved.adapters and is_quantized(model):
        raise UserError(
            f"Cannot merge adapters into '{resolved.base}': it is a quantized model ({describe(model)}), and "
            "quantized weights cannot take an adapter's delta. Export from the unquantized base model the adapter "
            "was trained on (model_name_or_path: that model, adapter_name_or_path: the adapter)."
        )
    if resolved.adapters:
        logger.info(f"Merging {len(resolved.adapters)} adapter(s) into {resolved.base}: {', '.join(resolved.adapters)}")
    model = load_adapters(model, resolved.adapters, resolved.base, merge=True)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        raise UserError(
            f"The tokenizer has {len(tokenizer)} tokens but the model only {model.get_input_embeddings().weight.shape[0]} "
            "embeddings (the template added tokens). Set resize_vocab: true."
        )
    fit_generation_config(model, tokenizer, template)
    return MergedModel(model, tokenizer, template, resolved)


def fit_generation_config(model, tokenizer, template) -> None:
    """The saved generation config stops on the template's stop tokens and pads with the tokenizer's pad."""
    from transformers import GenerationConfig

    config = model.generation_config if model.generation_config is not None else GenerationConfig()
    config.eos_token_id = template.stop_token_ids(tokenizer)
    config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        config.bos_token_id = tokenizer.bos_token_id
    model.generation_config = config

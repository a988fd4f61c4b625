"""The tokenizer and the run's template, loaded and fitted together: the one way every command gets them.

Training, data inspection, every inference engine, evaluation and export call
`load_tokenizer_and_template`, so the prompt a model is trained on and the prompt it is served
with are built by the same code.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.errors import UserError
from lmforge.model.loader import check_model_path, hub_kwargs

if TYPE_CHECKING:
    from lmforge.config import DataArguments, ModelArguments
    from lmforge.data.templates import BaseTemplate
    from lmforge.model.resolve import ResolvedModel


def load_tokenizer(model_args: ModelArguments):
    """Load the tokenizer of `model_args.model_name_or_path` with the user's token additions."""
    from transformers import AutoTokenizer

    path = model_args.model_name_or_path
    check_model_path(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path,
            use_fast=model_args.use_fast_tokenizer,
            split_special_tokens=model_args.split_special_tokens,
            padding_side="right",
            **hub_kwargs(model_args),
        )
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " The hub is offline (HF_HUB_OFFLINE=1): download the model first or use a local folder." if offline else ""
        raise UserError(f"Cannot load the tokenizer of '{path}': {str(err).splitlines()[0]}{hint}") from None
    if model_args.add_tokens:
        tokenizer.add_tokens(model_args.add_tokens)
    if model_args.add_special_tokens:
        tokenizer.add_tokens(model_args.add_special_tokens, special_tokens=True)
    return tokenizer


def load_mm_processor(model_args: ModelArguments):
    """The processor (image processor, video sampler) of a vision-language model; None for a text model.

    It comes with the tokenizer, as in LLaMA-Factory's `load_tokenizer`: the data pipeline needs it to
    count each image's vision tokens, and the collator to make the pixels.
    """
    from transformers import AutoConfig

    from lmforge.model.multimodal import is_multimodal

    try:
        config = AutoConfig.from_pretrained(model_args.model_name_or_path, **hub_kwargs(model_args))
    except (OSError, ValueError):
        return None  # load_model reports an unreadable config, with its fix
    if not is_multimodal(config):
        return None
    from lmforge.model.vl_processor import load_processor

    return load_processor(processor_folder(model_args))


def processor_folder(model_args: ModelArguments) -> str:
    """The local folder of the model's processor files: the model folder, or the hub snapshot of its small files."""
    path = model_args.model_name_or_path
    if os.path.isdir(path):
        return path
    from huggingface_hub import snapshot_download

    try:
        # Only the configs and tokenizer: the processor reads nothing else, and the weights come with the model.
        return snapshot_download(path, revision=model_args.model_revision, cache_dir=model_args.cache_dir,
                                 token=model_args.hf_hub_token, allow_patterns=["*.json", "*.jinja", "*.txt"])
    except Exception as err:  # noqa: BLE001 - hub errors come in many classes; each is one line for the user
        raise UserError(f"Cannot fetch the processor files of '{path}': {str(err).splitlines()[0]}") from None


def _gguf_tokenizer(gguf: Path):
    """The export's own tokenizer files when they sit next to the GGUF, else the tokenizer inside the GGUF."""
    from transformers import AutoTokenizer

    folder = gguf.parent
    if (folder / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(folder)
    try:
        return AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
    except (ValueError, OSError, KeyError) as err:
        raise UserError(f"Cannot read the tokenizer of '{gguf}': {str(err).splitlines()[0]}") from None


def with_model_path(model_args: ModelArguments, path: str) -> ModelArguments:
    """`model_args` pointing at `path` alone (adapters are applied separately)."""
    return dataclasses.replace(model_args, model_name_or_path=path, adapter_name_or_path=None)


def load_tokenizer_and_template(model_args: ModelArguments, data_args: DataArguments,
                                resolved: ResolvedModel | None = None, *,
                                padding_side: str = "right") -> tuple[object, BaseTemplate]:
    """The tokenizer and a fresh template object, fitted to each other.

    Without `resolved` the tokenizer of `model_name_or_path` is loaded (training). With it (from
    `resolve_model` or `resolve_gguf`) the tokenizer comes from where the run or export saved it,
    and the template that folder recorded is used unless the user set `template`.
    """
    from lmforge.data.templates import get_template

    name = data_args.template
    if resolved is None:
        tokenizer = load_tokenizer(model_args)
    elif resolved.base.endswith(".gguf"):
        tokenizer = _gguf_tokenizer(Path(resolved.base))
    else:
        tokenizer = load_tokenizer(with_model_path(model_args, resolved.tokenizer))
    if name is None and resolved is not None:
        name = resolved.template
    template = get_template(
        name,
        tokenizer,
        tool_format=data_args.tool_format,
        default_system=data_args.default_system,
        enable_thinking=data_args.enable_thinking,
    )
    template.fix_tokenizer(tokenizer)
    tokenizer.padding_side = padding_side
    return tokenizer, template

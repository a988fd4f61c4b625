"""Load tokenizers (and, for training and inference, models) the way users expect from the hub.

`model_name_or_path` is a hub id or a local folder; this is the same code path for both, the
tests just point it at a local tiny model.
"""

from __future__ import annotations

import os
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


def check_model_path(path: str) -> None:
    """Fail early, with the fix, when a local-looking model path does not exist."""
    local = Path(path).expanduser()
    if local.exists():
        if local.is_dir() and not (local / "config.json").exists() and not (local / "tokenizer_config.json").exists():
            raise UserError(
                f"'{path}' is a folder but holds no model (no config.json or tokenizer_config.json). "
                "Point model_name_or_path at a model folder or a hub id."
            )
        return
    if path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise UserError(
            f"Model folder '{path}' does not exist. Check model_name_or_path, or build a tiny test model with "
            "`lmforge tiny-model DIR`."
        )


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

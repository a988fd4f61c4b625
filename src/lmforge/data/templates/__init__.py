"""Chat templates: LLaMA-Factory-compatible rendering, encoding, tool calling, jinja and Ollama export.

`get_template(name, tokenizer)` hands out a new frozen template each call: a registered `Template`,
or a `TokenizerTemplate` for the tokenizer's own chat_template. Both implement `BaseTemplate`, the
type callers should hold. Overrides (`tool_format`, `default_system`, `enable_thinking`,
`preserve_thinking`) are applied by `BaseTemplate.with_overrides`, which copies, so no setting leaks
into the shared table or into a later run in the same process.
"""

from __future__ import annotations

import logging

from lmforge.errors import UserError, did_you_mean

from .base import BaseTemplate
from .registry import TEMPLATES
from .slots import BOS, EOS, Formatter, Token
from .template import Template
from .tokenizer_template import TokenizerTemplate
from .tools import TOOL_FORMATS, FunctionCall

__all__ = [
    "BOS",
    "BaseTemplate",
    "EOS",
    "Formatter",
    "FunctionCall",
    "Template",
    "Token",
    "TokenizerTemplate",
    "get_template",
    "list_templates",
    "list_tool_formats",
]

logger = logging.getLogger(__name__)


def list_templates() -> list[str]:
    """The registered template names, sorted."""
    return sorted(TEMPLATES)


def list_tool_formats() -> list[str]:
    """The tool format names, sorted."""
    return sorted(TOOL_FORMATS)


def get_template(
    name: str | None,
    tokenizer=None,
    *,
    tool_format: str | None = None,
    default_system: str | None = None,
    enable_thinking: bool | None = True,
    preserve_thinking: bool = False,
) -> BaseTemplate:
    """A new template object for `name`, with the given overrides.

    `name=None` uses the tokenizer's own chat_template (a `TokenizerTemplate`, whose trained span is
    found by diffing renders), or the `empty` template when the tokenizer has none. `tool_format`
    replaces the template's tool format; as in LLaMA-Factory a registered template's function-call
    slots then become `{{content}}` + EOS (`{{content}}` with efficient_eos) unless the format is its
    own (see `BaseTemplate.with_overrides`).
    """
    return _lookup(name, tokenizer).with_overrides(
        tool_format=tool_format,
        default_system=default_system,
        enable_thinking=enable_thinking,
        preserve_thinking=preserve_thinking,
    )


def _lookup(name: str | None, tokenizer) -> BaseTemplate:
    """The template `name` stands for, before overrides (the shared registry object for a registered name)."""
    if name is None:
        if tokenizer is not None and isinstance(getattr(tokenizer, "chat_template", None), str):
            logger.info("No `template` set: rendering with the tokenizer's own chat_template.")
            return TokenizerTemplate.from_tokenizer(tokenizer)
        logger.warning("No `template` set and the tokenizer has no chat_template: using the `empty` template.")
        name = "empty"
    if name not in TEMPLATES:
        raise UserError(
            f"Unknown template '{name}'.{did_you_mean(name, TEMPLATES)} Run `lmforge templates` to list them."
        )
    return TEMPLATES[name]

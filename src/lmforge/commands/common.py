"""What every config-taking command does first: read and validate the settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmforge.config import RunConfig


def load_config(command: str, argv: list[str]) -> RunConfig:
    """The validated settings of `command`, with the template name checked against the registry."""
    from lmforge.config import parse_config
    from lmforge.data.templates import list_templates

    return parse_config(command, argv, template_names=list_templates())

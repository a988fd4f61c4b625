"""What every config-taking command does first: read and validate the settings."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from lmforge.errors import UserError

if TYPE_CHECKING:
    from lmforge.config import RunConfig


def load_config(command: str, argv: list[str]) -> RunConfig:
    """The validated settings of `command`, with the template name checked against the registry."""
    from lmforge.config import parse_config
    from lmforge.data.templates import list_templates

    return parse_config(command, argv, template_names=list_templates())


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are lmforge's one-line user errors (exit 1) instead of a usage dump (exit 2)."""

    def error(self, message: str):
        usage = " ".join(self.format_usage().split()).removeprefix("usage: ")  # on one line
        raise UserError(f"{message}. Usage: {usage}")

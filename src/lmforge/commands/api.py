"""`lmforge api CONFIG`: serve a model with an OpenAI-compatible API (see `lmforge.api.server`)."""

from __future__ import annotations

from lmforge.commands.common import load_config


def main(argv: list[str]) -> int:
    cfg = load_config("api", argv)
    from lmforge.api.server import serve

    serve(cfg)
    return 0

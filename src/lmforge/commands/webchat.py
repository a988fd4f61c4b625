"""`lmforge webchat CONFIG`: chat with a model in the browser (see `lmforge.webui.webchat`)."""

from __future__ import annotations

from lmforge.commands.common import load_config


def main(argv: list[str]) -> int:
    cfg = load_config("webchat", argv)
    from lmforge.webui.webchat import serve

    serve(cfg)
    return 0

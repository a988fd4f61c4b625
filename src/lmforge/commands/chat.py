"""`lmforge chat CONFIG`: talk to a model in the terminal (see `lmforge.chat.terminal`)."""

from __future__ import annotations

from lmforge.commands.common import load_config


def main(argv: list[str]) -> int:
    cfg = load_config("chat", argv)
    from lmforge.chat.factory import create_engine
    from lmforge.chat.terminal import chat_loop

    chat_loop(create_engine(cfg))
    return 0

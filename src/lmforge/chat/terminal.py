"""The terminal chat of `lmforge chat CONFIG`.

Interactive on a terminal: the answer streams as it is generated, the history is kept, `clear`
starts over and `exit` quits. With stdin not a terminal it reads one message per line and prints
one answer per line, so it can be scripted (`echo "Who are you?" | lmforge chat cfg.yaml`).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmforge.chat.base import ChatEngine


def chat_loop(engine: ChatEngine) -> None:
    """Read messages from stdin and answer each with `engine`, keeping the conversation."""
    interactive = sys.stdin.isatty()
    if interactive:
        print("Type a message; `clear` resets the history, `exit` quits.", flush=True)
    history: list[dict] = []
    while True:
        try:
            line = input("User: " if interactive else "")
        except EOFError:
            break
        query = line.strip()
        if not query:
            continue
        if query == "exit":
            break
        if query == "clear":
            history = []
            if interactive:
                print("History cleared.", flush=True)
            continue
        history.append({"role": "user", "content": query})
        if interactive:
            print("Assistant: ", end="", flush=True)
            answer = ""
            for piece in engine.stream_chat(history):
                print(piece, end="", flush=True)
                answer += piece
            print(flush=True)
        else:
            answer = engine.chat(history).text
            print(answer.replace("\n", "\\n"), flush=True)
        history.append({"role": "assistant", "content": answer})

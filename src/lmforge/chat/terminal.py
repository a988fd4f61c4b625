"""The terminal chat of `lmforge chat CONFIG`.

Interactive on a terminal: the answer streams as it is generated, the history is kept, `clear`
starts over and `exit` quits. With stdin not a terminal it reads one message per line and prints
one answer per line, so it can be scripted (`echo "Who are you?" | lmforge chat cfg.yaml`).

A vision-language model sees images and videos: `/image PATH` (or `/video PATH`) attaches a file to
the next message, where it is placed in front of the text unless the text has its own `<image>`
placeholder. A problem with a file or a message is printed and the conversation goes on without it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.errors import UserError

if TYPE_CHECKING:
    from lmforge.chat.base import ChatEngine

_ATTACH = {"/image": "images", "/video": "videos"}


def chat_loop(engine: ChatEngine) -> None:
    """Read messages from stdin and answer each with `engine`, keeping the conversation."""
    from lmforge.chat.base import Media
    from lmforge.chat.media import check_supported
    from lmforge.data.templates.mm_plugin import placeholders

    interactive = sys.stdin.isatty()
    if interactive:
        hint = " `/image PATH` attaches an image to your next message." if engine.mm_processor is not None else ""
        print(f"Type a message; `clear` resets the history, `exit` quits.{hint}", flush=True)
    history: list[dict] = []
    media: dict[str, list[str]] = {"images": [], "videos": []}  # the whole conversation's, in order
    pending: dict[str, list[str]] = {"images": [], "videos": []}  # attached to the next message
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
            media, pending = {"images": [], "videos": []}, {"images": [], "videos": []}
            if interactive:
                print("History cleared.", flush=True)
            continue
        command, _, argument = query.partition(" ")
        if command in _ATTACH:
            kind, path = _ATTACH[command], argument.strip()
            try:
                if not path:
                    raise UserError(f"Give a file after {command}: `{command} path/to/file`.")
                if not Path(path).is_file():
                    raise UserError(f"{kind[:-1].capitalize()} file '{path}' does not exist.")
                check_supported(engine, Media(**{kind: (path,)}))
            except UserError as err:
                print(f"Error: {err}", file=sys.stderr, flush=True)
                continue
            pending[kind].append(path)
            if interactive:
                print(f"Attached {path}; it goes with your next message.", flush=True)
            continue

        marks = placeholders()
        lead = "".join(marks[kind] * len(items) for kind, items in pending.items()
                       if items and marks[kind] not in query)
        history.append({"role": "user", "content": lead + query})
        turn_media = Media(tuple(media["images"] + pending["images"]), tuple(media["videos"] + pending["videos"]))
        try:
            answer = _answer(engine, history, turn_media or None, interactive)
        except UserError as err:  # the message (and what was attached to it) is not kept
            history.pop()
            pending = {"images": [], "videos": []}
            print(f"Error: {err}", file=sys.stderr, flush=True)
            continue
        for kind, items in pending.items():
            media[kind] += items
        pending = {"images": [], "videos": []}
        history.append({"role": "assistant", "content": answer})


def _answer(engine: ChatEngine, history: list[dict], media, interactive: bool) -> str:
    if not interactive:
        answer = engine.chat(history, media=media).text
        print(answer.replace("\n", "\\n"), flush=True)
        return answer
    pieces = engine.stream_chat(history, media=media)
    first = next(pieces, "")  # the prompt (and its files) is checked before anything is printed
    print("Assistant: " + first, end="", flush=True)
    answer = first
    for piece in pieces:
        print(piece, end="", flush=True)
        answer += piece
    print(flush=True)
    return answer

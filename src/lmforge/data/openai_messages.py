"""OpenAI-style messages -> template turns: the one mapping of openai-format datasets and of the API.

Both read `tool_calls` and `tool` messages the same way, so a model answers the API as it was
trained: the calls of an assistant message become one `function` turn holding the JSON list of
`{name, arguments}` (string arguments are decoded first, where LLaMA-Factory encodes them twice),
and consecutive tool results become one `observation` turn, joined by TOOL_SEPARATOR.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

TOOL_SEPARATOR = "\n</tool_response>\n<tool_response>\n"
OBSERVATION = "observation"

T = TypeVar("T")


class BadToolCall(ValueError):
    """Tool call number `index` has arguments that are not valid JSON."""

    def __init__(self, index: int):
        super().__init__(f"tool call {index} has arguments that are not valid JSON")
        self.index = index


def tool_calls_content(calls: Sequence[tuple[str, Any]]) -> str:
    """The `function` turn content for (name, arguments) pairs: a JSON list, string arguments decoded."""
    decoded = []
    for index, (name, arguments) in enumerate(calls):
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError:
                raise BadToolCall(index) from None
        decoded.append({"name": name, "arguments": {} if arguments is None else arguments})
    return json.dumps(decoded, ensure_ascii=False)


def merge_tool_results(turns: Iterable[tuple[str, str, T]]) -> list[tuple[str, str, T]]:
    """(role, content, origin) turns with each run of observation turns merged into one.

    A merged turn keeps the origin (e.g. the message index, for error messages) of its first result.
    """
    merged: list[tuple[str, str, T]] = []
    results: list[str] = []
    origin: Any = None
    for role, content, where in turns:
        if role == OBSERVATION:
            if not results:
                origin = where
            results.append(content)
            continue
        if results:
            merged.append((OBSERVATION, TOOL_SEPARATOR.join(results), origin))
            results = []
        merged.append((role, content, where))
    if results:
        merged.append((OBSERVATION, TOOL_SEPARATOR.join(results), origin))
    return merged

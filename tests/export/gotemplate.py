"""A small renderer of the Go text/template syntax Ollama's TEMPLATE uses, written for the tests.

It covers what Modelfile templates need: text, `{{ .Field }}` / `{{ $var.Field }}` output,
`if` / `else if` / `else` / `end`, `range` (with `$i, $x :=`), variable declaration (`:=`) and
assignment (`=`), the functions `eq`, `ne`, `and`, `or`, `not`, `len`, `gt`, parentheses, quoted
strings and `{{-` / `-}}` trimming. Values print as Go does: strings as they are, tool functions
and call arguments as compact JSON (Ollama's `String()` methods use `json.Marshal`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_ACTION = re.compile(r"\{\{(-?)(.*?)(-?)\}\}", re.DOTALL)
_TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"|\(|\)|:=|=|,|[^\s(),]+)')


class GoJSON:
    """A value that prints as compact JSON, like Ollama's api.ToolFunction and call arguments."""

    def __init__(self, value: Any):
        self.value = value

    def __str__(self) -> str:
        return json.dumps(self.value, separators=(",", ":"), ensure_ascii=False)

    def __bool__(self) -> bool:
        return bool(self.value)


@dataclass
class _Node:
    kind: str  # text, print, if, range, assign
    text: str = ""
    expr: list[str] = field(default_factory=list)
    branches: list[tuple[list[str] | None, list[_Node]]] = field(default_factory=list)
    variables: list[str] = field(default_factory=list)
    body: list[_Node] = field(default_factory=list)
    else_body: list[_Node] = field(default_factory=list)


def _lex(template: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", inner)], with `{{-` / `-}}` trimming applied."""
    items: list[tuple[str, str]] = []
    pos = 0
    for match in _ACTION.finditer(template):
        text = template[pos:match.start()]
        if match.group(1):
            text = text.rstrip()
        if items and items[-1][0] == "trim":
            items.pop()
            text = text.lstrip()
        items.append(("text", text))
        items.append(("action", match.group(2).strip()))
        if match.group(3):
            items.append(("trim", ""))
        pos = match.end()
    tail = template[pos:]
    if items and items[-1][0] == "trim":
        items.pop()
        tail = tail.lstrip()
    items.append(("text", tail))
    return [item for item in items if item != ("text", "")]


def _words(action: str) -> list[str]:
    return [m.group(1) for m in _TOKEN.finditer(action) if m.group(1)]


def _parse(items: list[tuple[str, str]], pos: int, stop: tuple[str, ...]) -> tuple[list[_Node], int, str]:
    nodes: list[_Node] = []
    while pos < len(items):
        kind, value = items[pos]
        pos += 1
        if kind == "text":
            nodes.append(_Node("text", text=value))
            continue
        words = _words(value)
        head = words[0] if words else ""
        if head in stop or (head == "else" and "else" in stop):
            return nodes, pos, value
        if head == "if":
            node = _Node("if")
            cond: list[str] | None = words[1:]
            while True:
                body, pos, closer = _parse(items, pos, ("else", "end"))
                node.branches.append((cond, body))
                closer_words = _words(closer)
                if closer_words[0] == "end":
                    break
                if closer_words[1:2] == ["if"]:
                    cond = closer_words[2:]
                    continue
                node.else_body, pos, closer = _parse(items, pos, ("end",))
                break
            nodes.append(node)
        elif head == "range":
            rest = words[1:]
            variables: list[str] = []
            if ":=" in rest:
                split = rest.index(":=")
                variables = [w for w in rest[:split] if w != ","]
                rest = rest[split + 1:]
            body, pos, _ = _parse(items, pos, ("end",))
            nodes.append(_Node("range", expr=rest, variables=variables, body=body))
        elif len(words) >= 3 and words[0].startswith("$") and words[1] in (":=", "="):
            nodes.append(_Node("assign", expr=words[2:], variables=[words[0]], text=words[1]))
        else:
            nodes.append(_Node("print", expr=words))
    return nodes, pos, ""


class _Scope:
    def __init__(self, variables: dict[str, Any]):
        self.frames = [variables]

    def get(self, name: str) -> Any:
        for frame in reversed(self.frames):
            if name in frame:
                return frame[name]
        raise KeyError(f"undefined variable {name}")

    def set(self, name: str, value: Any) -> None:
        for frame in reversed(self.frames):
            if name in frame:
                frame[name] = value
                return
        raise KeyError(f"assignment to undeclared variable {name}")


def _field(value: Any, path: list[str]) -> Any:
    for name in path:
        if value is None:
            return None
        value = value.get(name) if isinstance(value, dict) else getattr(value, name, None)
    return value


def _truth(value: Any) -> bool:
    return bool(value)


def _eval(words: list[str], dot: Any, scope: _Scope) -> Any:
    value, rest = _eval_command(words, dot, scope)
    if rest:
        raise ValueError(f"unexpected {rest}")
    return value


def _eval_operand(words: list[str], dot: Any, scope: _Scope) -> tuple[Any, list[str]]:
    word, rest = words[0], words[1:]
    if word == "(":
        depth, i = 1, 0
        while depth:
            depth += {"(": 1, ")": -1}.get(rest[i], 0)
            i += 1
        return _eval(rest[: i - 1], dot, scope), rest[i:]
    if word.startswith('"'):
        return json.loads(word), rest
    if word == ".":
        return dot, rest
    if word.startswith("."):
        return _field(dot, word[1:].split(".")), rest
    if word.startswith("$"):
        name, *path = word.split(".")
        return _field(scope.get(name), path), rest
    if re.fullmatch(r"-?\d+", word):
        return int(word), rest
    raise ValueError(f"cannot read {word!r}")


_FUNCTIONS = {
    "eq": lambda a, *b: any(a == x for x in b),
    "ne": lambda a, b: a != b,
    "and": lambda *a: next((x for x in a if not _truth(x)), a[-1]),
    "or": lambda *a: next((x for x in a if _truth(x)), a[-1]),
    "not": lambda a: not _truth(a),
    "len": lambda a: len(a),
    "gt": lambda a, b: a > b,
}


def _eval_command(words: list[str], dot: Any, scope: _Scope) -> tuple[Any, list[str]]:
    if words[0] in _FUNCTIONS:
        args, rest = [], words[1:]
        while rest:
            value, rest = _eval_operand(rest, dot, scope)
            args.append(value)
        return _FUNCTIONS[words[0]](*args), []
    return _eval_operand(words, dot, scope)


def _render(nodes: list[_Node], dot: Any, scope: _Scope, out: list[str]) -> None:
    for node in nodes:
        if node.kind == "text":
            out.append(node.text)
        elif node.kind == "print":
            value = _eval(node.expr, dot, scope)
            out.append("" if value is None else str(value))
        elif node.kind == "assign":
            value = _eval(node.expr, dot, scope)
            if node.text == ":=":
                scope.frames[-1][node.variables[0]] = value
            else:
                scope.set(node.variables[0], value)
        elif node.kind == "if":
            for cond, body in node.branches:
                if _truth(_eval(cond, dot, scope)):
                    _render(body, dot, scope, out)
                    break
            else:
                _render(node.else_body, dot, scope, out)
        elif node.kind == "range":
            items = _eval(node.expr, dot, scope) or []
            for index, item in enumerate(items):
                frame: dict[str, Any] = {}
                if len(node.variables) == 1:
                    frame[node.variables[0]] = item
                elif len(node.variables) == 2:
                    frame[node.variables[0]], frame[node.variables[1]] = index, item
                scope.frames.append(frame)
                _render(node.body, item, scope, out)
                scope.frames.pop()


def render(template: str, data: dict[str, Any]) -> str:
    """Render the Go template `template` with `data` as the dot (and `$`)."""
    nodes, pos, closer = _parse(_lex(template), 0, ())
    if closer:
        raise ValueError(f"unexpected {{{{ {closer} }}}}")
    out: list[str] = []
    _render(nodes, data, _Scope({"$": data}), out)
    return "".join(out)


def ollama_data(messages: list[dict], system: str = "", tools: list[dict] | None = None) -> dict[str, Any]:
    """The data Ollama passes to a TEMPLATE for a chat request (OpenAI-shaped messages)."""
    converted = []
    for message in messages:
        calls = [
            {"Function": {"Name": c["function"]["name"], "Arguments": GoJSON(c["function"]["arguments"])}}
            for c in message.get("tool_calls") or []
        ]
        converted.append({"Role": message["role"], "Content": message.get("content") or "", "ToolCalls": calls})
    functions = [{"Type": "function", "Function": GoJSON(t.get("function", t))} for t in tools or []]
    return {"System": system, "Messages": converted, "Tools": functions}

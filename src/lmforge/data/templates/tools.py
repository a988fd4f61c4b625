"""Tool formats: how a tool list becomes system text, how calls are written, and how they are parsed back.

The texts are LLaMA-Factory's (`data/tool_utils.py`), which models fine-tuned with it expect.
A format bundles three functions: `format_tools` (tools -> text appended to the system prompt),
`format_calls` (calls -> assistant text) and `extract` (generated text -> calls, or the text itself
when it holds no well-formed call).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from lmforge.errors import UserError, did_you_mean


class FunctionCall(NamedTuple):
    """One tool call: the function name and its arguments as a JSON string."""

    name: str
    arguments: str


DEFAULT_TOOL_PROMPT = (
    "You have access to the following tools:\n{tool_text}"
    "Use the following format if using a tool:\n"
    "```\n"
    "Action: tool name (one of [{tool_names}])\n"
    "Action Input: the input to the tool, in a JSON format representing the kwargs "
    """(e.g. ```{{"input": "hello world", "num_beams": 5}}```)\n"""
    "```\n"
)

GLM4_TOOL_PROMPT = (
    "你是一个名为 ChatGLM 的人工智能助手。你是基于智谱 AI 公司训练的语言模型 GLM-4 模型开发的，"
    "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具{tool_text}"
)
GLM4_TOOL_SUFFIX = "\n在调用上述函数时，请使用 Json 格式表示调用的参数。"

LLAMA3_TOOL_PROMPT = (
    "Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n"
    "You have access to the following functions. To call a function, please respond with JSON for a function call. "
    """Respond in the format {{"name": function name, "parameters": dictionary of argument name and its value}}. """
    "Do not use variables.\n\n{tool_text}"
)

QWEN_TOOL_PROMPT = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>{tool_text}"
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    """<tool_call></tool_call> XML tags:\n<tool_call>\n{{"name": <function-name>, """
    """"arguments": <args-json-object>}}\n</tool_call>"""
)

DATE_FORMAT = "%d %b %Y"


def today() -> str:
    """Today's date as the llama3 tool prompt writes it ("26 Jul 2024")."""
    return datetime.now().strftime(DATE_FORMAT)


def unwrap(tool: dict[str, Any]) -> dict[str, Any]:
    """The function definition inside `{"type": "function", "function": {...}}`, or the tool itself."""
    return tool.get("function", "") if tool.get("type") == "function" else tool


def wrap(tool: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI-style `{"type": "function", "function": {...}}` form of a tool."""
    return tool if tool.get("type") == "function" else {"type": "function", "function": tool}


def _dumps(value: Any, **kwargs: Any) -> str:
    return json.dumps(value, ensure_ascii=False, **kwargs)


# ---- default (ReAct) ----------------------------------------------------------------------------


def _default_tools(tools: Sequence[dict[str, Any]], date: str | None = None) -> str:
    tool_text = ""
    tool_names = []
    for tool in tools:
        tool = unwrap(tool)
        parameters = tool.get("parameters") or {}
        param_text = ""
        for name, param in (parameters.get("properties") or {}).items():
            required = ", required" if name in parameters.get("required", []) else ""
            enum = ", should be one of [{}]".format(", ".join(str(v) for v in param["enum"])) if param.get("enum") else ""
            items = (
                ", where each item should be {}".format(param["items"].get("type", "")) if param.get("items") else ""
            )
            param_text += (
                f"  - {name} ({param.get('type', '')}{required}): {param.get('description', '')}{enum}{items}\n"
            )
        tool_text += (
            f"> Tool Name: {tool['name']}\nTool Description: {tool.get('description', '')}\nTool Args:\n{param_text}\n"
        )
        tool_names.append(tool["name"])
    return DEFAULT_TOOL_PROMPT.format(tool_text=tool_text, tool_names=", ".join(tool_names))


def _default_calls(calls: Sequence[FunctionCall]) -> str:
    return "\n".join(f"Action: {name}\nAction Input: {arguments}" for name, arguments in calls)


_ACTION = re.compile(r"Action:\s*([a-zA-Z0-9_]+)\s*Action Input:\s*(.+?)(?=\s*Action:|\s*$)", re.DOTALL)


def _default_extract(content: str) -> str | list[FunctionCall]:
    matches = _ACTION.findall(content)
    if not matches:
        return content
    calls = []
    for name, tool_input in matches:
        tool_input = tool_input.strip().strip('"').strip("`")
        try:
            arguments = json.loads(tool_input)
        except json.JSONDecodeError:
            return content
        calls.append(FunctionCall(name.strip(), _dumps(arguments)))
    return calls


# ---- glm4 ---------------------------------------------------------------------------------------


def _glm4_tools(tools: Sequence[dict[str, Any]], date: str | None = None) -> str:
    tool_text = ""
    for tool in tools:
        tool = unwrap(tool)
        tool_text += f"\n\n## {tool['name']}\n\n{_dumps(tool, indent=4)}{GLM4_TOOL_SUFFIX}"
    return GLM4_TOOL_PROMPT.format(tool_text=tool_text)


def _glm4_calls(calls: Sequence[FunctionCall]) -> str:
    if len(calls) > 1:
        raise UserError("The glm4 tool format does not support parallel function calls; use one call per turn.")
    return f"{calls[0].name}\n{calls[0].arguments}"


def _glm4_extract(content: str) -> str | list[FunctionCall]:
    if "\n" not in content:
        return content
    name, tool_input = content.split("\n", maxsplit=1)
    try:
        arguments = json.loads(tool_input.strip())
    except json.JSONDecodeError:
        return content
    return [FunctionCall(name, _dumps(arguments))]


# ---- llama3 -------------------------------------------------------------------------------------


def _llama3_tools(tools: Sequence[dict[str, Any]], date: str | None = None) -> str:
    tool_text = "".join(_dumps(wrap(tool), indent=4) + "\n\n" for tool in tools)
    return LLAMA3_TOOL_PROMPT.format(date=date or today(), tool_text=tool_text)


def _llama3_calls(calls: Sequence[FunctionCall]) -> str:
    objects = [{"name": name, "parameters": json.loads(arguments)} for name, arguments in calls]
    return _dumps(objects[0] if len(objects) == 1 else objects)


def _json_calls_extract(key: str) -> Callable[[str], str | list[FunctionCall]]:
    def extract(content: str) -> str | list[FunctionCall]:
        try:
            parsed = json.loads(content.strip())
        except json.JSONDecodeError:
            return content
        parsed = parsed if isinstance(parsed, list) else [parsed]
        try:
            return [FunctionCall(call["name"], _dumps(call[key])) for call in parsed]
        except (KeyError, TypeError):
            return content

    return extract


# ---- mistral ------------------------------------------------------------------------------------


def _mistral_tools(tools: Sequence[dict[str, Any]], date: str | None = None) -> str:
    return "[AVAILABLE_TOOLS] " + _dumps([wrap(tool) for tool in tools]) + "[/AVAILABLE_TOOLS]"


def _mistral_calls(calls: Sequence[FunctionCall]) -> str:
    return _dumps([{"name": name, "arguments": json.loads(arguments)} for name, arguments in calls])


# ---- qwen ---------------------------------------------------------------------------------------


def _qwen_tools(tools: Sequence[dict[str, Any]], date: str | None = None) -> str:
    tool_text = "".join("\n" + _dumps(wrap(tool)) for tool in tools)
    return QWEN_TOOL_PROMPT.format(tool_text=tool_text)


def _qwen_calls(calls: Sequence[FunctionCall]) -> str:
    texts = [_dumps({"name": name, "arguments": json.loads(arguments)}) for name, arguments in calls]
    return "\n".join(f"<tool_call>\n{text}\n</tool_call>" for text in texts)


_QWEN_CALL = re.compile(r"<tool_call>(.+?)</tool_call>(?=\s*<tool_call>|\s*$)", re.DOTALL)


def _qwen_extract(content: str) -> str | list[FunctionCall]:
    matches = _QWEN_CALL.findall(content)
    if not matches:
        return content
    calls = []
    for match in matches:
        try:
            call = json.loads(match.strip())
        except json.JSONDecodeError:
            return content
        if not isinstance(call, dict) or "name" not in call or "arguments" not in call:
            return content
        calls.append(FunctionCall(call["name"], _dumps(call["arguments"])))
    return calls


@dataclass(frozen=True)
class ToolFormat:
    """A named tool format: tools text, call rendering and call extraction."""

    name: str
    format_tools: Callable[..., str]
    format_calls: Callable[[Sequence[FunctionCall]], str]
    extract: Callable[[str], str | list[FunctionCall]]


TOOL_FORMATS: dict[str, ToolFormat] = {
    "default": ToolFormat("default", _default_tools, _default_calls, _default_extract),
    "glm4": ToolFormat("glm4", _glm4_tools, _glm4_calls, _glm4_extract),
    "llama3": ToolFormat("llama3", _llama3_tools, _llama3_calls, _json_calls_extract("parameters")),
    "mistral": ToolFormat("mistral", _mistral_tools, _mistral_calls, _json_calls_extract("arguments")),
    "qwen": ToolFormat("qwen", _qwen_tools, _qwen_calls, _qwen_extract),
}


def get_tool_format(name: str) -> ToolFormat:
    """The tool format called `name`; a UserError naming the valid ones otherwise."""
    if name not in TOOL_FORMATS:
        raise UserError(
            f"Unknown tool_format '{name}'.{did_you_mean(name, TOOL_FORMATS)} "
            f"Choose one of: {', '.join(sorted(TOOL_FORMATS))}."
        )
    return TOOL_FORMATS[name]


def load_tools(tools: str | Sequence[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The tool list from a JSON string (the aligned dataset's `tools` column) or a list."""
    if not tools:
        return []
    if isinstance(tools, str):
        try:
            parsed = json.loads(tools)
        except json.JSONDecodeError as err:
            raise UserError(f"Invalid JSON in the tools description: {tools[:200]!r} ({err}).") from None
    else:
        parsed = list(tools)
    if isinstance(parsed, dict):
        parsed = [parsed]
    if not isinstance(parsed, list) or not all(isinstance(tool, dict) for tool in parsed):
        raise UserError(f"The tools description must be a JSON list of function definitions, got {tools!r:.200}.")
    return parsed


def parse_function_message(
    content: str, thought_words: tuple[str, str] | None = None, tool_call_words: tuple[str, str] | None = None
) -> tuple[str, list[FunctionCall]]:
    """Split a dataset function message into (thought text, calls).

    The content is a JSON call object or a list of them (`{"name": ..., "arguments": {...}}`),
    optionally preceded by a thought and optionally wrapped in tool-call words (`<tool_call>`).
    """
    thought = ""
    if thought_words and len(thought_words) == 2:
        pattern = re.compile(f"{re.escape(thought_words[0])}(.*?){re.escape(thought_words[1])}", re.DOTALL)
        match = pattern.search(content)
        if match:
            thought = match.group(0)
            content = content.replace(thought, "")

    bodies = [content]
    if tool_call_words and tool_call_words[0] and tool_call_words[0] in content:
        start, end = (re.escape(word) for word in tool_call_words)
        bodies = re.findall(f"{start}(.*?){end}", content, re.DOTALL) or [content]

    calls: list[FunctionCall] = []
    for body in bodies:
        try:
            parsed = json.loads(body)
        except json.JSONDecodeError:
            raise UserError(
                f"Invalid JSON in a function message: {content[:200]!r}. A function message holds a tool call "
                'like {"name": "get_weather", "arguments": {"city": "Paris"}} or a list of them.'
            ) from None
        for call in parsed if isinstance(parsed, list) else [parsed]:
            if not isinstance(call, dict) or "name" not in call or "arguments" not in call:
                raise UserError(
                    f"A tool call needs 'name' and 'arguments', got {call!r:.200} "
                    f"in function message {content[:200]!r}."
                )
            calls.append(FunctionCall(call["name"], _dumps(call["arguments"])))
    return thought, calls

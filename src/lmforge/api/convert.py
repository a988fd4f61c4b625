"""Between the OpenAI protocol and the engine: requests become template conversations, text becomes messages.

Requests are mapped as LLaMA-Factory's API maps them, so a model answers the API as it answered
its training data:
  * a leading system (or developer) message becomes the system prompt;
  * `tool` messages and `tool_calls` are mapped by `data.openai_messages`, the code that reads
    openai-format datasets: consecutive tool results become one `observation` turn, calls one
    `function` turn holding their JSON list (string arguments decoded);
  * after that the turns must alternate user/observation and assistant/function and end with a
    user or observation turn ("u/a/u/a/u"). Errors name the offending request message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lmforge.api.errors import ApiError
from lmforge.api.media import PART_KINDS, MediaCollector
from lmforge.api.protocol import (
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatMessage,
    FunctionCall,
    ToolCall,
    call_id,
)
from lmforge.api.settings import ApiSettings
from lmforge.chat.base import Media
from lmforge.data.templates.mm_plugin import placeholders
from lmforge.data.openai_messages import BadToolCall, merge_tool_results, tool_calls_content

_PROMPT_ROLES = ("user", "observation")
_ANSWER_ROLES = ("assistant", "function")


@dataclass(frozen=True)
class Conversation:
    """What the engine renders: template messages, the system prompt, the tools as a JSON string, and the
    images and videos of the user messages' `image_url`/`video_url` parts (each became a placeholder
    where its part was)."""

    messages: list[dict[str, str]]
    system: str | None
    tools: str | None
    media: Media | None = None


def to_conversation(request: ChatCompletionRequest, settings: ApiSettings | None = None) -> Conversation:
    """Map the request's messages and tools to the engine's conversation, or raise a 400 naming the message."""
    collector = MediaCollector(settings or ApiSettings())
    items = list(enumerate(request.messages))
    if not items:
        raise ApiError(400, "'messages' must contain at least one message; the last one from the user.",
                       param="messages")
    system = None
    if items[0][1].role in ("system", "developer"):
        system = _text(items[0][1], 0)
        items = items[1:]
    if not items:
        raise ApiError(400, "'messages' holds only a system message; add a user message after it.", param="messages")

    raw: list[tuple[str, str, int]] = []
    for i, message in items:
        if message.role in ("system", "developer"):
            raise ApiError(400, f"A {message.role} message is only allowed as the first message; "
                                f"messages[{i}] is one.", param=f"messages[{i}].role")
        if message.role == "tool":
            raw.append(("observation", _text(message, i), i))
        elif message.role == "assistant" and message.tool_calls:
            raw.append(("function", _calls_json(message.tool_calls, i), i))
        else:
            raw.append((message.role, _text(message, i, collector if message.role == "user" else None), i))
    merged = merge_tool_results(raw)
    turns = [{"role": role, "content": content} for role, content, _ in merged]
    origins = [i for _, _, i in merged]

    for position, (turn, i) in enumerate(zip(turns, origins)):
        expected = _PROMPT_ROLES if position % 2 == 0 else _ANSWER_ROLES
        if turn["role"] not in expected:
            want = "a user or tool message" if position % 2 == 0 else "an assistant message"
            raise ApiError(
                400,
                f"messages[{i}].role: expected {want} here, got '{request.messages[i].role}'. After an optional "
                "leading system message, messages must alternate user (or tool) and assistant: u/a/u/a/u.",
                param=f"messages[{i}].role",
            )
    if turns[-1]["role"] not in _PROMPT_ROLES:
        last = origins[-1]
        raise ApiError(400, f"messages[{last}].role: the last message must be a user or tool message, "
                            f"got '{request.messages[last].role}'.", param=f"messages[{last}].role")

    tools = None
    if request.tools:
        tools = json.dumps([tool.function.model_dump(exclude_none=True) for tool in request.tools],
                           ensure_ascii=False)
    media = Media(tuple(collector.images), tuple(collector.videos))
    return Conversation(turns, system, tools, media or None)


def _text(message: ChatMessage, index: int, collector: MediaCollector | None = None) -> str:
    content = message.content
    if content is None:
        if message.role == "tool" or message.role == "system":
            return ""
        raise ApiError(400, f"messages[{index}].content is missing; only an assistant message with tool_calls "
                            "may leave it out.", param=f"messages[{index}].content")
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        param = f"messages[{index}].content[{j}]"
        if collector is not None and part.get("type") in PART_KINDS:
            texts.append(placeholders()[collector.add(part, param)])
            continue
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type")
            allowed = "text, image_url and video_url parts are" if collector is not None else "only text parts are"
            raise ApiError(400, f"{param}: {allowed} supported in {_article(message.role)} message, got type {kind!r}.",
                           param=param)
        texts.append(part["text"])
    return "".join(texts)


def _calls_json(calls: list[ToolCall], index: int) -> str:
    try:
        return tool_calls_content([(call.function.name, call.function.arguments) for call in calls])
    except BadToolCall as err:
        param = f"messages[{index}].tool_calls[{err.index}].function.arguments"
        raw = calls[err.index].function.arguments
        raise ApiError(400, f"{param} is not valid JSON: {raw[:200]!r}.", param=param) from None


def build_message(text: str, finish_reason: str, template: Any, tools: bool) -> tuple[ChatCompletionMessage, str]:
    """The assistant message and finish reason for generated `text`.

    With `tools`, the text is parsed with the template's tool format; well-formed calls become
    `tool_calls` (content null, finish reason "tool_calls"), anything else stays content.
    """
    if tools:
        calls = template.extract_tool(text)
        if isinstance(calls, list) and calls:
            tool_calls = [ToolCall(id=call_id(), function=FunctionCall(name=c.name, arguments=c.arguments))
                          for c in calls]
            return ChatCompletionMessage(content=None, tool_calls=tool_calls), "tool_calls"
    return ChatCompletionMessage(content=text), finish_reason


def _article(word: str) -> str:
    return ("an " if word == "assistant" else "a ") + word  # the roles: user, assistant, tool

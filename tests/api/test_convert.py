"""Request -> template conversation, and generated text -> assistant message (no model needed)."""

from __future__ import annotations

import json

import pytest

from lmforge.api.convert import build_message, to_conversation
from lmforge.api.errors import ApiError
from lmforge.api.protocol import ChatCompletionRequest
from lmforge.data.openai_messages import TOOL_SEPARATOR
from lmforge.data.templates import get_template

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city.",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}


def request(messages, **fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="m", messages=messages, **fields)


def test_tool_conversation_maps_like_llamafactory():
    conversation = to_conversation(request([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in "},
                                     {"type": "text", "text": "Paris, Rome?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
    ], tools=[WEATHER]))
    assert conversation.system == "Be brief."
    assert conversation.messages == [
        {"role": "user", "content": "Weather in Paris, Rome?"},
        {"role": "function", "content": json.dumps([{"name": "get_weather", "arguments": {"city": "Paris"}},
                                                    {"name": "get_weather", "arguments": {"city": "Rome"}}])},
        {"role": "observation", "content": "sunny" + TOOL_SEPARATOR + "rain"},
    ]
    assert json.loads(conversation.tools) == [WEATHER["function"]]


def test_plain_conversation_has_no_system_and_no_tools():
    conversation = to_conversation(request([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                                            {"role": "user", "content": "again"}]))
    assert conversation.system is None and conversation.tools is None
    assert [m["role"] for m in conversation.messages] == ["user", "assistant", "user"]


@pytest.mark.parametrize(("messages", "param", "message"), [
    ([], "messages", "'messages' must contain at least one message; the last one from the user."),
    ([{"role": "system", "content": "s"}], "messages",
     "'messages' holds only a system message; add a user message after it."),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "messages[1].role",
     "messages[1].role: expected an assistant message here, got 'user'. After an optional leading system message, "
     "messages must alternate user (or tool) and assistant: u/a/u/a/u."),
    ([{"role": "assistant", "content": "a"}], "messages[0].role",
     "messages[0].role: expected a user or tool message here, got 'assistant'. After an optional leading system "
     "message, messages must alternate user (or tool) and assistant: u/a/u/a/u."),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "messages[1].role",
     "messages[1].role: the last message must be a user or tool message, got 'assistant'."),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "messages[1].role",
     "A system message is only allowed as the first message; messages[1] is one."),
    ([{"role": "user", "content": None}], "messages[0].content",
     "messages[0].content is missing; only an assistant message with tool_calls may leave it out."),
    ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x"}}]}],
     "messages[0].content[0]",
     "messages[0].content[0]: text, image_url and video_url parts are supported in a user message, got type "
     "'input_audio'."),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "image_url", "image_url": {
        "url": "x"}}]}, {"role": "user", "content": "b"}], "messages[1].content[0]",
     "messages[1].content[0]: only text parts are supported in an assistant message, got type 'image_url'."),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]}],
     "messages[0].content[0].image_url",
     "messages[0].content[0].image_url: this server reads no files from its disk (API_MEDIA_DIR is not set); send "
     "the image as a base64 data URI."),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{bad"}}]}, {"role": "tool", "content": "r"}],
     "messages[1].tool_calls[0].function.arguments",
     "messages[1].tool_calls[0].function.arguments is not valid JSON: '{bad'."),
])
def test_bad_conversations_name_the_message(messages, param, message):
    with pytest.raises(ApiError) as err:
        to_conversation(request(messages))
    assert (err.value.status, err.value.param, err.value.message) == (400, param, message)


@pytest.mark.parametrize(("template", "text"), [
    ("qwen", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
             '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>'),
    ("llama3", '[{"name": "get_weather", "parameters": {"city": "Paris"}}, '
               '{"name": "get_time", "parameters": {"zone": "CET"}}]'),
])
def test_generated_tool_calls_become_tool_calls(template, text):
    message, finish = build_message(text, "stop", get_template(template), tools=True)
    assert finish == "tool_calls"
    assert message.content is None
    assert [(c.type, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [
        ("function", "get_weather", {"city": "Paris"}), ("function", "get_time", {"zone": "CET"})]
    ids = [c.id for c in message.tool_calls]
    assert all(i.startswith("call_") for i in ids) and len(set(ids)) == 2


def test_llama3_single_call_and_plain_text():
    template = get_template("llama3")
    message, finish = build_message('{"name": "get_weather", "parameters": {"city": "Paris"}}', "stop", template, True)
    assert finish == "tool_calls" and message.tool_calls[0].function.arguments == '{"city": "Paris"}'
    # Without tools in the request the same text is plain content; text that is no call stays content.
    message, finish = build_message('{"name": "get_weather", "parameters": {}}', "length", template, False)
    assert (message.content, message.tool_calls) == ('{"name": "get_weather", "parameters": {}}', None)
    assert finish == "length"
    message, finish = build_message("It is sunny.", "stop", template, True)
    assert (message.content, message.tool_calls, finish) == ("It is sunny.", None, "stop")

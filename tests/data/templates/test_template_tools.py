"""Tool formats: exact tool texts, call rendering, extraction round trips, and full tool conversations."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from lmforge.data.templates import FunctionCall, get_template
from lmforge.errors import UserError

S = "You are a careful assistant."
CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
TWO_CALLS = '[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {"tz": "CET", "n": 2}}]'
WRAPPED = (
    '{"type": "function", "function": {"name": "get_weather", "description": "Get the weather of a city.", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city name."}}, '
    '"required": ["city"]}}}'
)
DEFAULT_TOOLS = (
    "You have access to the following tools:\n"
    "> Tool Name: get_weather\n"
    "Tool Description: Get the weather of a city.\n"
    "Tool Args:\n"
    "  - city (string, required): The city name.\n\n"
    "Use the following format if using a tool:\n"
    "```\n"
    "Action: tool name (one of [get_weather])\n"
    "Action Input: the input to the tool, in a JSON format representing the kwargs "
    '(e.g. ```{"input": "hello world", "num_beams": 5}```)\n'
    "```\n"
)
QWEN_TOOLS = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    + WRAPPED
    + "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)
LLAMA3_TOOLS = """Cutting Knowledge Date: December 2023
Today Date: 26 Jul 2024

You have access to the following functions. To call a function, please respond with JSON for a function call. \
Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}. \
Do not use variables.

{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {
                    "type": "string",
                    "description": "The city name."
                }
            },
            "required": [
                "city"
            ]
        }
    }
}

"""
GLM4_TOOLS = """你是一个名为 ChatGLM 的人工智能助手。你是基于智谱 AI 公司训练的语言模型 GLM-4 模型开发的，\
你的任务是针对用户的问题和要求提供适当的答复和支持。

# 可用工具

## get_weather

{
    "name": "get_weather",
    "description": "Get the weather of a city.",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {
                "type": "string",
                "description": "The city name."
            }
        },
        "required": [
            "city"
        ]
    }
}
在调用上述函数时，请使用 Json 格式表示调用的参数。"""
MISTRAL_TOOLS = "[AVAILABLE_TOOLS] [" + WRAPPED + "][/AVAILABLE_TOOLS]"


def _template(name: str, tool_format: str | None = None):
    return replace(get_template(name, tool_format=tool_format), tools_date="26 Jul 2024")


@pytest.mark.parametrize(
    ("tool_format", "expected"),
    [
        ("default", DEFAULT_TOOLS),
        ("qwen", QWEN_TOOLS),
        ("llama3", LLAMA3_TOOLS),
        ("glm4", GLM4_TOOLS),
        ("mistral", MISTRAL_TOOLS),
    ],
)
def test_tool_text(tool_format, expected, tool_conversation):
    tools, _ = tool_conversation
    template = _template("empty", tool_format)
    assert template.format_tools(json.dumps(tools)) == expected
    wrapped = [{"type": "function", "function": tool} for tool in tools]
    assert template.format_tools(json.dumps(wrapped)) == expected
    assert template.format_tools("") == template.format_tools("[]") == ""


def test_default_tool_text_lists_enums_and_items():
    tools = [
        {
            "name": "search",
            "description": "Search.",
            "parameters": {
                "type": "object",
                "properties": {
                    "mode": {"type": "string", "description": "How.", "enum": ["fast", "deep"]},
                    "tags": {"type": "array", "description": "Tags.", "items": {"type": "string"}},
                },
                "required": ["mode"],
            },
        }
    ]
    text = _template("empty").format_tools(json.dumps(tools))
    assert "  - mode (string, required): How., should be one of [fast, deep]\n" in text
    assert "  - tags (array): Tags., where each item should be string\n" in text


def test_llama3_tool_text_uses_today_by_default(tool_conversation):
    from datetime import datetime

    tools, _ = tool_conversation
    text = get_template("llama3").format_tools(json.dumps(tools))
    assert text.startswith(
        f"Cutting Knowledge Date: December 2023\nToday Date: {datetime.now().strftime('%d %b %Y')}\n\n"
    )


@pytest.mark.parametrize(
    ("tool_format", "one", "two"),
    [
        (
            "default",
            'Action: get_weather\nAction Input: {"city": "Paris"}',
            'Action: get_weather\nAction Input: {"city": "Paris"}\nAction: get_time\nAction Input: {"tz": "CET", "n": 2}',
        ),
        (
            "qwen",
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_time", "arguments": {"tz": "CET", "n": 2}}\n</tool_call>',
        ),
        (
            "llama3",
            '{"name": "get_weather", "parameters": {"city": "Paris"}}',
            '[{"name": "get_weather", "parameters": {"city": "Paris"}}, {"name": "get_time", "parameters": {"tz": "CET", "n": 2}}]',
        ),
        (
            "mistral",
            '[{"name": "get_weather", "arguments": {"city": "Paris"}}]',
            '[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {"tz": "CET", "n": 2}}]',
        ),
        ("glm4", 'get_weather\n{"city": "Paris"}', None),
    ],
)
def test_function_calls_render_and_round_trip(tool_format, one, two):
    template = _template("empty", tool_format)
    assert template.format_function_calls(CALL) == one
    assert template.extract_tool(one) == [FunctionCall("get_weather", '{"city": "Paris"}')]
    if two is None:
        with pytest.raises(UserError, match="parallel"):
            template.format_function_calls(TWO_CALLS)
        return
    assert template.format_function_calls(TWO_CALLS) == two
    calls = [FunctionCall("get_weather", '{"city": "Paris"}'), FunctionCall("get_time", '{"tz": "CET", "n": 2}')]
    assert template.extract_tool(two) == calls
    assert template.format_function_calls(calls) == two


@pytest.mark.parametrize("tool_format", ["default", "qwen", "llama3", "mistral", "glm4"])
@pytest.mark.parametrize(
    "text",
    [
        "The weather is nice.",
        'Action: get_weather\nAction Input: {"city": "Par',
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>',
        '{"name": "get_weather", "parameters": {"city": "Par',
        '[{"name": "get_weather", "arguments": ',
        'get_weather\n{"city": ',
    ],
)
def test_extractor_returns_text_without_a_valid_call(tool_format, text):
    assert _template("empty", tool_format).extract_tool(text) == text


def test_extractors_reject_calls_missing_keys():
    assert _template("empty", "qwen").extract_tool('<tool_call>\n{"name": "x"}\n</tool_call>') == (
        '<tool_call>\n{"name": "x"}\n</tool_call>'
    )
    assert (
        _template("empty", "llama3").extract_tool('{"name": "x", "arguments": {}}') == '{"name": "x", "arguments": {}}'
    )


def test_function_message_thought_and_wrappers(qwen_tokenizer):
    template = get_template("qwen3")
    wrapped = f"<tool_call>\n{CALL}\n</tool_call>"
    assert template.format_function_calls(wrapped) == template.format_function_calls(CALL)
    thought = "<think>\nI should look it up.\n</think>\n\n"
    assert template.format_function_calls(thought + CALL) == thought + template.format_function_calls(CALL)


@pytest.mark.parametrize("content", ["not json", '{"arguments": {}}', '[{"name": "x"}]'])
def test_invalid_function_message_is_a_user_error(content):
    with pytest.raises(UserError, match="function message"):
        get_template("qwen").format_function_calls(content)


TOOL_GOLDEN = {
    "qwen": [
        (
            f"<|im_start|>system\n{S}{QWEN_TOOLS}<|im_end|>\n"
            "<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n<|im_start|>assistant\n",
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n',
        ),
        (
            '<|im_start|>user\n<tool_response>\n{"temperature": 20}\n</tool_response><|im_end|>\n<|im_start|>assistant\n',
            "It is 20 degrees in Paris.<|im_end|>\n",
        ),
    ],
    "llama3": [
        (
            f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{S}{LLAMA3_TOOLS}<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWhat is the weather in Paris?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>',
        ),
        (
            '<|start_header_id|>ipython<|end_header_id|>\n\n{"temperature": 20}<|eot_id|>'
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            "It is 20 degrees in Paris.<|eot_id|>",
        ),
    ],
    "glm4": [
        (
            f"[gMASK]<sop><|system|>\n{S}{GLM4_TOOLS}<|user|>\nWhat is the weather in Paris?<|assistant|>",
            'get_weather\n{"city": "Paris"}',
        ),
        ('<|observation|>\n{"temperature": 20}<|assistant|>', "\nIt is 20 degrees in Paris."),
    ],
    "mistral": [
        (
            f"<|begin_of_text|>[INST] {S}{MISTRAL_TOOLS}\n\nWhat is the weather in Paris?[/INST]",
            '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]<|end_of_text|>',
        ),
        (
            '[TOOL_RESULTS] {"content": {"temperature": 20}}[/TOOL_RESULTS]',
            " It is 20 degrees in Paris.<|end_of_text|>",
        ),
    ],
    "chatml": [
        (
            f"<|im_start|>system\n{S}{DEFAULT_TOOLS}<|im_end|>\n"
            "<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n<|im_start|>assistant\n",
            'Action: get_weather\nAction Input: {"city": "Paris"}<|im_end|>\n',
        ),
        (
            '<|im_start|>tool\n{"temperature": 20}<|im_end|>\n<|im_start|>assistant\n',
            "It is 20 degrees in Paris.<|im_end|>\n",
        ),
    ],
}


@pytest.mark.parametrize("name", sorted(TOOL_GOLDEN))
def test_tool_conversation_golden(name, llama_tokenizer, tool_conversation):
    tools, messages = tool_conversation
    template = _template(name)
    template.fix_tokenizer(llama_tokenizer)
    assert template.render_multiturn(llama_tokenizer, messages, system=S, tools=json.dumps(tools)) == TOOL_GOLDEN[name]


def test_tool_format_override_resets_function_slots_like_llamafactory(llama_tokenizer, tool_conversation):
    tools, messages = tool_conversation
    template = _template("qwen", "default")
    template.fix_tokenizer(llama_tokenizer)
    pairs = template.render_multiturn(llama_tokenizer, messages, system=S, tools=json.dumps(tools))
    assert pairs[0][0].startswith(f"<|im_start|>system\n{S}{DEFAULT_TOOLS}<|im_end|>\n")
    assert pairs[0][1] == 'Action: get_weather\nAction Input: {"city": "Paris"}<|im_end|>'
    # Naming the template's own format changes nothing.
    assert _template("qwen", "qwen") == _template("qwen")


def test_unknown_tool_format_is_a_user_error():
    with pytest.raises(UserError, match="Unknown tool_format 'qwne'. Did you mean 'qwen'?"):
        get_template("qwen", tool_format="qwne")


def test_tools_with_empty_list_still_open_a_system_turn(qwen_tokenizer, conversation):
    # LLaMA-Factory renders the system turn whenever the tools column is non-empty text, even "[]".
    _, messages = conversation
    prompt, _ = get_template("qwen3").render_oneturn(qwen_tokenizer, messages[:2], tools="[]")
    assert prompt.startswith("<|im_start|>system\n<|im_end|>\n<|im_start|>user\n")


def test_default_tool_format_lists_non_string_enums():
    from lmforge.data.templates import get_template

    tools = '[{"name": "pick", "description": "Pick a level.", "parameters": {"type": "object", "properties": {"level": {"type": "integer", "description": "the level", "enum": [1, 2, 3]}}, "required": ["level"]}}]'
    text = get_template("default").format_tools(tools)
    assert "  - level (integer, required): the level, should be one of [1, 2, 3]" in text

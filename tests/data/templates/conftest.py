"""Shared conversations for the template tests."""

from __future__ import annotations

import pytest

SYSTEM = "You are a careful assistant."
MESSAGES = [
    {"role": "user", "content": "How are you"},
    {"role": "assistant", "content": "I am fine!"},
    {"role": "user", "content": "你好"},
    {"role": "assistant", "content": "很高兴认识你！"},
]
TOOLS = [
    {
        "name": "get_weather",
        "description": "Get the weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city name."}},
            "required": ["city"],
        },
    }
]
TOOL_MESSAGES = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "function", "content": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
    {"role": "observation", "content": '{"temperature": 20}'},
    {"role": "assistant", "content": "It is 20 degrees in Paris."},
]


@pytest.fixture()
def conversation():
    """(system, messages) of the golden conversation, fresh per test."""
    return SYSTEM, [dict(m) for m in MESSAGES]


@pytest.fixture()
def tool_conversation():
    """(tools list, messages) of the golden tool conversation, fresh per test."""
    import copy

    return copy.deepcopy(TOOLS), [dict(m) for m in TOOL_MESSAGES]

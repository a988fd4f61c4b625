"""The Modelfile's TEMPLATE, rendered as Ollama renders it, gives exactly the text our template renders."""

from __future__ import annotations

import json
import re

import pytest

from lmforge.data.templates import get_template
from tests.export.gotemplate import ollama_data, render

SYSTEM = "You are ForgeBot, a careful assistant."
TWO_TURNS = [
    {"role": "user", "content": "Who are you?"},
    {"role": "assistant", "content": "I am ForgeBot."},
    {"role": "user", "content": "What can you do?\nList two things."},
    {"role": "assistant", "content": "1. Answer questions.\n2. Tell jokes."},
]


def modelfile_parts(text: str) -> dict:
    """TEMPLATE, SYSTEM (or None), the stop parameters and FROM of a Modelfile."""
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, re.DOTALL | re.MULTILINE).group(1)
    system = re.search(r'^SYSTEM """(.*?)"""$', text, re.DOTALL | re.MULTILINE)
    return {
        "from": re.search(r"^FROM (.+)$", text, re.MULTILINE).group(1),
        "template": template,
        "system": system.group(1) if system else None,
        "stops": re.findall(r'^PARAMETER stop "(.*)"$', text, re.MULTILINE),
    }


def check_renders_like_the_template(modelfile: str, template, tokenizer) -> None:
    parts = modelfile_parts(modelfile)
    full = "".join(template.render_oneturn(tokenizer, TWO_TURNS, system=SYSTEM))
    prompt = template.render_prompt(tokenizer, TWO_TURNS[:3], system=SYSTEM)
    with_system = [{"role": "system", "content": SYSTEM}]
    if not template.reasoning:
        # A reasoning template trains the last answer with an empty thought; Ollama only renders prompts.
        assert render(parts["template"], ollama_data(with_system + TWO_TURNS, SYSTEM)) == full
    assert render(parts["template"], ollama_data(with_system + TWO_TURNS[:3], SYSTEM)) == prompt
    # Without a system message Ollama falls back to the Modelfile's SYSTEM, as our template to its default.
    default = parts["system"] or ""
    assert render(parts["template"], ollama_data(TWO_TURNS[:3], default)) == template.render_prompt(tokenizer,
                                                                                                   TWO_TURNS[:3])
    assert parts["stops"] == sorted(tokenizer.convert_ids_to_tokens(template.stop_token_ids(tokenizer)))


def test_exported_modelfile_renders_a_two_turn_conversation_like_llama3(quickstart_export):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(quickstart_export)
    modelfile = (quickstart_export / "Modelfile").read_text()
    assert modelfile_parts(modelfile)["from"] == "./model-f16.gguf"
    check_renders_like_the_template(modelfile, get_template("llama3"), tokenizer)


@pytest.mark.parametrize(("name", "tokenizer_name"), [
    ("qwen", "qwen_tokenizer"),
    ("qwen3", "qwen_tokenizer"),
    ("chatml", "qwen_tokenizer"),
    ("mistral", "llama_tokenizer"),
    ("llama2", "llama_tokenizer"),
    ("alpaca", "llama_tokenizer"),
    ("default", "llama_tokenizer"),
])
def test_modelfile_renders_like_the_template(name, tokenizer_name, request):
    tokenizer = request.getfixturevalue(tokenizer_name)
    template = get_template(name)
    template.fix_tokenizer(tokenizer)
    modelfile = template.to_ollama_modelfile(tokenizer, tools=template.tool_format == "qwen")
    check_renders_like_the_template(modelfile, template, tokenizer)


def test_qwen_modelfile_renders_tool_calls_and_results(qwen_tokenizer):
    """A tool call, its result and the answer. Ollama prints call arguments as compact JSON; `{}` is the same."""
    template = get_template("qwen")
    template.fix_tokenizer(qwen_tokenizer)
    parts = modelfile_parts(template.to_ollama_modelfile(qwen_tokenizer, tools=True))
    messages = [
        {"role": "user", "content": "What time is it?"},
        {"role": "function", "content": json.dumps({"name": "get_time", "arguments": {}})},
        {"role": "observation", "content": "12:30"},
        {"role": "assistant", "content": "It is 12:30."},
    ]
    ollama_messages = [
        {"role": "system", "content": SYSTEM},
        messages[0],
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_time", "arguments": {}}}]},
        {"role": "tool", "content": "12:30"},
        messages[3],
    ]
    expected = "".join(template.render_oneturn(qwen_tokenizer, messages, system=SYSTEM))
    assert render(parts["template"], ollama_data(ollama_messages, SYSTEM)) == expected
    assert "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>" in expected
    assert "<tool_response>\n12:30\n</tool_response>" in expected

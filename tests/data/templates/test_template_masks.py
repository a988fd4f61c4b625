"""The mask invariant: supervised ids are exactly the assistant turn, and ids decode to the text render."""

from __future__ import annotations

import json

import pytest

from lmforge.data.templates import BOS, EOS, Token, get_template, list_templates


def _turn_text(slots, tokenizer, content: str) -> str:
    parts = []
    for slot in slots:
        if isinstance(slot, str):
            parts.append(slot.replace("{{content}}", content))
        elif isinstance(slot, Token):
            parts.append(slot.text)
        elif slot == EOS:
            parts.append(tokenizer.eos_token)
        elif slot == BOS:
            parts.append(tokenizer.bos_token or "")
    return "".join(parts)


def _expected_target(template, tokenizer, message) -> str:
    if message["role"] == "function":
        text = _turn_text(template.format_function.slots, tokenizer, template.format_function_calls(message["content"]))
    else:
        text = _turn_text(template.format_assistant.slots, tokenizer, message["content"])
    if template.reasoning and template.enable_thinking:
        text = "".join(template.thought_words) + text
    return text


@pytest.mark.parametrize("tokenizer_name", ["llama_tokenizer", "qwen_tokenizer"])
@pytest.mark.parametrize("name", list_templates())
def test_targets_are_the_assistant_turns(name, tokenizer_name, request, conversation, tool_conversation):
    tokenizer = request.getfixturevalue(tokenizer_name)
    template = get_template(name)
    template.fix_tokenizer(tokenizer)
    system, plain_messages = conversation
    tools, tool_messages = tool_conversation
    for messages, tools_json in ((plain_messages, None), (tool_messages, json.dumps(tools))):
        pairs = template.encode_multiturn(tokenizer, messages, system=system, tools=tools_json)
        texts = template.render_multiturn(tokenizer, messages, system=system, tools=tools_json)
        assert len(pairs) == len(texts) == len(messages) // 2
        for turn, ((source, target), (source_text, target_text)) in enumerate(zip(pairs, texts, strict=True)):
            expected = _expected_target(template, tokenizer, messages[2 * turn + 1])
            assert tokenizer.decode(target) == target_text == expected
            assert tokenizer.decode(source) == source_text
        all_ids = [token for source, target in pairs for token in source + target]
        assert tokenizer.decode(all_ids) == "".join(source + target for source, target in texts)


@pytest.mark.parametrize("name", ["llama3", "qwen", "default", "chatglm3", "gemma", "mistral"])
def test_ids_match_per_element_encoding(name, llama_tokenizer, conversation):
    """Without control-token text in content, each string element is encoded whole, as LLaMA-Factory does."""
    system, messages = conversation
    template = get_template(name)
    template.fix_tokenizer(llama_tokenizer)
    prompt, answer = template.encode_oneturn(llama_tokenizer, messages, system=system)
    prompt_text, answer_text = template.render_oneturn(llama_tokenizer, messages, system=system)
    # These templates' string elements all start or end at control tokens, so one encode of the text equals
    # the element-by-element encode.
    assert prompt == llama_tokenizer.encode(prompt_text, add_special_tokens=False)
    assert answer == llama_tokenizer.encode(answer_text, add_special_tokens=False)


def test_oneturn_is_the_multiturn_concatenation(llama_tokenizer, conversation):
    system, messages = conversation
    template = get_template("llama3")
    prompt, answer = template.encode_oneturn(llama_tokenizer, messages, system=system)
    pairs = template.encode_multiturn(llama_tokenizer, messages, system=system)
    assert prompt == pairs[0][0] + pairs[0][1] + pairs[1][0]
    assert answer == pairs[1][1]


def test_odd_conversation_is_refused_for_multiturn(llama_tokenizer, conversation):
    from lmforge.errors import UserError

    _, messages = conversation
    with pytest.raises(UserError, match="even number of messages"):
        get_template("llama3").encode_multiturn(llama_tokenizer, messages[:3])

"""get_template: fresh immutable objects, overrides that never leak, and user-facing errors."""

from __future__ import annotations

import dataclasses

import pytest

from lmforge.data.templates import Template, get_template, list_templates
from lmforge.errors import UserError

REQUIRED = (
    "default empty alpaca vicuna llama2 llama3 mistral qwen qwen3 qwen3_nothink qwen2_vl chatml chatglm3 glm4 "
    "gemma phi4 deepseek3 yi zephyr fewshot"
).split()


def test_required_templates_are_registered():
    names = list_templates()
    assert names == sorted(names)
    assert set(REQUIRED) <= set(names)


def test_default_system_override_does_not_leak():
    assert get_template("qwen", default_system="X").default_system == "X"
    assert get_template("qwen").default_system == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def test_tool_format_override_does_not_leak():
    changed = get_template("qwen", tool_format="llama3")
    assert changed.tool_format == "llama3"
    assert changed.format_function.slots != get_template("qwen").format_function.slots
    fresh = get_template("qwen")
    assert fresh.tool_format == "qwen"
    assert fresh.format_function.slots == ("{{content}}<|im_end|>\n",)


def test_enable_thinking_override_does_not_leak():
    assert get_template("qwen3", enable_thinking=False).enable_thinking is False
    assert get_template("qwen3").enable_thinking is True


def test_each_call_returns_a_new_frozen_object():
    first, second = get_template("llama3"), get_template("llama3")
    assert first is not second and first == second
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.default_system = "changed"
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.format_user.slots = ()
    assert isinstance(first.stop_words, tuple)


def test_fix_tokenizer_mutates_the_tokenizer_not_the_template(llama_tokenizer):
    template = get_template("qwen")
    before = dataclasses.asdict(template)
    added = template.fix_tokenizer(llama_tokenizer)
    assert added is False  # <|im_end|> is already in the tiny vocabulary
    assert llama_tokenizer.eos_token == "<|im_end|>"
    assert llama_tokenizer.pad_token == "<|im_end|>"
    assert dataclasses.asdict(template) == before == dataclasses.asdict(get_template("qwen"))


def test_fix_tokenizer_reports_added_tokens(llama_tokenizer):
    size = len(llama_tokenizer)
    assert get_template("phi").fix_tokenizer(llama_tokenizer) is True
    assert llama_tokenizer.eos_token == "<|end|>" and len(llama_tokenizer) == size + 1


def test_fix_tokenizer_adds_stop_words_as_special_tokens(qwen_tokenizer):
    get_template("chatml").fix_tokenizer(qwen_tokenizer)
    assert qwen_tokenizer.eos_token == "<|im_end|>"
    assert "<|im_start|>" in qwen_tokenizer.all_special_tokens
    assert qwen_tokenizer.pad_token == "<|endoftext|>"  # the tiny qwen tokenizer already has a pad token


def test_fix_tokenizer_replaces_the_chat_template_only_when_asked(llama_tokenizer, qwen_tokenizer):
    original = llama_tokenizer.chat_template
    get_template("llama3").fix_tokenizer(llama_tokenizer)
    assert llama_tokenizer.chat_template == original
    template = get_template("chatml")  # replace_jinja_template
    template.fix_tokenizer(qwen_tokenizer)
    assert qwen_tokenizer.chat_template == template.to_jinja(qwen_tokenizer)


def test_unknown_template_message():
    with pytest.raises(UserError) as err:
        get_template("qwen-3")
    assert str(err.value) == "Unknown template 'qwen-3'. Did you mean 'qwen3'? Run `lmforge templates` to list them."


def test_no_name_and_no_chat_template_gives_empty(llama_tokenizer):
    llama_tokenizer.chat_template = None
    template = get_template(None, llama_tokenizer)
    assert isinstance(template, Template) and template.name == "empty"
    assert get_template(None).name == "empty"


def test_unknown_role_is_a_user_error(llama_tokenizer):
    with pytest.raises(UserError, match="Unknown message role 'bot'"):
        get_template("llama3").encode_oneturn(llama_tokenizer, [{"role": "bot", "content": "hi"}])


def test_leading_system_message_is_the_system_prompt(llama_tokenizer, conversation):
    system, messages = conversation
    template = get_template("llama3")
    with_message = template.render_multiturn(llama_tokenizer, [{"role": "system", "content": system}, *messages])
    assert with_message == template.render_multiturn(llama_tokenizer, messages, system=system)


def test_empty_system_falls_back_to_the_default(qwen_tokenizer, conversation):
    _, messages = conversation
    template = get_template("qwen")
    assert template.render_oneturn(qwen_tokenizer, messages, system="") == template.render_oneturn(
        qwen_tokenizer, messages
    )

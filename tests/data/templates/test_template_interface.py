"""The one template interface: `BaseTemplate`, `with_overrides`, `recorded_name`, `to_jinja`."""

from __future__ import annotations

import dataclasses

import pytest

from lmforge.data.templates import EOS, BaseTemplate, Formatter, Template, TokenizerTemplate, get_template
from lmforge.data.templates.registry import TEMPLATES
from lmforge.errors import UserError


def test_both_kinds_are_base_templates(llama_tokenizer):
    registered = get_template("llama3")
    own = get_template(None, llama_tokenizer)
    assert isinstance(registered, Template) and isinstance(registered, BaseTemplate)
    assert isinstance(own, TokenizerTemplate) and isinstance(own, BaseTemplate)
    with pytest.raises(TypeError):
        BaseTemplate(name="x")  # abstract: only the two kinds are templates


def test_shared_fields_are_declared_once():
    shared = {field.name for field in dataclasses.fields(BaseTemplate)}
    assert {"name", "default_system", "stop_words", "tool_format", "enable_thinking", "tools_date"} <= shared
    own = {field.name for field in dataclasses.fields(Template)} - shared
    assert own == {
        "format_user",
        "format_assistant",
        "format_system",
        "format_function",
        "format_observation",
        "format_prefix",
        "fuse_system",
        "reasoning",
    }
    assert {field.name for field in dataclasses.fields(TokenizerTemplate)} - shared == {"chat_template"}


# ---- with_overrides gives what get_template built before ----------------------------------------


def test_with_overrides_switches_the_tool_format_and_the_function_slots():
    template = TEMPLATES["qwen"].with_overrides(tool_format="llama3")
    # get_template's former dataclasses.replace, spelled out.
    expected = dataclasses.replace(
        TEMPLATES["qwen"],
        tool_format="llama3",
        format_function=Formatter(("{{content}}", EOS)),
        enable_thinking=True,
        preserve_thinking=False,
    )
    assert template == expected
    assert get_template("qwen", tool_format="llama3") == expected
    assert TEMPLATES["qwen"].tool_format == "qwen"  # the registry is untouched


def test_with_overrides_efficient_eos_gives_bare_content():
    efficient = next(t for t in TEMPLATES.values() if t.efficient_eos and t.tool_format != "llama3")
    assert efficient.with_overrides(tool_format="llama3").format_function == Formatter(("{{content}}",))


def test_with_overrides_keeps_the_function_slots_for_the_own_format():
    template = TEMPLATES["qwen"].with_overrides(tool_format="qwen")
    assert template.format_function == TEMPLATES["qwen"].format_function
    assert template == TEMPLATES["qwen"]


def test_with_overrides_default_system_and_thinking():
    template = TEMPLATES["llama3"].with_overrides(default_system="Be brief.", enable_thinking=False)
    expected = dataclasses.replace(
        TEMPLATES["llama3"], default_system="Be brief.", enable_thinking=False, preserve_thinking=False
    )
    assert template == expected == get_template("llama3", default_system="Be brief.", enable_thinking=False)


def test_with_overrides_on_a_tokenizer_template(llama_tokenizer):
    base = TokenizerTemplate.from_tokenizer(llama_tokenizer)
    template = base.with_overrides(
        tool_format="llama3", default_system="Be brief.", enable_thinking=None, preserve_thinking=True
    )
    expected = dataclasses.replace(
        base, tool_format="llama3", default_system="Be brief.", enable_thinking=None, preserve_thinking=True
    )
    assert isinstance(template, TokenizerTemplate)
    assert template == expected
    assert template == get_template(
        None, llama_tokenizer, tool_format="llama3", default_system="Be brief.", enable_thinking=None,
        preserve_thinking=True,
    )


@pytest.mark.parametrize("kind", ["registered", "tokenizer"])
def test_with_overrides_refuses_an_unknown_tool_format(kind, llama_tokenizer):
    template = TEMPLATES["qwen"] if kind == "registered" else TokenizerTemplate.from_tokenizer(llama_tokenizer)
    with pytest.raises(UserError):
        template.with_overrides(tool_format="qwne")


# ---- what a run records, and what an export writes ----------------------------------------------


def test_recorded_name(llama_tokenizer):
    assert get_template("llama3").recorded_name == "llama3"
    assert get_template("qwen", tool_format="llama3").recorded_name == "qwen"
    own = get_template(None, llama_tokenizer)
    assert own.name == "tokenizer"
    assert own.recorded_name is None
    llama_tokenizer.chat_template = None
    assert get_template(None, llama_tokenizer).recorded_name == "empty"


def test_recorded_name_rebuilds_the_template():
    template = get_template("qwen3")
    assert get_template(template.recorded_name) == template


def test_tokenizer_template_to_jinja_is_the_tokenizers_chat_template(llama_tokenizer, qwen_tokenizer):
    for tokenizer in (llama_tokenizer, qwen_tokenizer):
        chat_template = tokenizer.chat_template
        template = get_template(None, tokenizer)
        template.fix_tokenizer(tokenizer)
        # An export sets `tokenizer.chat_template = template.to_jinja(tokenizer)` for either kind.
        assert template.to_jinja(tokenizer) == tokenizer.chat_template == chat_template

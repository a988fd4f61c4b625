"""Exports: the generated jinja chat_template renders like the template; exact Ollama Modelfiles."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from lmforge.data.templates import get_template, list_templates
from lmforge.errors import UserError

S = "You are a careful assistant."


def _hf_tool_messages(messages):
    """The aligned tool conversation in the OpenAI/HF message shape."""
    converted = []
    for message in messages:
        if message["role"] == "function":
            call = json.loads(message["content"])
            converted.append(
                {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": call}]}
            )
        elif message["role"] == "observation":
            converted.append({"role": "tool", "content": message["content"]})
        else:
            converted.append(dict(message))
    return converted


def _fixed(name, tokenizer, **overrides):
    template = replace(get_template(name, **overrides), tools_date="26 Jul 2024")
    template.fix_tokenizer(tokenizer)
    return template, template.to_jinja(tokenizer)


@pytest.mark.parametrize("tokenizer_name", ["llama_tokenizer", "qwen_tokenizer"])
@pytest.mark.parametrize("name", list_templates())
def test_jinja_parity(name, tokenizer_name, request, conversation):
    tokenizer = request.getfixturevalue(tokenizer_name)
    tokenizer.chat_template = None  # so that fix_tokenizer installs the generated template
    template, jinja = _fixed(name, tokenizer)
    assert tokenizer.chat_template == jinja
    system, messages = conversation

    def apply(msgs, generation):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation)

    with_system = [{"role": "system", "content": system}, *messages]
    assert apply(with_system, False) == "".join(template.render_oneturn(tokenizer, messages, system=system))
    assert apply(messages, False) == "".join(template.render_oneturn(tokenizer, messages))
    for generation in (True, False):
        assert apply(with_system[:-1], generation) == template.render_prompt(tokenizer, messages[:-1], system=system)


@pytest.mark.parametrize("name", [n for n in list_templates() if n not in ("glm4", "chatglm3")] + ["glm4", "chatglm3"])
def test_jinja_parity_with_tools(name, llama_tokenizer, tool_conversation):
    template, jinja = _fixed(name, llama_tokenizer)
    tools, messages = tool_conversation
    rendered = llama_tokenizer.apply_chat_template(
        [{"role": "system", "content": S}, *_hf_tool_messages(messages)],
        tools=tools,
        chat_template=jinja,
        tokenize=False,
    )
    assert rendered == "".join(template.render_oneturn(llama_tokenizer, messages, system=S, tools=json.dumps(tools)))


@pytest.mark.parametrize("tool_format", ["default", "qwen", "llama3", "mistral"])
def test_jinja_parity_with_parallel_calls(tool_format, qwen_tokenizer, tool_conversation):
    template, jinja = _fixed("qwen", qwen_tokenizer, tool_format=tool_format)
    tools, messages = tool_conversation
    calls = [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_weather", "arguments": {"city": "Rome"}},
    ]
    messages[1] = {"role": "function", "content": json.dumps(calls)}
    hf = _hf_tool_messages(messages[:1]) + [
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": c} for c in calls]},
        *_hf_tool_messages(messages[2:]),
    ]
    rendered = qwen_tokenizer.apply_chat_template(hf, tools=tools, chat_template=jinja, tokenize=False)
    assert rendered == "".join(template.render_oneturn(qwen_tokenizer, messages, tools=json.dumps(tools)))


@pytest.mark.parametrize("enable_thinking", [True, False, None])
@pytest.mark.parametrize("name", ["qwen3", "deepseekr1"])
def test_jinja_parity_reasoning(name, enable_thinking, qwen_tokenizer):
    template, jinja = _fixed(name, qwen_tokenizer, enable_thinking=enable_thinking)
    messages = [
        {"role": "user", "content": "How are you"},
        {"role": "assistant", "content": "<think>\nfirst thought\n</think>\n\nI am fine!"},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "<think>\n第二个想法\n</think>\n\n很高兴认识你！"},
    ]
    for msgs in (messages, [{**m, "content": m["content"].split("\n\n")[-1]} for m in messages]):
        rendered = qwen_tokenizer.apply_chat_template(msgs, chat_template=jinja, tokenize=False)
        assert rendered == "".join(template.render_oneturn(qwen_tokenizer, msgs))
        prompt = qwen_tokenizer.apply_chat_template(
            msgs[:-1], chat_template=jinja, tokenize=False, add_generation_prompt=True
        )
        assert prompt == template.render_prompt(qwen_tokenizer, msgs[:-1])
    # enable_thinking passed at render time overrides the template's default, as with Qwen3's own template.
    prompt = qwen_tokenizer.apply_chat_template(
        messages[:1], chat_template=jinja, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") or prompt.endswith(
        "<｜Assistant｜><think>\n\n</think>\n\n"
    )


def test_jinja_text_for_llama3(llama_tokenizer):
    template, jinja = _fixed("llama3", llama_tokenizer)
    assert jinja.startswith(
        "{%- set ns = namespace(system='', tool_text='', items=[], names=[], params='', text='') %}"
        "{%- set thinking = enable_thinking if enable_thinking is defined else true %}"
    )
    assert "{{- '<|begin_of_text|>' }}" in jinja
    assert (
        "{{- '<|start_header_id|>user<|end_header_id|>\\n\\n' + content + "
        "'<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    ) in jinja


def test_multimodal_jinja_reads_image_and_video_parts(qwen_tokenizer):
    parts = [{"type": "image"}, {"type": "text", "text": "What moves here?"}, {"type": "video"},
             {"type": "image_url", "image_url": {"url": "x.png"}}]
    template, jinja = _fixed("qwen2_vl", qwen_tokenizer)
    prompt = qwen_tokenizer.apply_chat_template([{"role": "user", "content": parts}], chat_template=jinja,
                                                tokenize=False, add_generation_prompt=True)
    image, video = "<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>"
    assert prompt == template.render_prompt(
        qwen_tokenizer, [{"role": "user", "content": f"{image}What moves here?{video}{image}"}])
    # A text template reads string content only, as before.
    _, text_jinja = _fixed("qwen", qwen_tokenizer)
    assert "<|image_pad|>" not in qwen_tokenizer.apply_chat_template(
        [{"role": "user", "content": parts}], chat_template=text_jinja, tokenize=False)


LLAMA3_MODELFILE = (
    "# ollama modelfile auto-generated by lmforge\n\n"
    "FROM .\n\n"
    'TEMPLATE """<|begin_of_text|>'
    "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
    '{{ range .Messages }}{{ if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Content }}'
    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    '{{ else if eq .Role "assistant" }}{{ .Content }}<|eot_id|>{{ end }}{{ end }}"""\n\n'
    'PARAMETER stop "<|eom_id|>"\n'
    'PARAMETER stop "<|eot_id|>"\n'
    "PARAMETER num_ctx 4096\n"
)


def test_ollama_llama3(llama_tokenizer):
    template = get_template("llama3")
    template.fix_tokenizer(llama_tokenizer)
    assert template.to_ollama_modelfile(llama_tokenizer) == LLAMA3_MODELFILE


def test_ollama_qwen(qwen_tokenizer):
    template = get_template("qwen")
    template.fix_tokenizer(qwen_tokenizer)
    assert template.to_ollama_modelfile(qwen_tokenizer, model_path="/models/out", num_ctx=8192) == (
        "# ollama modelfile auto-generated by lmforge\n\n"
        "FROM /models/out\n\n"
        'TEMPLATE """{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
        '{{ range .Messages }}{{ if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n<|im_start|>assistant\n'
        '{{ else if eq .Role "assistant" }}{{ .Content }}<|im_end|>\n{{ end }}{{ end }}"""\n\n'
        'SYSTEM """You are Qwen, created by Alibaba Cloud. You are a helpful assistant."""\n\n'
        'PARAMETER stop "<|im_end|>"\n'
        "PARAMETER num_ctx 8192\n"
    )


def test_ollama_qwen_with_tools(qwen_tokenizer):
    template = get_template("qwen")
    template.fix_tokenizer(qwen_tokenizer)
    text = template.to_ollama_modelfile(qwen_tokenizer, tools=True)
    assert text.split('TEMPLATE """')[1].split('"""')[0] == (
        "{{ if or .System .Tools }}<|im_start|>system\n{{ .System }}{{ if .Tools }}\n\n# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
        '{{ range .Tools }}\n{"type": "function", "function": {{ .Function }}}{{ end }}\n</tools>\n\n'
        "For each function call, return a json object with function name and arguments within "
        '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
        "</tool_call>{{ end }}<|im_end|>\n{{ end }}"
        '{{ range .Messages }}{{ if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n<|im_start|>assistant\n'
        '{{ else if and (eq .Role "assistant") .ToolCalls }}'
        '{{ range $i, $call := .ToolCalls }}{{ if $i }}\n{{ end }}<tool_call>\n{"name": "{{ $call.Function.Name }}", '
        '"arguments": {{ $call.Function.Arguments }}}\n</tool_call>{{ end }}<|im_end|>\n'
        '{{ else if eq .Role "tool" }}<|im_start|>user\n<tool_response>\n{{ .Content }}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n"
        '{{ else if eq .Role "assistant" }}{{ .Content }}<|im_end|>\n{{ end }}{{ end }}'
    )
    with pytest.raises(UserError, match="qwen tool format"):
        get_template("llama3").to_ollama_modelfile(qwen_tokenizer, tools=True)


def test_ollama_fuses_the_system_for_llama2_style_templates(llama_tokenizer):
    template = get_template("mistral")
    template.fix_tokenizer(llama_tokenizer)
    text = template.to_ollama_modelfile(llama_tokenizer)
    assert text.split('TEMPLATE """')[1].split('"""')[0] == (
        '<|begin_of_text|>{{ $system := .System }}{{ range .Messages }}{{ if eq .Role "user" }}'
        '[INST] {{ if $system }}{{ $system }}\n\n{{ $system = "" }}{{ end }}{{ .Content }}[/INST]'
        '{{ else if eq .Role "assistant" }} {{ .Content }}<|end_of_text|>{{ end }}{{ end }}'
    )

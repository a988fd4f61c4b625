"""Template -> Jinja chat_template, so `tokenizer.apply_chat_template` renders like our `render_oneturn`.

The generated template understands system, user, assistant, assistant `tool_calls`, and `tool`
(observation) messages, the `tools` argument (rendered with the template's tool format), and, for
reasoning templates, `enable_thinking` (defaulting to the template's setting) and
`add_generation_prompt`. A multimodal template also reads content-part lists with images and
videos. BOS/EOS are written as the tokenizer's token strings rather than `{{ eos_token }}`, because
`fix_tokenizer` may have replaced the EOS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .slots import Slot, Special, Token, special_token_text, split_slot
from .tools import DEFAULT_TOOL_PROMPT, GLM4_TOOL_PROMPT, GLM4_TOOL_SUFFIX, LLAMA3_TOOL_PROMPT, QWEN_TOOL_PROMPT

if TYPE_CHECKING:
    from .template import Template

_SENTINEL = "\x00"
# The function definition inside an OpenAI-style tool, and the OpenAI-style form of a tool.
_UNWRAP = "(tool['function'] if ('type' in tool and tool['type'] == 'function') else tool)"
_WRAP = "(tool if ('type' in tool and tool['type'] == 'function') else {'type': 'function', 'function': tool})"


def q(text: str) -> str:
    """A Jinja string literal for `text`."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def slots_expr(slots: tuple[Slot, ...], tokenizer, placeholder: str = "content") -> str:
    """A Jinja expression that concatenates the slots, with `{{content}}` replaced by `placeholder`."""
    items: list[str] = []
    for slot in slots:
        if isinstance(slot, str):
            before, after = split_slot(slot)
            if before:
                items.append(q(before))
            if after is not None:
                items.append(placeholder)
                if after:
                    items.append(q(after))
        elif isinstance(slot, Token):
            items.append(q(slot.text))
        elif isinstance(slot, Special):
            text = special_token_text(tokenizer, slot)
            if text:
                items.append(q(text))
    return " + ".join(items) if items else "''"


def _split_prompt(prompt: str, **names: str) -> list[str]:
    """The literal parts of a str.format prompt around its fields, in order."""
    return prompt.format(**{name: _SENTINEL for name in names}).split(_SENTINEL)


def tools_block(tool_format: str, tools_date: str | None) -> str:
    """Jinja that sets `ns.tool_text` from `tools` in the given tool format."""
    loop = "{%- for tool in tools %}"
    if tool_format == "qwen":
        head, tail = _split_prompt(QWEN_TOOL_PROMPT, tool_text="")
        body = "{%- set ns.tool_text = ns.tool_text + '\\n' + " + _WRAP + "|tojson %}"
        return _wrap_loop(head, loop + body, tail)
    if tool_format == "llama3":
        head, middle, tail = _split_prompt(LLAMA3_TOOL_PROMPT, date="", tool_text="")
        date = q(tools_date) if tools_date else "strftime_now('%d %b %Y')"
        body = "{%- set ns.tool_text = ns.tool_text + " + _WRAP + "|tojson(indent=4) + '\\n\\n' %}"
        return f"{{%- set ns.tool_text = {q(head)} + {date} + {q(middle)} %}}{loop}{body}{{%- endfor %}}"
    if tool_format == "mistral":
        body = "{%- set ns.items = ns.items + [" + _WRAP + "] %}"
        return (
            f"{{%- set ns.items = [] %}}{loop}{body}{{%- endfor %}}"
            "{%- set ns.tool_text = '[AVAILABLE_TOOLS] ' + ns.items|tojson + '[/AVAILABLE_TOOLS]' %}"
        )
    if tool_format == "glm4":
        head, tail = _split_prompt(GLM4_TOOL_PROMPT, tool_text="")
        body = (
            "{%- set fn = (tool['function'] if ('type' in tool and tool['type'] == 'function') else tool) %}"
            "{%- set ns.tool_text = ns.tool_text + '\\n\\n## ' ~ fn['name'] ~ '\\n\\n' ~ fn|tojson(indent=4) ~ "
            + q(GLM4_TOOL_SUFFIX)
            + " %}"
        )
        return _wrap_loop(head, loop + body, tail)
    return _default_tools_block()


def _wrap_loop(head: str, loop: str, tail: str) -> str:
    """`ns.tool_text = head`, then the loop that appends each tool, then `+ tail`."""
    start = "{%- set ns.tool_text = " + q(head) + " %}"
    return start + loop + "{%- endfor %}{%- set ns.tool_text = ns.tool_text + " + q(tail) + " %}"


def _default_tools_block() -> str:
    head, middle, tail = _split_prompt(DEFAULT_TOOL_PROMPT, tool_text="", tool_names="")
    param = (
        "{%- set ns.params = ns.params ~ '  - ' ~ name ~ ' (' ~ (param['type'] if 'type' in param else '')"
        " ~ (', required' if name in required else '') ~ '): '"
        " ~ (param['description'] if 'description' in param else '')"
        " ~ ((', should be one of [' ~ param['enum']|join(', ') ~ ']') if ('enum' in param and param['enum']) else '')"
        " ~ ((', where each item should be ' ~ (param['items']['type'] if 'type' in param['items'] else ''))"
        " if ('items' in param and param['items']) else '') ~ '\\n' %}"
    )
    return (
        "{%- set ns.names = [] %}{%- set ns.tool_text = '' %}"
        "{%- for tool in tools %}"
        "{%- set fn = " + _UNWRAP + " %}"
        "{%- set parameters = fn['parameters'] if ('parameters' in fn and fn['parameters']) else {} %}"
        "{%- set required = parameters['required'] if 'required' in parameters else [] %}"
        "{%- set ns.params = '' %}"
        "{%- for name, param in (parameters['properties'] if 'properties' in parameters else {}).items() %}"
        + param
        + "{%- endfor %}"
        "{%- set ns.tool_text = ns.tool_text ~ '> Tool Name: ' ~ fn['name'] ~ '\\nTool Description: '"
        " ~ (fn['description'] if 'description' in fn else '') ~ '\\nTool Args:\\n' ~ ns.params ~ '\\n' %}"
        "{%- set ns.names = ns.names + [fn['name']] %}"
        "{%- endfor %}"
        "{%- set ns.tool_text = "
        + q(head)
        + " ~ ns.tool_text ~ "
        + q(middle)
        + " ~ ns.names|join(', ') ~ "
        + q(tail)
        + " %}"
    )


def calls_block(tool_format: str) -> str:
    """Jinja that sets `content` to the assistant message's `tool_calls` written in the tool format."""
    name = "call['name']|tojson"
    if tool_format == "qwen":
        item, joiner = (
            "'<tool_call>\\n{\"name\": ' ~ " + name + " ~ ', \"arguments\": ' ~ args ~ '}\\n</tool_call>'",
            "'\\n'",
        )
    elif tool_format in ("llama3", "mistral"):
        key = "parameters" if tool_format == "llama3" else "arguments"
        item, joiner = "'{\"name\": ' ~ " + name + " ~ ', \"" + key + "\": ' ~ args ~ '}'", "', '"
    elif tool_format == "glm4":
        item, joiner = "call['name'] ~ '\\n' ~ args", "''"
    else:
        item, joiner = "'Action: ' ~ call['name'] ~ '\\nAction Input: ' ~ args", "'\\n'"
    loop = (
        "{%- set ns.items = [] %}"
        "{%- for tool_call in message['tool_calls'] %}"
        "{%- set call = tool_call['function'] if 'function' in tool_call else tool_call %}"
        "{%- set args = call['arguments'] if call['arguments'] is string else call['arguments']|tojson %}"
        "{%- set ns.items = ns.items + [" + item + "] %}"
        "{%- endfor %}"
    )
    if tool_format == "llama3":
        return loop + "{%- set content = ns.items[0] if ns.items|length == 1 else '[' ~ ns.items|join(', ') ~ ']' %}"
    if tool_format == "mistral":
        return loop + "{%- set content = '[' ~ ns.items|join(', ') ~ ']' %}"
    if tool_format == "glm4":
        return loop + "{%- set content = ns.items[0] %}"
    return loop + "{%- set content = ns.items|join(" + joiner + ") %}"


def _strip_thought(thought_words: tuple[str, str]) -> str:
    """Jinja that removes thought blocks from `content` (LLaMA-Factory's remove_thought)."""
    start, end = q(thought_words[0]), q(thought_words[1])
    return (
        f"{{%- set parts = content.split({start}) %}}{{%- set ns.text = parts[0] %}}"
        "{%- for part in parts[1:] %}"
        f"{{%- if {end} in part %}}{{%- set ns.text = ns.text ~ part.split({end}, 1)[1] %}}"
        f"{{%- else %}}{{%- set ns.text = ns.text ~ {start} ~ part %}}{{%- endif %}}"
        "{%- endfor %}{%- set content = ns.text.lstrip('\\n') %}"
    )


def _content_block(mm_plugin: str | None) -> str:
    """Jinja that sets `content` to the message's text.

    A text template reads string content only. A multimodal one also reads a list of content parts
    (the shape `processor.apply_chat_template` and OpenAI-style servers pass): text parts as they are,
    each image or video part as the plugin's vision markers, which the model's processor then expands
    to the image's token count.
    """
    string = "{%- set content = message['content'] if message['content'] is string else '' %}"
    if mm_plugin is None:
        return string
    from lmforge.data.templates.mm_plugin import IMAGES, VIDEOS, get_mm_plugin

    plugin = get_mm_plugin(mm_plugin)
    tests = {IMAGES: "part['type'] == 'image' or 'image' in part or 'image_url' in part",
             VIDEOS: "part['type'] == 'video' or 'video' in part"}
    cases = [(tests[kind], q(plugin.part_text(kind))) for kind in (IMAGES, VIDEOS) if plugin.part_text(kind)]
    cases.append(("'text' in part", "part['text']"))
    branches = "".join(f"{{%- {'elif' if i else 'if'} {test} %}}{{%- set ns.text = ns.text ~ {text} %}}"
                       for i, (test, text) in enumerate(cases))
    return (
        "{%- if message['content'] is string %}{%- set content = message['content'] %}"
        "{%- elif message['content'] %}{%- set ns.text = '' %}{%- for part in message['content'] %}"
        + branches + "{%- endif %}{%- endfor %}{%- set content = ns.text %}"
        "{%- else %}{%- set content = '' %}{%- endif %}"
    )


def template_to_jinja(template: Template, tokenizer) -> str:
    """A Jinja chat_template equivalent to `template.render_oneturn` / `render_prompt`."""
    prefix = slots_expr(template.format_prefix.slots, tokenizer) if template.format_prefix.slots else ""
    user = slots_expr(template.format_user.slots, tokenizer)
    assistant = slots_expr(template.format_assistant.slots, tokenizer)
    function = slots_expr(template.format_function.slots, tokenizer)
    observation = slots_expr(template.format_observation.slots, tokenizer)
    system_slots = template.format_system.slots[:1] if template.fuse_system else template.format_system.slots
    system = slots_expr(system_slots, tokenizer, placeholder="system_text")
    thinking_default = {True: "true", False: "false", None: "none"}[template.enable_thinking]
    empty_thought = q(template.thought_words[0] + template.thought_words[1])
    start_tag, end_tag = q(template.thought_words[0].strip()), q(template.thought_words[1].strip())

    parts = [
        "{%- set ns = namespace(system="
        + q(template.default_system)
        + ", tool_text='', items=[], names=[], params='', text='') %}",
        f"{{%- set thinking = enable_thinking if enable_thinking is defined else {thinking_default} %}}",
        "{%- if messages and messages[0]['role'] == 'system' %}{%- set loop_messages = messages[1:] %}"
        "{%- if messages[0]['content'] %}{%- set ns.system = messages[0]['content'] %}{%- endif %}"
        "{%- else %}{%- set loop_messages = messages %}{%- endif %}",
        "{%- if tools %}" + tools_block(template.tool_format, template.tools_date) + "{%- endif %}",
        "{%- set system_text = ns.system ~ ns.tool_text %}",
    ]
    if prefix:
        parts.append("{{- " + prefix + " }}")
    if not template.fuse_system:
        parts.append("{%- if system_text or tools %}{{- " + system + " }}{%- endif %}")
    parts.append("{%- for message in loop_messages %}")
    parts.append(_content_block(template.mm_plugin))
    parts.append("{%- if message['role'] == 'user' %}")
    if template.fuse_system:
        parts.append(
            "{%- if loop.first and (system_text or tools) %}{%- set content = " + system + " ~ content %}{%- endif %}"
        )
    parts.append("{{- " + user + " }}")
    parts.append(
        "{%- elif message['role'] == 'assistant' and message['tool_calls'] is defined and message['tool_calls'] %}"
    )
    parts.append(calls_block(template.tool_format) + "{{- " + function + " }}")
    parts.append("{%- elif message['role'] == 'assistant' %}")
    if template.reasoning:
        strip = _strip_thought(template.thought_words)
        history = "" if template.preserve_thinking else "{%- if not loop.last %}" + strip + "{%- endif %}"
        parts.append(
            history + "{%- if loop.last %}{%- if thinking is false %}" + strip + "{%- endif %}"
            f"{{%- if {start_tag} not in content and {end_tag} not in content %}}"
            f"{{%- set content = {empty_thought} ~ content %}}{{%- endif %}}{{%- endif %}}"
        )
    parts.append("{{- " + assistant + " }}")
    parts.append("{%- elif message['role'] in ['tool', 'observation'] %}{{- " + observation + " }}")
    parts.append("{%- endif %}{%- endfor %}")
    if template.reasoning:
        parts.append(
            "{%- if add_generation_prompt and not thinking and loop_messages"
            " and loop_messages[-1]['role'] != 'assistant' %}"
            "{{- " + empty_thought + " }}{%- endif %}"
        )
    return "".join(parts)

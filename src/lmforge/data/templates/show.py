"""How `lmforge templates NAME` shows a template: its settings and an example render."""

from __future__ import annotations

import json

EXAMPLE_SYSTEM = "You are a helpful assistant."
EXAMPLE = [
    {"role": "user", "content": "Hi, who are you?"},
    {"role": "assistant", "content": "I am an AI assistant."},
    {"role": "user", "content": "What can you do?"},
    {"role": "assistant", "content": "I answer questions."},
]


class NamedSpecials:
    """A stand-in tokenizer for renders without a model: BOS/EOS are shown as {bos_token}/{eos_token}."""

    bos_token, eos_token = "{bos_token}", "{eos_token}"
    bos_token_id, eos_token_id = 1, 2


def describe(template, tokenizer) -> str:
    """Settings, then the example conversation rendered with the trained text marked [[...]]."""
    lines = [f"Template: {template.name}"]
    for key in ("default_system", "stop_words", "tool_format", "efficient_eos", "replace_eos", "enable_thinking"):
        if hasattr(template, key):
            value = getattr(template, key)
            lines.append(f"  {key}: {json.dumps(list(value) if isinstance(value, tuple) else value, ensure_ascii=False)}")
    pairs = template.render_multiturn(tokenizer, EXAMPLE, system=EXAMPLE_SYSTEM)
    rendered = "".join(f"{source}[[{target}]]" for source, target in pairs)
    lines += ["", f"Example (system prompt {EXAMPLE_SYSTEM!r}; trained text inside [[ ]]):", rendered]
    return "\n".join(lines)

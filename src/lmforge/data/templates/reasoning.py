"""Thought (chain-of-thought) helpers for reasoning templates such as qwen3 and deepseekr1.

LLaMA-Factory's `ReasoningTemplate` rules, which `Template` applies when `reasoning=True`:
- an answer without a thought gets the empty thought `<think>\\n\\n</think>\\n\\n`; with
  `enable_thinking=True` it is part of the answer (trained on), otherwise part of the prompt;
- `enable_thinking=False` strips every thought;
- history answers lose their thoughts in one-turn encoding unless `preserve_thinking`, and in
  multi-turn encoding only when `discard_history_cot` is asked for (the processors ask when
  `mask_history` is set and `preserve_thinking` is not).
"""

from __future__ import annotations

import re


def empty_thought(thought_words: tuple[str, str]) -> str:
    """The empty thought, e.g. `<think>\\n\\n</think>\\n\\n`."""
    return thought_words[0] + thought_words[1]


def remove_thought(content: str, thought_words: tuple[str, str]) -> str:
    """The content with every thought block removed and leading newlines stripped."""
    pattern = re.compile(f"{re.escape(thought_words[0])}(.*?){re.escape(thought_words[1])}", re.DOTALL)
    return pattern.sub("", content).lstrip("\n")


def has_thought(content: str, thought_words: tuple[str, str]) -> bool:
    """Whether the content holds either thought tag (then no empty thought is added)."""
    return thought_words[0].strip() in content or thought_words[1].strip() in content


def strip_thoughts(messages: list[dict[str, str]], indices, thought_words: tuple[str, str]) -> None:
    """Remove thoughts, in place, from the messages at `indices`."""
    for i in indices:
        messages[i] = {**messages[i], "content": remove_thought(messages[i]["content"], thought_words)}

"""A template that renders with the tokenizer's own Jinja chat_template.

Used when no `template:` is configured and the tokenizer carries a chat_template. No slots are
guessed for training: each turn's trained span is found by rendering the conversation up to the
user message with `add_generation_prompt=True` and up to the assistant answer without it, and taking
the difference (LLaMA-Factory v1's approach). A chat template whose renders are not prefixes of each
other (one that rewrites history, like Qwen3's thought stripping) cannot be split into turns this
way and is refused with a UserError.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

from lmforge.errors import UserError

from .base import BaseTemplate, Message
from .slots import Chunk, Formatter, Piece, control_tokens, encode_elements
from .template import Template, add_special_tokens, set_eos_token, split_system
from .tools import load_tools, parse_function_message


@dataclass(frozen=True, kw_only=True)
class TokenizerTemplate(BaseTemplate):
    """The tokenizer's own chat template, behind the same `BaseTemplate` interface as `Template`."""

    chat_template: str
    # The shared field, redeclared only to give it a default: a label, not a registered name
    # (a run records `recorded_name`, None, instead).
    name: str = "tokenizer"

    @classmethod
    def from_tokenizer(cls, tokenizer) -> TokenizerTemplate:
        """Wrap the tokenizer's chat_template; stop words come from its EOS and generation config."""
        chat_template = tokenizer.chat_template
        if not isinstance(chat_template, str):
            raise UserError("The tokenizer has no chat_template; set `template:` to one of `lmforge templates`.")
        tool_format = "qwen" if "<tool_call>" in chat_template else "default"
        return cls(chat_template=chat_template, stop_words=_stop_words(tokenizer), tool_format=tool_format)

    @property
    def recorded_name(self) -> None:
        """None: the chat template is saved with the tokenizer, so a run needs no `template:` to rebuild it."""
        return None

    # ---- encoding -------------------------------------------------------------------------------

    def encode_oneturn(
        self, tokenizer, messages: Sequence[Message], system: str | None = None, tools: str | None = None
    ) -> tuple[list[int], list[int]]:
        """(prompt ids, answer ids): the last message is the answer."""
        (prompt, prompt_contents), (answer, answer_contents) = self._oneturn(tokenizer, messages, system, tools)
        return self._encode(tokenizer, prompt, prompt_contents), self._encode(tokenizer, answer, answer_contents)

    def encode_multiturn(
        self,
        tokenizer,
        messages: Sequence[Message],
        system: str | None = None,
        tools: str | None = None,
        *,
        discard_history_cot: bool = False,
    ) -> list[tuple[list[int], list[int]]]:
        """(source ids, target ids) per turn; `discard_history_cot` is accepted for API parity and ignored."""
        return [
            (self._encode(tokenizer, source, source_contents), self._encode(tokenizer, target, target_contents))
            for (source, source_contents), (target, target_contents) in self._multiturn(
                tokenizer, messages, system, tools
            )
        ]

    def encode_prompt(
        self, tokenizer, messages: Sequence[Message], system: str | None = None, tools: str | None = None,
        *, media=None,
    ) -> list[int]:
        """The generation prompt ids for a conversation that ends with a user or observation message."""
        if media is not None:
            raise UserError(f"Template '{self.name}' renders with the tokenizer's chat_template and takes no images "
                            "or videos; use a multimodal template such as qwen2_vl.")
        return self._encode(tokenizer, self.render_prompt(tokenizer, messages, system, tools), [])

    def render_oneturn(
        self, tokenizer, messages: Sequence[Message], system: str | None = None, tools: str | None = None
    ) -> tuple[str, str]:
        """`encode_oneturn` as text."""
        (prompt, _), (answer, _) = self._oneturn(tokenizer, messages, system, tools)
        return prompt, answer

    def render_multiturn(
        self,
        tokenizer,
        messages: Sequence[Message],
        system: str | None = None,
        tools: str | None = None,
        *,
        discard_history_cot: bool = False,
    ) -> list[tuple[str, str]]:
        """`encode_multiturn` as text."""
        return [(source, target) for (source, _), (target, _) in self._multiturn(tokenizer, messages, system, tools)]

    def render_prompt(
        self, tokenizer, messages: Sequence[Message], system: str | None = None, tools: str | None = None
    ) -> str:
        """`encode_prompt` as text."""
        conversation, tool_list = self._conversation(messages, system, tools)
        return self._render(tokenizer, conversation, tool_list, generation=True)

    # ---- tools and tokenizer --------------------------------------------------------------------

    def fix_tokenizer(self, tokenizer) -> bool:
        """Add a missing EOS (`<|endoftext|>`) and pad (= EOS); mark stop words special. Keeps the chat_template."""
        added = 0
        if tokenizer.eos_token_id is None:
            added += set_eos_token(tokenizer, "<|endoftext|>")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        extra = [word for word in self.stop_words if word != tokenizer.eos_token]
        if extra:
            added += add_special_tokens(tokenizer, extra)
        return added > 0

    def to_jinja(self, tokenizer=None) -> str:
        """The tokenizer's own chat_template, unchanged (`fix_tokenizer` never replaces it)."""
        return self.chat_template

    def to_ollama_modelfile(self, tokenizer, model_path: str = ".", num_ctx: int = 4096, *, tools: bool = False) -> str:
        """An Ollama Modelfile from slots read off the chat template (see `as_template`)."""
        return self.as_template(tokenizer).to_ollama_modelfile(tokenizer, model_path, num_ctx, tools=tools)

    def as_template(self, tokenizer) -> Template:
        """Slots read off the chat template by rendering placeholder messages (LLaMA-Factory's parse_template)."""
        marker = "{{content}}"
        prefix = tokenizer.decode(tokenizer.encode(""))

        def render(messages: list[dict], generation: bool) -> str:
            return self._render(tokenizer, messages, None, generation)[len(prefix) :]

        system_slot = render([{"role": "system", "content": marker}], False)
        user_slot_empty_system = render([{"role": "system", "content": ""}, {"role": "user", "content": marker}], True)
        user_slot = render([{"role": "user", "content": marker}], True)
        full = render([{"role": "user", "content": marker}, {"role": "assistant", "content": marker}], False)
        assistant_slot = full[len(user_slot) :].replace("<think>", "").replace("</think>", "").lstrip("\n")
        default_system = ""
        if len(user_slot) > len(user_slot_empty_system):
            default_system = _find_diff(user_slot_empty_system, user_slot)
            user_slot = user_slot[len(system_slot.replace(marker, default_system, 1)) :]
        if self.default_system:
            default_system = self.default_system
        return Template(
            name=self.name,
            format_user=Formatter((user_slot,)),
            format_assistant=Formatter((assistant_slot,)),
            format_system=Formatter((system_slot,)),
            format_function=Formatter((assistant_slot,)),
            format_observation=Formatter((user_slot,)),
            format_prefix=Formatter((prefix,) if prefix else ()),
            tool_format=self.tool_format,
            default_system=default_system,
            stop_words=self.stop_words,
            reasoning="<think>" in full,
            enable_thinking=self.enable_thinking,
        )

    # ---- rendering ------------------------------------------------------------------------------

    def _conversation(
        self, messages: Sequence[Message], system: str | None, tools: str | None
    ) -> tuple[list[dict], list[dict] | None]:
        messages, system = split_system(messages, system)
        system = system or self.default_system
        conversation: list[dict] = [{"role": "system", "content": system}] if system else []
        for message in messages:
            role, content = message["role"], message["content"]
            if role == "observation":
                conversation.append({"role": "tool", "content": content})
            elif role == "function":
                thought, calls = parse_function_message(content, self.thought_words, self.tool_call_words)
                tool_calls = [
                    {"type": "function", "function": {"name": call.name, "arguments": json.loads(call.arguments)}}
                    for call in calls
                ]
                conversation.append({"role": "assistant", "content": thought, "tool_calls": tool_calls})
            else:
                conversation.append({"role": role, "content": content})
        return conversation, (load_tools(tools) or None)

    def _render(self, tokenizer, conversation: list[dict], tools: list[dict] | None, generation: bool) -> str:
        kwargs = {"enable_thinking": self.enable_thinking} if isinstance(self.enable_thinking, bool) else {}
        return tokenizer.apply_chat_template(
            conversation,
            tools=tools,
            chat_template=self.chat_template,
            tokenize=False,
            add_generation_prompt=generation,
            **kwargs,
        )

    def _split(self, tokenizer, conversation, tools, end: int, previous: str) -> tuple[str, str, str]:
        """(prompt piece, answer piece, full render) for the answer at conversation[end - 1]."""
        prompt = self._render(tokenizer, conversation[: end - 1], tools, generation=True)
        full = self._render(tokenizer, conversation[:end], tools, generation=False)
        if not prompt.startswith(previous) or not full.startswith(prompt):
            raise UserError(
                "The tokenizer's chat_template renders a conversation differently depending on where it ends "
                "(its renders are not prefixes of each other), so the trained part of each turn cannot be found. "
                "Set `template:` to a registered template (`lmforge templates` lists them)."
            )
        return prompt[len(previous) :], full[len(prompt) :], full

    def _oneturn(self, tokenizer, messages, system, tools) -> tuple[tuple[str, list[str]], tuple[str, list[str]]]:
        conversation, tool_list = self._conversation(messages, system, tools)
        prompt, answer, _ = self._split(tokenizer, conversation, tool_list, len(conversation), "")
        contents = [str(message.get("content") or "") for message in conversation]
        return (prompt, contents[:-1]), (answer, contents[-1:])

    def _multiturn(
        self, tokenizer, messages, system, tools
    ) -> list[tuple[tuple[str, list[str]], tuple[str, list[str]]]]:
        conversation, tool_list = self._conversation(messages, system, tools)
        offset = 1 if conversation and conversation[0]["role"] == "system" else 0
        if (len(conversation) - offset) % 2:
            raise UserError(
                "A conversation for multi-turn encoding needs an even number of messages (prompt, answer pairs), "
                f"got {len(conversation) - offset}."
            )
        contents = [str(message.get("content") or "") for message in conversation]
        pairs = []
        previous = ""
        for end in range(offset + 2, len(conversation) + 1, 2):
            source, target, previous = self._split(tokenizer, conversation, tool_list, end, previous)
            source_contents = contents[: end - 1] if not pairs else contents[end - 2 : end - 1]
            pairs.append(((source, source_contents), (target, contents[end - 1 : end])))
        return pairs

    def _encode(self, tokenizer, text: str, contents: list[str]) -> list[int]:
        return encode_elements(tokenizer, [_locate(text, contents)], control_tokens(tokenizer))


def _locate(text: str, contents: list[str]) -> Chunk:
    """Mark where the message contents appear in a rendered text, so their control-token text is protected."""
    pieces: list[Piece] = []
    cursor = 0
    for content in contents:
        start = text.find(content, cursor) if content else -1
        if start < 0:
            continue
        if start > cursor:
            pieces.append(Piece(text[cursor:start], False))
        pieces.append(Piece(content, True))
        cursor = start + len(content)
    if cursor < len(text):
        pieces.append(Piece(text[cursor:], False))
    return Chunk(tuple(pieces))


def _find_diff(short: str, long: str) -> str:
    """The characters of `long` that a greedy in-order match against `short` skips."""
    i = j = 0
    diff = []
    while i < len(short) and j < len(long):
        if short[i] == long[j]:
            i += 1
        else:
            diff.append(long[j])
        j += 1
    return "".join(diff)


def _stop_words(tokenizer) -> tuple[str, ...]:
    words: list[str] = []
    if tokenizer.eos_token is not None:
        words.append(tokenizer.eos_token)
    path = getattr(tokenizer, "name_or_path", "") or ""
    if os.path.isdir(path):  # never reach for the network from here
        try:
            from transformers import GenerationConfig

            eos_ids = GenerationConfig.from_pretrained(path).eos_token_id
        except (OSError, ValueError):
            eos_ids = None
        for token_id in [eos_ids] if isinstance(eos_ids, int) else eos_ids or []:
            word = tokenizer.convert_ids_to_tokens(token_id)
            if word and word not in words:
                words.append(word)
    return tuple(words)

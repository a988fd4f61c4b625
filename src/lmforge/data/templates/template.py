"""The `Template`: one immutable object that renders, encodes and masks a conversation.

It follows LLaMA-Factory's `Template` (data/template.py) so that token ids match: message 0 gets
the prefix and the system text (system prompt + tool text), every message is rendered by its
role's formatter, and each rendered string element is encoded on its own. `encode_*` and
`render_*` share one function that builds the elements, so the text preview and the supervised
mask cannot disagree.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lmforge.errors import UserError

from . import reasoning
from .base import BaseTemplate, Message
from .media import MediaTokens
from .slots import EOS, Chunk, Element, Formatter, Piece, control_tokens, encode_elements, literal, render_elements

logger = logging.getLogger(__name__)

ROLES = ("user", "assistant", "system", "function", "observation")
Pair = tuple[list[Element], list[Element]]


@dataclass(frozen=True, kw_only=True)
class Template(BaseTemplate):
    """A registered slot template. Frozen: use `with_overrides` (or `dataclasses.replace`) to vary it.

    The shared settings (name, stop words, tool format, thinking, ...) are declared on `BaseTemplate`.
    """

    format_user: Formatter
    format_assistant: Formatter
    format_system: Formatter
    format_function: Formatter
    format_observation: Formatter
    format_prefix: Formatter = Formatter()
    fuse_system: bool = False  # llama2-style: the system text opens the first user message
    reasoning: bool = False  # LLaMA-Factory's ReasoningTemplate behaviour

    @property
    def recorded_name(self) -> str:
        """The registered name: `get_template(recorded_name)` rebuilds this template."""
        return self.name

    def _tool_format_changes(self, tool_format: str) -> dict[str, Any]:
        # As in LLaMA-Factory: the template's own function slots are written for its own tool format,
        # so another format's calls get bare `{{content}}` + EOS (no EOS with efficient_eos).
        slots = ("{{content}}",) if self.efficient_eos else ("{{content}}", EOS)
        return {**super()._tool_format_changes(tool_format), "format_function": Formatter(slots)}

    # ---- encoding -------------------------------------------------------------------------------

    def encode_oneturn(
        self, tokenizer, messages: Sequence[Message], system: str | None = None, tools: str | None = None,
        *, media: MediaTokens | None = None,
    ) -> tuple[list[int], list[int]]:
        """(prompt ids, answer ids): every message but the last is the prompt, the last is the answer."""
        prompt, answer = self._oneturn(messages, system, tools, media)
        controls = control_tokens(tokenizer)
        return encode_elements(tokenizer, prompt, controls), encode_elements(tokenizer, answer, controls)

    def encode_multiturn(
        self,
        tokenizer,
        messages: Sequence[Message],
        system: str | None = None,
        tools: str | None = None,
        *,
        discard_history_cot: bool = False,
        media: MediaTokens | None = None,
    ) -> list[tuple[list[int], list[int]]]:
        """(source ids, target ids) for each pair of messages (2i, 2i+1).

        `discard_history_cot` (reasoning templates only) strips the thoughts of all answers but the
        last and adds the empty thought to the last turn only, as LLaMA-Factory does under `mask_history`.
        `media` (from the template's multimodal plugin) replaces the <image>/<video> placeholders of the
        messages by their vision tokens.
        """
        controls = control_tokens(tokenizer)
        return [
            (encode_elements(tokenizer, source, controls), encode_elements(tokenizer, target, controls))
            for source, target in self._multiturn(messages, system, tools, discard_history_cot, media)
        ]

    def encode_prompt(
        self, tokenizer, messages: Sequence[Message], system: str | None = None, tools: str | None = None,
        *, media: MediaTokens | None = None,
    ) -> list[int]:
        """The generation prompt ids for a conversation that ends with a user or observation message.

        `media` replaces the <image>/<video> placeholders by their vision tokens, as in `encode_multiturn`.
        """
        prompt, _ = self._oneturn([*messages, {"role": "assistant", "content": ""}], system, tools, media)
        return encode_elements(tokenizer, prompt)

    def render_oneturn(
        self, tokenizer, messages: Sequence[Message], system: str | None = None, tools: str | None = None
    ) -> tuple[str, str]:
        """`encode_oneturn` as text (BOS/EOS/named tokens written as their token strings)."""
        prompt, answer = self._oneturn(messages, system, tools)
        return render_elements(tokenizer, prompt), render_elements(tokenizer, answer)

    def render_multiturn(
        self,
        tokenizer,
        messages: Sequence[Message],
        system: str | None = None,
        tools: str | None = None,
        *,
        discard_history_cot: bool = False,
        media: MediaTokens | None = None,
    ) -> list[tuple[str, str]]:
        """`encode_multiturn` as text, for previews and golden tests."""
        return [
            (render_elements(tokenizer, source), render_elements(tokenizer, target))
            for source, target in self._multiturn(messages, system, tools, discard_history_cot, media)
        ]

    def render_prompt(
        self, tokenizer, messages: Sequence[Message], system: str | None = None, tools: str | None = None,
        *, media: MediaTokens | None = None,
    ) -> str:
        """`encode_prompt` as text."""
        prompt, _ = self._oneturn([*messages, {"role": "assistant", "content": ""}], system, tools, media)
        return render_elements(tokenizer, prompt)

    # ---- tokenizer ------------------------------------------------------------------------------

    def fix_tokenizer(self, tokenizer) -> bool:
        """Fit the tokenizer to the template (LLaMA-Factory's `get_template_and_fix_tokenizer`).

        `replace_eos` makes the first stop word the EOS; other stop words become special tokens; a
        missing EOS becomes `<|endoftext|>`, a missing pad the EOS; the chat_template is set from
        `to_jinja` when the tokenizer had none or `replace_jinja_template`. Mutates only the
        tokenizer. Returns whether tokens were added to the vocabulary (the model then needs `resize_vocab`).
        """
        added = 0
        stop_words = list(self.stop_words)
        if self.replace_eos:
            if not stop_words:
                raise UserError(f"Template '{self.name}' sets replace_eos but has no stop words.")
            added += set_eos_token(tokenizer, stop_words.pop(0))
        if tokenizer.eos_token_id is None:
            added += set_eos_token(tokenizer, "<|endoftext|>")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
            logger.info("Add pad token: %s", tokenizer.pad_token)
        if stop_words:
            added += add_special_tokens(tokenizer, stop_words)
            logger.info("Add %s to stop words.", ",".join(stop_words))
        if tokenizer.chat_template is None or self.replace_jinja_template:
            tokenizer.chat_template = self.to_jinja(tokenizer)
        if added:
            logger.warning("New tokens have been added to the tokenizer, make sure `resize_vocab` is True.")
        return added > 0

    def to_jinja(self, tokenizer) -> str:
        """A Jinja chat_template that renders like this template (see `jinja.template_to_jinja`)."""
        from .jinja import template_to_jinja

        return template_to_jinja(self, tokenizer)

    def to_ollama_modelfile(self, tokenizer, model_path: str = ".", num_ctx: int = 4096, *, tools: bool = False) -> str:
        """The Ollama Modelfile text (see `ollama.template_to_modelfile`)."""
        from .ollama import template_to_modelfile

        return template_to_modelfile(self, tokenizer, model_path, num_ctx, tools=tools)

    # ---- building elements ----------------------------------------------------------------------

    def _oneturn(self, messages: Sequence[Message], system: str | None, tools: str | None,
                 media: MediaTokens | None = None) -> Pair:
        messages, system = split_system(messages, system)
        if self.reasoning:
            if not self.preserve_thinking:
                reasoning.strip_thoughts(messages, range(1, len(messages) - 2, 2), self.thought_words)
            if self.enable_thinking is False:
                reasoning.strip_thoughts(messages, [len(messages) - 1], self.thought_words)
        formatted = self._format(messages, system, tools, media)
        prompt = [element for elements in formatted[:-1] for element in elements]
        answer = list(formatted[-1])
        if self.reasoning and not reasoning.has_thought(messages[-1]["content"], self.thought_words):
            thought = literal(reasoning.empty_thought(self.thought_words))
            if self.enable_thinking:
                answer.insert(0, thought)
            else:
                prompt.append(thought)
        return prompt, answer

    def _multiturn(
        self, messages: Sequence[Message], system: str | None, tools: str | None, discard_history_cot: bool,
        media: MediaTokens | None = None,
    ) -> list[Pair]:
        messages, system = split_system(messages, system)
        if len(messages) % 2:
            raise UserError(
                f"A conversation for multi-turn encoding needs an even number of messages (prompt, answer pairs), "
                f"got {len(messages)}: {[m['role'] for m in messages]}."
            )
        turns = range(0, len(messages), 2)
        if self.reasoning:
            if self.enable_thinking is False:
                reasoning.strip_thoughts(messages, range(1, len(messages), 2), self.thought_words)
            if discard_history_cot:
                reasoning.strip_thoughts(messages, range(1, len(messages) - 2, 2), self.thought_words)
                turns = [len(messages) - 2]
        formatted = self._format(messages, system, tools, media)
        pairs = [(list(formatted[i]), list(formatted[i + 1])) for i in range(0, len(formatted), 2)]
        if self.reasoning:
            for i in turns:
                if reasoning.has_thought(messages[i + 1]["content"], self.thought_words):
                    continue
                thought = literal(reasoning.empty_thought(self.thought_words))
                if self.enable_thinking:
                    pairs[i // 2][1].insert(0, thought)
                else:
                    pairs[i // 2][0].append(thought)
        return pairs

    def _format(self, messages: list[Message], system: str | None, tools: str | None,
                media: MediaTokens | None = None) -> list[list[Element]]:
        """The elements of each message (LLaMA-Factory's `_encode` before tokenization)."""
        system = system or self.default_system
        cursor = media.cursor() if media is not None else None
        tool_text = self.format_tools(tools) if tools else ""
        formatted: list[list[Element]] = []
        for i, message in enumerate(messages):
            elements: list[Element] = []
            fused: tuple[Piece, ...] = ()
            if i == 0:
                elements += self.format_prefix.apply()
                if system or tools:  # LLaMA-Factory tests the raw tools text, so "[]" opens a system turn
                    system_value = (Piece(system, True), Piece(tool_text, False))
                    system_elements = self.format_system.apply(content=system_value)
                    if not self.fuse_system:
                        elements += system_elements
                    elif system_elements and isinstance(system_elements[0], Chunk):
                        fused = system_elements[0].pieces
            role, content = message["role"], message["content"]
            # Placeholders may sit in any text turn (LLaMA-Factory expands them in every message).
            value = cursor.pieces(content) if cursor is not None and role != "function" else content
            if role == "user":
                if fused:
                    value = (*fused, *((Piece(value, True),) if isinstance(value, str) else value))
                elements += self.format_user.apply(content=value, idx=str(i // 2))
            elif role == "assistant":
                elements += self.format_assistant.apply(content=value)
            elif role == "observation":
                elements += self.format_observation.apply(content=value)
            elif role == "function":
                text = self.format_function_calls(content)
                elements += self.format_function.apply(content=(Piece(text, False),))
            else:
                raise UserError(
                    f"Unexpected role '{role}' in message {i}; expected one of: user, assistant, function, observation "
                    "(a system message may only come first)."
                )
            formatted.append(elements)
        return formatted


def split_system(messages: Sequence[Message], system: str | None) -> tuple[list[Message], str | None]:
    """Copy the messages; a leading system message becomes the system prompt unless one is given."""
    messages = [dict(message) for message in messages]
    if messages and messages[0].get("role") == "system":
        first = messages.pop(0)
        if system is None:
            system = first.get("content") or ""
    if not messages:
        raise UserError("A conversation needs at least one user message.")
    for message in messages:
        if message.get("role") not in ROLES:
            raise UserError(f"Unknown message role '{message.get('role')}'; expected one of: {', '.join(ROLES)}.")
        if not isinstance(message.get("content"), str):
            message["content"] = "" if message.get("content") is None else str(message["content"])
    return messages, system


def set_eos_token(tokenizer, eos_token: str) -> int:
    """Make `eos_token` the EOS (adding it if new); returns the number of tokens added."""
    if tokenizer.eos_token == eos_token:
        return 0
    had_eos = tokenizer.eos_token_id is not None
    added = tokenizer.add_special_tokens({"eos_token": eos_token})
    logger.info("%s eos token: %s.", "Replace" if had_eos else "Add", tokenizer.eos_token)
    return added


def add_special_tokens(tokenizer, tokens: list[str]) -> int:
    """Add `tokens` as extra special tokens, keeping the existing ones; returns the number added."""
    # transformers 5 renamed additional_special_tokens to extra_special_tokens.
    params = inspect.signature(tokenizer.add_special_tokens).parameters
    if "replace_extra_special_tokens" in params:
        return tokenizer.add_special_tokens({"extra_special_tokens": tokens}, replace_extra_special_tokens=False)
    return tokenizer.add_special_tokens({"additional_special_tokens": tokens}, replace_additional_special_tokens=False)

"""`BaseTemplate`: the one interface every chat template implements.

Two kinds exist: `Template` (LLaMA-Factory-style slots from the registry) and `TokenizerTemplate`
(the tokenizer's own Jinja chat_template). Callers (data pipeline, export, chat and API engines)
hold a `BaseTemplate` and never need to know which kind they have: the shared settings are declared
here once, overrides are applied by `with_overrides`, and what a run should record to rebuild the
template later is `recorded_name`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from .tools import FunctionCall, get_tool_format, load_tools, parse_function_message

Message = dict[str, str]

_T = TypeVar("_T", bound="BaseTemplate")


# kw_only: the base declares fields with defaults, and a subclass's own required fields
# (Template's formatters, TokenizerTemplate's chat_template) could not follow them otherwise.
@dataclass(frozen=True, kw_only=True)
class BaseTemplate(ABC):
    """A chat template: renders, encodes and masks conversations, and describes tools and stops.

    Frozen: `with_overrides` (or `dataclasses.replace`) makes a varied copy, so no setting leaks
    into the registry or into a later run in the same process.
    """

    name: str
    default_system: str = ""
    stop_words: tuple[str, ...] = ()
    tool_format: str = "default"
    thought_words: tuple[str, str] = ("<think>\n", "\n</think>\n\n")
    tool_call_words: tuple[str, str] = ("<tool_call>", "</tool_call>")
    efficient_eos: bool = False
    replace_eos: bool = False
    replace_jinja_template: bool = False
    enable_thinking: bool | None = True
    preserve_thinking: bool = False
    tools_date: str | None = None  # the llama3 tool prompt's "Today Date"; None means today
    # The multimodal plugin (`lmforge.data.templates.mm_plugin`) that turns <image>/<video> placeholders into the model's
    # vision tokens; None: the template takes text only. A name, like tool_format, so the template stays data.
    mm_plugin: str | None = None

    # ---- identity and overrides -----------------------------------------------------------------

    @property
    @abstractmethod
    def recorded_name(self) -> str | None:
        """The name a training run or export folder records so this template can be rebuilt later.

        None means "no `template:` needed": the template travels with the saved tokenizer.
        """

    def with_overrides(
        self: _T,
        *,
        tool_format: str | None = None,
        default_system: str | None = None,
        enable_thinking: bool | None = True,
        preserve_thinking: bool = False,
    ) -> _T:
        """A copy with `get_template`'s overrides applied; `self` is left as it is.

        `enable_thinking` and `preserve_thinking` are always set (their defaults are the run
        defaults, not "keep"); `tool_format` and `default_system` only when given. An unknown
        `tool_format` is a UserError.
        """
        changes: dict[str, Any] = {"enable_thinking": enable_thinking, "preserve_thinking": preserve_thinking}
        if tool_format is not None:
            get_tool_format(tool_format)  # a UserError for an unknown name
            if tool_format != self.tool_format:
                changes.update(self._tool_format_changes(tool_format))
        if default_system is not None:
            changes["default_system"] = default_system
        return replace(self, **changes)

    def _tool_format_changes(self, tool_format: str) -> dict[str, Any]:
        """The field changes for switching to another tool format; a subclass adds what depends on it."""
        return {"tool_format": tool_format}

    # ---- tools and stops ------------------------------------------------------------------------

    def format_tools(self, tools: str | Sequence[dict]) -> str:
        """The text that describes `tools` (a JSON list) in the system prompt; '' for no tools."""
        tool_list = load_tools(tools)
        if not tool_list:
            return ""
        return get_tool_format(self.tool_format).format_tools(tool_list, date=self.tools_date)

    def format_function_calls(self, calls: str | Sequence[FunctionCall]) -> str:
        """The assistant text for tool calls: a function message's JSON content, or FunctionCall objects."""
        if isinstance(calls, str):
            thought, parsed = parse_function_message(calls, self.thought_words, self.tool_call_words)
            return thought + get_tool_format(self.tool_format).format_calls(parsed)
        return get_tool_format(self.tool_format).format_calls(list(calls))

    def extract_tool(self, text: str) -> str | list[FunctionCall]:
        """Parse generated text into tool calls; the text itself when it holds no well-formed call."""
        return get_tool_format(self.tool_format).extract(text)

    def stop_token_ids(self, tokenizer) -> list[int]:
        """{eos} plus the stop words' ids, sorted."""
        ids = {tokenizer.eos_token_id}
        ids.update(tokenizer.convert_tokens_to_ids(word) for word in self.stop_words)
        ids.discard(None)
        return sorted(ids)

    # ---- what every template implements ---------------------------------------------------------

    @abstractmethod
    def encode_oneturn(
        self, tokenizer, messages: Sequence[Message], system: str | None = None, tools: str | None = None
    ) -> tuple[list[int], list[int]]:
        """(prompt ids, answer ids): every message but the last is the prompt, the last is the answer."""

    @abstractmethod
    def encode_multiturn(
        self,
        tokenizer,
        messages: Sequence[Message],
        system: str | None = None,
        tools: str | None = None,
        *,
        discard_history_cot: bool = False,
    ) -> list[tuple[list[int], list[int]]]:
        """(source ids, target ids) for each pair of messages (2i, 2i+1)."""

    @abstractmethod
    def encode_prompt(
        self, tokenizer, messages: Sequence[Message], system: str | None = None, tools: str | None = None,
        *, media=None,
    ) -> list[int]:
        """The generation prompt ids for a conversation that ends with a user or observation message.

        `media` (`MediaTokens`, multimodal templates only) expands the image/video placeholders.
        """

    @abstractmethod
    def render_oneturn(
        self, tokenizer, messages: Sequence[Message], system: str | None = None, tools: str | None = None
    ) -> tuple[str, str]:
        """`encode_oneturn` as text."""

    @abstractmethod
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

    @abstractmethod
    def render_prompt(
        self, tokenizer, messages: Sequence[Message], system: str | None = None, tools: str | None = None
    ) -> str:
        """`encode_prompt` as text."""

    @abstractmethod
    def fix_tokenizer(self, tokenizer) -> bool:
        """Fit the tokenizer to the template (EOS, pad, stop words); True when tokens were added."""

    @abstractmethod
    def to_jinja(self, tokenizer) -> str:
        """A Jinja chat_template that renders like this template, for `tokenizer.chat_template`."""

    @abstractmethod
    def to_ollama_modelfile(self, tokenizer, model_path: str = ".", num_ctx: int = 4096, *, tools: bool = False) -> str:
        """The Ollama Modelfile text for a model exported with this template."""


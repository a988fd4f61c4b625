"""The chat completions protocol as pydantic models: what clients send and what the server answers.

Field names, ranges and defaults follow OpenAI's API; `do_sample` and `repetition_penalty` are
LLaMA-Factory's extensions (pass them with the openai client's `extra_body`). Unknown request fields
are refused ("Unrecognized request argument supplied"), as OpenAI does, rather than silently ignored.
Fields that can take several shapes (`stop`, `content`) are validated by hand so that an error names
the field once instead of once per union member. Every value accepted here can be sampled with:
a temperature or penalty so small that logits overflow is refused, never left to fail in generation.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_CHOICES = 16  # `n`: every choice is one more row in the generation batch
# Logits are divided by the temperature (and positive ones by the repetition penalty); below these,
# large logits overflow float32 and sampling fails. vLLM raises small temperatures to 0.01 too.
MIN_TEMPERATURE = 0.01
MIN_PENALTY = 0.01
MAX_PENALTY = 100.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class FunctionDefinition(_Strict):
    """A tool the model may call."""

    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    """`{"type": "function", "function": {...}}`."""

    type: Literal["function"] = "function"
    function: FunctionDefinition


class FunctionCall(BaseModel):
    """A call's function name and its arguments as a JSON string."""

    name: str
    arguments: str


class ToolCall(BaseModel):
    """One tool call in an assistant message (sent by clients in the history, returned in answers)."""

    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    """A message of the conversation; `content` is a string or a list of text parts."""

    model_config = ConfigDict(extra="ignore")  # clients echo back fields like `refusal` or `annotations`

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(part, dict) for part in value):
            return value
        raise ValueError("content must be a string or a list of content parts like {\"type\": \"text\", \"text\": ...}")


class StreamOptions(_Strict):
    """`stream_options`: `include_usage` adds a last chunk with the token counts."""

    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    """`POST /v1/chat/completions`."""

    model: str
    messages: list[ChatMessage]
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto"] | None = None
    parallel_tool_calls: bool | None = None  # accepted; the template decides how calls are written
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    user: str | None = None
    do_sample: bool | None = None
    repetition_penalty: float | None = Field(default=None, ge=MIN_PENALTY, le=MAX_PENALTY)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(s, str) for s in value):
            return value  # the count and lengths are the server's limits (API_MAX_STOP, API_MAX_STOP_CHARS)
        raise ValueError("stop must be a string or a list of strings")

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, value: float | None) -> float | None:
        if value is not None and 0 < value < MIN_TEMPERATURE:
            raise ValueError(f"{value!r} is too small to sample with; use 0 for greedy decoding or a value from "
                             f"{MIN_TEMPERATURE} to 2")
        return value

    @field_validator("presence_penalty")
    @classmethod
    def _presence(cls, value: float | None) -> float | None:
        if value is not None and 0 < value < MIN_PENALTY:
            raise ValueError(f"{value!r} is too small: it is used as the repetition penalty, which divides the "
                             f"logits; use 0 for none or a value from {MIN_PENALTY} to 2")
        return value

    def stop_list(self) -> list[str] | None:
        """`stop` as a list without empty strings; None when there is none."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        stops = [s for s in stops if s]
        return stops or None


class ChatCompletionMessage(BaseModel):
    """The assistant message of an answer."""

    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class Choice(BaseModel):
    index: int
    message: ChatCompletionMessage
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    """The answer to a non-streaming request."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage


class ToolCallDelta(BaseModel):
    index: int
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streaming answer."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "owner"  # LLaMA-Factory's value


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def completion_id() -> str:
    """A new `chatcmpl-...` id."""
    return f"chatcmpl-{uuid.uuid4().hex}"


def call_id() -> str:
    """A new `call_...` id for a tool call."""
    return f"call_{uuid.uuid4().hex[:24]}"

"""What one request may ask of the server: model name, sampling settings, stop strings, lengths, and a slot.

Each check raises an `ApiError` naming the field and the limit. The limits come from `ApiSettings`
(environment variables), the model's context length and the generation defaults of the run config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lmforge.api.errors import ApiError
from lmforge.api.settings import ApiSettings

if TYPE_CHECKING:
    from lmforge.api.protocol import ChatCompletionRequest
    from lmforge.chat.base import ChatEngine


def check_model(requested: str, settings: ApiSettings, param: str | None = "model") -> None:
    """Any model name is served (as LLaMA-Factory does) unless API_STRICT_MODEL_NAME asks for the configured one."""
    if settings.strict_model_name and requested != settings.model_name:
        raise ApiError(404, f"The model `{requested}` does not exist or you do not have access to it. "
                            f"This server serves `{settings.model_name}` (see GET /v1/models).", param=param,
                       code="model_not_found")


def generation_settings(request: ChatCompletionRequest, engine: ChatEngine,
                        settings: ApiSettings) -> tuple[dict[str, Any], bool]:
    """Engine overrides for the request, and whether it samples.

    Greedy requests drop the sampling knobs so that they all share one batch whatever their
    temperature says. `presence_penalty` is passed on as `repetition_penalty`, as LLaMA-Factory does
    (0 means none); `repetition_penalty` itself is accepted as an extension and wins.
    """
    if request.frequency_penalty:
        raise ApiError(400, "frequency_penalty is not supported by this server; use presence_penalty or "
                            "repetition_penalty (a multiplicative penalty > 0, 1.0 = none).",
                       param="frequency_penalty")
    if request.presence_penalty is not None and request.presence_penalty < 0:
        raise ApiError(400, "presence_penalty must be >= 0 here: it is used as transformers' repetition_penalty "
                            "(as in LLaMA-Factory), where 0 means none and values > 1 discourage repetition.",
                       param="presence_penalty")
    stop = request.stop_list()
    _check_stop(stop, settings)
    defaults = engine.generating
    do_sample = request.do_sample if request.do_sample is not None else defaults.do_sample
    temperature = request.temperature if request.temperature is not None else defaults.temperature
    sampling = bool(do_sample) and temperature != 0
    overrides: dict[str, Any] = {"stop": stop}
    if sampling:
        overrides.update(do_sample=True, temperature=request.temperature, top_p=request.top_p)
    else:
        overrides["do_sample"] = False
    penalty = request.repetition_penalty or request.presence_penalty or None
    overrides["repetition_penalty"] = penalty
    return {k: v for k, v in overrides.items() if v is not None}, sampling


def _check_stop(stop: list[str] | None, settings: ApiSettings) -> None:
    stop = stop or []
    if len(stop) > settings.max_stop:
        raise ApiError(400, f"Invalid 'stop': at most {settings.max_stop} stop sequences are allowed, got "
                            f"{len(stop)}.", param="stop")
    for i, text in enumerate(stop):
        if len(text) > settings.max_stop_chars:
            raise ApiError(400, f"Invalid 'stop': a stop sequence may have at most {settings.max_stop_chars} "
                                f"characters; stop[{i}] has {len(text)}.", param="stop")


def requested_tokens(request: ChatCompletionRequest) -> tuple[int | None, str]:
    """The requested completion length and the field it came from."""
    if request.max_completion_tokens:
        return request.max_completion_tokens, "max_completion_tokens"
    return request.max_tokens, "max_tokens"


def check_lengths(request: ChatCompletionRequest, context: int | None, settings: ApiSettings) -> None:
    """max_tokens against the ceiling and the context length, and n x max_tokens, before rendering."""
    requested, param = requested_tokens(request)
    if requested is None:
        return
    ceiling = completion_ceiling(context, settings)
    if ceiling is not None and requested > ceiling:
        raise ApiError(400, f"{param} is too large: {requested}. This model supports at most {ceiling} completion "
                            f"tokens, whereas you provided {requested}.", param=param, code="invalid_value")
    if request.n * requested > settings.max_request_tokens:
        raise ApiError(400, f"n x {param} is too large: {request.n} x {requested} = {request.n * requested} "
                            f"completion tokens. This server generates at most {settings.max_request_tokens} "
                            f"per request; lower n or {param}.", param=param, code="invalid_value")


def completion_ceiling(context: int | None, settings: ApiSettings) -> int | None:
    limits = [x for x in (context, settings.max_tokens) if x]
    return min(limits) if limits else None


def max_new_tokens(request: ChatCompletionRequest, prompt_length: int, context: int | None, default: int,
                   settings: ApiSettings) -> int:
    """The completion length to generate; the prompt and the completion must fit the context.

    Without max_tokens the configured length applies, shortened to what fits the context, the
    API_MAX_TOKENS ceiling and the API_MAX_REQUEST_TOKENS budget shared by the `n` choices.
    """
    requested, _ = requested_tokens(request)
    if context is not None and (prompt_length >= context or (requested and prompt_length + requested > context)):
        raise ApiError(400, f"This model's maximum context length is {context} tokens. However, you requested "
                            f"{prompt_length + (requested or 0)} tokens ({prompt_length} in the messages, "
                            f"{requested or 0} in the completion). Please reduce the length of the messages or "
                            "completion.", param="messages", code="context_length_exceeded")
    if requested:
        return requested
    budget = [default, settings.max_request_tokens // request.n]
    if context is not None:
        budget.append(context - prompt_length)
    if settings.max_tokens:
        budget.append(settings.max_tokens)
    return max(1, min(budget))


def context_length(engine: ChatEngine) -> int | None:
    config = getattr(getattr(engine, "model", None), "config", None)
    length = getattr(engine, "context_length", None) or getattr(config, "max_position_embeddings", None)
    return length if isinstance(length, int) and length > 0 else None


class Admission:
    """Counts the chat requests in the server (parsed, queued, generating or streaming); past the limit, 429.

    Used from the event loop only, so a plain counter is enough. The slot is taken before the body
    is read, so a flood is refused before it costs memory or tokenizer time.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.active = 0

    def enter(self) -> Callable[[], None]:
        """Take a slot, or raise 429 with Retry-After; the returned function gives it back (once)."""
        if self.active >= self.limit:
            raise ApiError(429, f"The server is busy: {self.active} requests are queued or running, its limit "
                                "(API_MAX_CONCURRENT_REQUESTS). Retry after a second.", type="requests",
                           code="rate_limit_exceeded", headers={"Retry-After": "1"})
        self.active += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.active -= 1

        return release

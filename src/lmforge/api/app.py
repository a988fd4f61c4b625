"""The FastAPI application: OpenAI's chat completions API in front of an inference engine.

Routes (all behind `Authorization: Bearer <api_key>` when a key is set, `/health` and `/docs`
included, as LLaMA-Factory guards every route):
  GET  /health                  {"status": "ok", "model": <name>}
  GET  /v1/models               the one served model
  GET  /v1/models/{model}       that model, or 404 model_not_found
  POST /v1/chat/completions     non-streaming (batched with concurrent requests) or SSE streaming

A request must name the served model (`model_name`); any other name is a 404 `model_not_found`, as
OpenAI answers, so a client that believes it talks to another model finds out at once.
Generation happens in `Batcher`'s worker thread; the event loop only validates, tokenizes the prompt
and waits, so the server keeps answering while the model works.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse

from lmforge.api.batching import Batcher, BatcherClosed, StreamEvent
from lmforge.api.convert import Conversation, build_message, to_conversation
from lmforge.api.errors import ApiError, error_response, install_error_handlers, sse_error
from lmforge.api.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ModelCard,
    ModelList,
    Usage,
    completion_id,
)
from lmforge.errors import UserError

if TYPE_CHECKING:
    from lmforge.chat.base import ChatEngine


def create_app(engine: ChatEngine, model_name: str, api_key: str | None, *, max_batch_size: int = 32,
               batch_wait_ms: float = 10.0, root_path: str = "") -> FastAPI:
    """The API app serving `engine` as `model_name`; `api_key` (None or "": no auth) guards every route."""
    batcher = Batcher(engine, max_batch_size=max_batch_size, wait_ms=batch_wait_ms)
    created = int(time.time())
    context_length = _context_length(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        batcher.close()

    app = FastAPI(title="lmforge API", version="1", root_path=root_path, lifespan=lifespan)
    app.state.batcher = batcher
    app.state.engine = engine
    app.state.model_name = model_name
    install_error_handlers(app)

    if api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)
    # Added last, so it is the outermost layer and answers browser preflights before the key check.
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_credentials=False, allow_methods=["*"],
                       allow_headers=["*"])

    card = ModelCard(id=model_name, created=created)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": model_name}

    @app.get("/v1/models", response_model=ModelList)
    async def list_models() -> ModelList:
        return ModelList(data=[card])

    @app.get("/v1/models/{model:path}", response_model=ModelCard)
    async def get_model(model: str) -> ModelCard:
        _check_model(model, model_name, param=None)
        return card

    @app.post("/v1/chat/completions", response_model=ChatCompletion)
    async def chat_completions(request: ChatCompletionRequest):
        _check_model(request.model, model_name)
        overrides, sampling = _generation_settings(request, engine)
        conversation = to_conversation(request)
        use_tools = bool(conversation.tools) and request.tool_choice != "none"
        if not use_tools:
            conversation = Conversation(conversation.messages, conversation.system, None)
        prompt_ids = _prompt_ids(engine, conversation)
        overrides["max_new_tokens"] = _max_new_tokens(request, len(prompt_ids), context_length,
                                                      engine.generating.max_new_tokens)
        seed = request.seed if sampling else None
        if request.stream:
            return _streaming_response(batcher, engine, request, conversation, len(prompt_ids), overrides, seed,
                                       use_tools, model_name, deterministic=not sampling)
        try:
            future = batcher.submit(prompt_ids, request.n, overrides, seed, deterministic=not sampling)
            responses = await asyncio.wrap_future(future)
        except BatcherClosed as err:
            raise ApiError(503, str(err), type="server_error") from None
        choices = []
        for index, response in enumerate(responses):
            message, finish = build_message(response.text, response.finish_reason, engine.template, use_tools)
            choices.append(Choice(index=index, message=message, finish_reason=finish))
        completion_tokens = sum(r.response_length for r in responses)
        completion = ChatCompletion(
            id=completion_id(), model=model_name, choices=choices,
            usage=Usage(prompt_tokens=len(prompt_ids), completion_tokens=completion_tokens,
                        total_tokens=len(prompt_ids) + completion_tokens),
        )
        body = completion.model_dump(mode="json")
        for choice in body["choices"]:
            if choice["message"]["tool_calls"] is None:
                del choice["message"]["tool_calls"]  # OpenAI leaves the key out of plain answers
        return JSONResponse(body)

    return app


class ApiKeyMiddleware:
    """Refuse every HTTP request without `Authorization: Bearer <api_key>` (401 invalid_api_key).

    A plain ASGI middleware: it reads only the headers, so streamed answers pass through as they are
    (`@app.middleware("http")` would wrap every response body in a stream of its own).
    """

    def __init__(self, app, api_key: str):
        self.app = app
        self.api_key = api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
        if not given.strip() or scheme.lower() != b"bearer":
            err = ApiError(401, "You didn't provide an API key. Send it in an Authorization header using Bearer "
                                "auth (Authorization: Bearer YOUR_KEY).", code="invalid_api_key")
        elif not hmac.compare_digest(given.strip(), self.api_key):
            err = ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
        else:
            return await self.app(scope, receive, send)
        await error_response(err)(scope, receive, send)


def _prompt_ids(engine: ChatEngine, conversation: Conversation) -> list[int]:
    """The prompt tokens; a conversation the template cannot render is the request's fault (400)."""
    try:
        return engine.prompt_ids(conversation.messages, conversation.system, conversation.tools)
    except UserError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        # A tool format reads each tool's JSON schema (enum lists, property types): odd schemas fail here.
        name = getattr(engine.template, "name", "?")
        raise ApiError(400, f"The conversation cannot be rendered with the model's chat template '{name}': "
                            f"{type(err).__name__}: {err}",
                       param="tools" if conversation.tools else "messages") from None


def _check_model(requested: str, served: str, param: str | None = "model") -> None:
    if requested != served:
        raise ApiError(404, f"The model `{requested}` does not exist or you do not have access to it. "
                            f"This server serves `{served}` (see GET /v1/models).", param=param,
                       code="model_not_found")


def _generation_settings(request: ChatCompletionRequest, engine: ChatEngine) -> tuple[dict[str, Any], bool]:
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
    defaults = engine.generating
    do_sample = request.do_sample if request.do_sample is not None else defaults.do_sample
    temperature = request.temperature if request.temperature is not None else defaults.temperature
    sampling = bool(do_sample) and temperature != 0
    overrides: dict[str, Any] = {"stop": request.stop_list()}
    if sampling:
        overrides.update(do_sample=True, temperature=request.temperature, top_p=request.top_p)
    else:
        overrides["do_sample"] = False
    penalty = request.repetition_penalty or request.presence_penalty or None
    overrides["repetition_penalty"] = penalty
    return {k: v for k, v in overrides.items() if v is not None}, sampling


def _max_new_tokens(request: ChatCompletionRequest, prompt_length: int, context: int | None, default: int) -> int:
    """The requested completion length, checked against the model's context length."""
    requested = request.max_completion_tokens or request.max_tokens
    param = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
    if context is None:
        return requested or default
    if requested is not None and requested > context:
        raise ApiError(400, f"{param} is too large: {requested}. This model supports at most {context} completion "
                            f"tokens, whereas you provided {requested}.", param=param, code="invalid_value")
    if prompt_length >= context or (requested and prompt_length + requested > context):
        raise ApiError(400, f"This model's maximum context length is {context} tokens. However, you requested "
                            f"{prompt_length + (requested or 0)} tokens ({prompt_length} in the messages, "
                            f"{requested or 0} in the completion). Please reduce the length of the messages or "
                            "completion.", param="messages", code="context_length_exceeded")
    # Without max_tokens the configured length applies, shortened to what still fits.
    return requested or min(default, context - prompt_length)


def _context_length(engine: ChatEngine) -> int | None:
    config = getattr(getattr(engine, "model", None), "config", None)
    length = getattr(engine, "context_length", None) or getattr(config, "max_position_embeddings", None)
    return length if isinstance(length, int) and length > 0 else None


def _streaming_response(batcher: Batcher, engine: ChatEngine, request: ChatCompletionRequest, conversation: Conversation,
                        prompt_length: int, overrides: dict[str, Any], seed: int | None, use_tools: bool,
                        model_name: str, *, deterministic: bool) -> StreamingResponse:
    """SSE chunks: a role chunk per choice, content deltas, a finish chunk per choice, usage if asked, [DONE].

    With tools the answer is held back until it ends, then sent as one `tool_calls` delta (or one
    content delta when it holds no call): a partial call cannot be parsed.
    Streamed usage and the "length" finish reason come from re-tokenizing the answer text, since
    `stream_chat` yields text, not tokens; non-streaming usage is exact.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[StreamEvent] = asyncio.Queue()

    def sink(event: StreamEvent) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, event)
        except RuntimeError:  # the event loop has shut down; nobody is listening
            pass

    try:
        handle = batcher.submit_stream(conversation.messages, conversation.system, conversation.tools, sink,
                                       n=request.n, overrides=overrides, seed=seed, deterministic=deterministic)
    except BatcherClosed as err:
        raise ApiError(503, str(err), type="server_error") from None
    cid, created = completion_id(), int(time.time())
    max_new = overrides["max_new_tokens"]
    include_usage = bool(request.stream_options and request.stream_options.include_usage)

    def chunk(choices: list[dict[str, Any]], usage: Usage | None = None) -> str:
        body: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created,
                                "model": model_name, "choices": choices}
        if usage is not None:
            body["usage"] = usage.model_dump()
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def choice(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

    async def events() -> AsyncIterator[str]:
        texts = [""] * request.n
        completion_tokens = 0
        try:
            for index in range(request.n):
                yield chunk([choice(index, {"role": "assistant", "content": ""})])
            ended = 0
            while ended < request.n:
                kind, index, value = await queue.get()
                if kind == "error":
                    yield sse_error(value)
                    return
                if kind == "piece":
                    texts[index] += value
                    if not use_tools:
                        yield chunk([choice(index, {"content": value})])
                    continue
                ended += 1
                tokens = len(engine.tokenizer.encode(texts[index], add_special_tokens=False))
                completion_tokens += tokens
                finish = "length" if tokens >= max_new else "stop"
                if use_tools:
                    message, finish = build_message(texts[index], finish, engine.template, True)
                    if message.tool_calls:
                        calls = [{"index": i, **call.model_dump()} for i, call in enumerate(message.tool_calls)]
                        yield chunk([choice(index, {"tool_calls": calls})])
                    elif texts[index]:
                        yield chunk([choice(index, {"content": texts[index]})])
                yield chunk([choice(index, {}, finish)])
            if include_usage:
                yield chunk([], Usage(prompt_tokens=prompt_length, completion_tokens=completion_tokens,
                                      total_tokens=prompt_length + completion_tokens))
            yield "data: [DONE]\n\n"
        finally:
            handle.cancel()  # a no-op once finished; stops sending when the client went away

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

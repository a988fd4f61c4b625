"""The FastAPI application: OpenAI's chat completions API in front of an inference engine.

Routes (all behind `Authorization: Bearer <api_key>` when a key is set, `/health` and `/docs`
included, as LLaMA-Factory guards every route):
  GET  /health                  {"status": "ok", "model", "requests", "worker": {"state", "queued", ...}};
                                503 with status "error" while the worker is not serving
  GET  /v1/models               the served model (API_MODEL_NAME)
  GET  /v1/models/{model}       that model
  POST /v1/chat/completions     non-streaming or SSE streaming, both batched with concurrent requests

Any model name is served, as LLaMA-Factory does, and answers report the name the client sent;
with API_STRICT_MODEL_NAME=1 other names get OpenAI's 404 `model_not_found`.

The event loop only admits, waits and answers: parsing a body, rendering the conversation with
the chat template and tokenizing it run on a small thread pool, and generation in `Batcher`'s
worker thread, so `/health` answers at once however large or busy the requests are. A request whose
client disconnects is cancelled at once, and its rows stop generating at the next step.
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from pydantic import TypeAdapter, ValidationError

from lmforge.api.batching import Batcher, BatcherClosed, Job
from lmforge.api.convert import Conversation, build_message, to_conversation
from lmforge.api.errors import ApiError, install_error_handlers, internal_error, validation_error
from lmforge.api.guard import ApiKeyMiddleware, RequestGuard, request_id
from lmforge.api.limits import (
    Admission,
    check_lengths,
    check_model,
    context_length,
    generation_settings,
    max_new_tokens,
)
from lmforge.api.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    ModelCard,
    ModelList,
    Usage,
    completion_id,
)
from lmforge.api.settings import ApiSettings
from lmforge.api.streaming import stream_response, submit_error
from lmforge.errors import UserError
from lmforge.utils.logging import get_logger

if TYPE_CHECKING:
    from lmforge.chat.base import ChatEngine

logger = get_logger(__name__)

NOT_AN_OBJECT = ("The request body must be a JSON object with `model` and `messages` (sent with Content-Type: "
                 "application/json).")
_REQUEST_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}}}}
_MESSAGES = TypeAdapter(list[ChatMessage])
_SLICE = 2000  # messages validated per call (see `parse_request`)


def create_app(engine: ChatEngine, settings: ApiSettings | None = None) -> FastAPI:
    """The API app serving `engine` with `settings` (defaults: `ApiSettings()`, no key, loopback)."""
    settings = settings or ApiSettings()
    batcher = Batcher(engine, max_batch_size=settings.max_batch_size, wait_ms=settings.batch_wait_ms)
    admission = Admission(settings.max_concurrent_requests)
    # Two threads: parsing and tokenizing are CPU work; more would only take cores from generation.
    workers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lmforge-api-render")
    created = int(time.time())
    context = context_length(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        # Called from the SIGTERM handler (see server.py): queued requests get a 503 at once, while
        # the running batch may finish within the shutdown timeout.
        app.state.begin_shutdown = lambda: loop.call_soon_threadsafe(batcher.drain)
        yield
        batcher.close()
        workers.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="lmforge API", version="1", root_path=settings.root_path, lifespan=lifespan)
    app.state.batcher = batcher
    app.state.engine = engine
    app.state.settings = settings
    app.state.admission = admission
    app.state.begin_shutdown = batcher.drain
    install_error_handlers(app)

    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    origins = settings.allowed_origins()
    if origins:  # outside the key check, so that browser preflights (which carry no key) are answered
        app.add_middleware(CORSMiddleware, allow_origins=list(origins), allow_credentials=False,
                           allow_methods=["*"], allow_headers=["*"], expose_headers=["x-request-id"])
    app.add_middleware(RequestGuard, settings=settings)  # added last: the outermost layer

    async def in_worker(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(workers, partial(fn, *args))

    @app.get("/health")
    async def health() -> JSONResponse:
        worker = batcher.status()
        ok = worker["state"] in ("idle", "generating")
        body = {"status": "ok" if ok else "error", "model": settings.model_name, "requests": admission.active,
                "worker": worker}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/v1/models", response_model=ModelList)
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=settings.model_name, created=created)])

    @app.get("/v1/models/{model:path}", response_model=ModelCard)
    async def get_model(model: str) -> ModelCard:
        check_model(model, settings, param=None)
        return ModelCard(id=model, created=created)

    @app.post("/v1/chat/completions", response_model=ChatCompletion, openapi_extra=_REQUEST_BODY)
    async def chat_completions(raw: Request):
        rid = request_id(raw.scope)
        release = admission.enter()
        try:
            body = await raw.body()
            request = await in_worker(parse_request, raw.headers.get("content-type", ""), body)
            check_model(request.model, settings)
            overrides, sampling = generation_settings(request, engine, settings)
            check_lengths(request, context, settings)
            conversation = await in_worker(to_conversation, request, settings)  # decodes images: off the loop
            use_tools = bool(conversation.tools) and request.tool_choice != "none"
            if not use_tools:
                conversation = Conversation(conversation.messages, conversation.system, None, conversation.media)
            prompt_ids = await in_worker(_prompt_ids, engine, conversation, rid)
            overrides["max_new_tokens"] = max_new_tokens(request, len(prompt_ids), context,
                                                         engine.generating.max_new_tokens, settings)
            seed = request.seed if sampling else None
            if request.stream:
                try:
                    response = stream_response(
                        batcher, engine, prompt_ids, n=request.n, overrides=overrides, seed=seed,
                        deterministic=not sampling,
                        conversation=(conversation.messages, conversation.system, conversation.tools),
                        use_tools=use_tools, model=request.model, request_id=rid, release=release,
                        media=conversation.media,
                        include_usage=bool(request.stream_options and request.stream_options.include_usage))
                except BatcherClosed as err:
                    raise submit_error(err) from None
                release = None  # the stream gives the slot back when it ends
                return response
            try:
                job = batcher.submit(prompt_ids, request.n, overrides, seed, deterministic=not sampling,
                                     request_id=rid, media=conversation.media)
            except BatcherClosed as err:
                raise submit_error(err) from None
            responses = await _answers(raw, job)
            if responses is None:
                return Response(status_code=499)  # nobody is listening; nginx's "client closed request"
            return _completion(responses, request.model, len(prompt_ids), engine, use_tools)
        finally:
            if release is not None:
                release()

    fastapi_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        # The route reads its body itself (after admission, off the event loop), so FastAPI does not
        # see the request model: its schema is added here for /docs and schema-driven clients.
        if app.openapi_schema is None:
            schema = fastapi_openapi()
            request_schema = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}-Input")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in request_schema.pop("$defs", {}).items():
                components[f"{name}-Input"] = definition
            components["ChatCompletionRequest"] = request_schema
        return app.openapi_schema

    app.openapi = openapi
    return app


async def _answers(raw: Request, job: Job) -> list | None:
    """The job's answers; None (and the job cancelled) when the client disconnects first."""
    waiter = asyncio.wrap_future(job.future)
    gone = asyncio.ensure_future(_disconnect(raw))
    try:
        await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the server is stopping (shutdown timeout): stop generating too
        job.cancel()
        raise
    finally:
        gone.cancel()
    if not waiter.done():
        job.cancel()  # the worker stops its rows and cancels its future (and with it `waiter`)
        return None
    try:
        return waiter.result()
    except BatcherClosed as err:
        raise submit_error(err) from None
    except Exception:  # the worker logged it with the request id
        raise internal_error(job.request_id, "generating the answer") from None


async def _disconnect(raw: Request) -> None:
    """Returns when the client has gone (the body is read, so the next message is the disconnect)."""
    while (await raw.receive())["type"] != "http.disconnect":
        pass


def _completion(responses: list, model: str, prompt_length: int, engine: ChatEngine, use_tools: bool) -> JSONResponse:
    choices = []
    for index, response in enumerate(responses):
        message, finish = build_message(response.text, response.finish_reason, engine.template, use_tools)
        choices.append(Choice(index=index, message=message, finish_reason=finish))
    completion_tokens = sum(r.response_length for r in responses)
    completion = ChatCompletion(id=completion_id(), model=model, choices=choices,
                                usage=Usage(prompt_tokens=prompt_length, completion_tokens=completion_tokens,
                                            total_tokens=prompt_length + completion_tokens))
    body = completion.model_dump(mode="json")
    for choice in body["choices"]:
        if choice["message"]["tool_calls"] is None:
            del choice["message"]["tool_calls"]  # OpenAI leaves the key out of plain answers
    return JSONResponse(body)


def parse_request(content_type: str, body: bytes) -> ChatCompletionRequest:
    """The request body as a ChatCompletionRequest, or a 400 naming the problem (run off the event loop)."""
    media = content_type.split(";")[0].strip().lower()
    if media and not (media == "application/json" or (media.startswith("application/") and media.endswith("+json"))):
        raise ApiError(400, NOT_AN_OBJECT)
    if not body.strip():
        raise ApiError(400, "The request body is missing. Send a JSON object with `model` and `messages`.")
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        raise ApiError(400, f"We could not parse the JSON body of your request ({err.msg}). The API expects a "
                            "JSON object like {\"model\": ..., \"messages\": [...]}.") from None
    except (UnicodeDecodeError, RecursionError, ValueError) as err:
        reason = {UnicodeDecodeError: "it is not UTF-8", RecursionError: "it is nested too deeply"}.get(type(err), err)
        raise ApiError(400, f"We could not parse the JSON body of your request ({reason}).") from None
    try:
        messages = data.get("messages") if isinstance(data, dict) else None
        if not isinstance(messages, list) or len(messages) <= _SLICE:
            return ChatCompletionRequest.model_validate(data)
        # Tens of thousands of messages keep pydantic busy long enough (holding the GIL) to stall the
        # event loop; validated in slices, the loop gets its turn in between.
        parsed: list[ChatMessage] = []
        for start in range(0, len(messages), _SLICE):
            try:
                parsed += _MESSAGES.validate_python(messages[start:start + _SLICE])
            except ValidationError as err:
                errors = [{**e, "loc": ("messages", start + e["loc"][0], *e["loc"][1:])} for e in err.errors()]
                raise validation_error(errors) from None
        request = ChatCompletionRequest.model_validate({**data, "messages": []})
        request.messages = parsed
        return request
    except ValidationError as err:
        raise validation_error(list(err.errors())) from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _prompt_ids(engine: ChatEngine, conversation: Conversation, rid: str) -> list[int]:
    """The prompt tokens; a conversation the template cannot render is the request's fault (400)."""
    try:
        return engine.prompt_ids(conversation.messages, conversation.system, conversation.tools, conversation.media)
    except UserError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError):
        # A tool format reads each tool's JSON schema (enum lists, property types): odd schemas fail here.
        name = getattr(engine.template, "name", "?")
        logger.warning("Request %s: the chat template '%s' cannot render the conversation", rid, name, exc_info=True)
        what = "tools (check their JSON schemas)" if conversation.tools else "messages"
        raise ApiError(400, f"The conversation cannot be rendered with the model's chat template '{name}': it fails "
                            f"on these {what}. Request id {rid}, for the server log.",
                       param="tools" if conversation.tools else "messages") from None

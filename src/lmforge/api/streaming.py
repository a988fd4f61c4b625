"""Streaming answers: the batcher's events of one job as OpenAI's server-sent chunks.

A streaming request is a batcher job like any other (batched with the requests that arrive with
it, its `n` sampled choices rows of one batch); the worker hands its events to an asyncio queue,
and this module turns them into chunks: a role chunk per choice, content deltas as they come
(choices interleaved), a finish chunk per choice, the usage chunk when asked, then `[DONE]`.
With tools the answer is held back until it ends, then sent as one `tool_calls` delta (or one
content delta when it holds no call): a partial call cannot be parsed.

When the response ends for any reason (done, client gone, server stopping) the job is cancelled,
which stops its rows at the next decoding step, and the request's admission slot is given back.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from fastapi.responses import StreamingResponse

from lmforge.api.batching import BatcherClosed, StreamEvent
from lmforge.api.convert import build_message
from lmforge.api.errors import SERVER_ERROR, ApiError, internal_error, sse_error
from lmforge.api.protocol import Usage, completion_id

if TYPE_CHECKING:
    from lmforge.api.batching import Batcher
    from lmforge.chat.base import ChatEngine, Media, Response


class _ClosingStream(StreamingResponse):
    """A StreamingResponse that runs `on_close` however it ends, even when its body never started."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None], **kwargs):
        super().__init__(content, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def stream_response(batcher: Batcher, engine: ChatEngine, prompt_ids: list[int], *, n: int,
                    overrides: dict[str, Any], seed: int | None, deterministic: bool,
                    conversation: tuple, use_tools: bool, model: str, include_usage: bool, request_id: str,
                    release: Callable[[], None], media: Media | None = None) -> StreamingResponse:
    """Queue the job and return its SSE response (BatcherClosed, before anything is sent, is a 503)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[StreamEvent] = asyncio.Queue()

    def sink(event: StreamEvent) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, event)
        except RuntimeError:  # the event loop has shut down; nobody is listening
            pass

    job = batcher.submit(prompt_ids, n, overrides, seed, deterministic=deterministic, request_id=request_id,
                         sink=sink, conversation=conversation, media=media)
    cid, created = completion_id(), int(time.time())

    def chunk(choices: list[dict[str, Any]], usage: Usage | None = None) -> str:
        body: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                                "choices": choices}
        if usage is not None:
            body["usage"] = usage.model_dump()
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def choice(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

    def finish_chunks(index: int, response: Response) -> list[str]:
        finish = response.finish_reason
        out = []
        if use_tools:
            message, finish = build_message(response.text, finish, engine.template, True)
            if message.tool_calls:
                calls = [{"index": i, **call.model_dump()} for i, call in enumerate(message.tool_calls)]
                out.append(chunk([choice(index, {"tool_calls": calls})]))
            elif response.text:
                out.append(chunk([choice(index, {"content": response.text})]))
        out.append(chunk([choice(index, {}, finish)]))
        return out

    async def events() -> AsyncIterator[str]:
        for index in range(n):
            yield chunk([choice(index, {"role": "assistant", "content": ""})])
        completion_tokens = 0
        ended = 0
        while ended < n:
            kind, index, value = await queue.get()
            if kind == "error":
                yield sse_error(_stream_error(value, request_id))
                return
            if kind == "piece":
                if not use_tools:
                    yield chunk([choice(index, {"content": value})])
                continue
            ended += 1
            completion_tokens += value.response_length
            for text in finish_chunks(index, value):
                yield text
        if include_usage:
            prompt_tokens = len(prompt_ids)
            yield chunk([], Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                  total_tokens=prompt_tokens + completion_tokens))
        yield "data: [DONE]\n\n"

    def on_close() -> None:
        job.cancel()  # a no-op once finished; stops generating when the client went away
        release()

    return _ClosingStream(events(), on_close, media_type="text/event-stream",
                          headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _stream_error(err: BaseException, request_id: str) -> ApiError:
    if isinstance(err, ApiError):
        return err
    if isinstance(err, BatcherClosed):
        return ApiError(503, f"{err} Retry the request.", type=SERVER_ERROR, code="server_shutting_down")
    return internal_error(request_id, "generating the answer")


def submit_error(err: BatcherClosed) -> ApiError:
    """The 503 for a job the batcher refused (the server is shutting down)."""
    return ApiError(503, f"{err} Retry the request.", type=SERVER_ERROR, code="server_shutting_down",
                    headers={"Retry-After": "1"})

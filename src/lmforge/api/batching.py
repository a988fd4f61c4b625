"""Dynamic batching: requests that arrive together are generated together.

One worker thread owns the model; nothing else calls it, so generation never runs on the event loop
and a seeded request sees a random state nobody else touches. Every request, streaming or not, is a
*job*: its prompt once per choice (`n`), or once when it is greedy, since its `n` answers are then
the same. The worker takes jobs in arrival order: it waits until `wait_ms` after the oldest pending
job arrived (or until `max_batch_size` rows are pending), then takes every pending job with the same
generation settings, up to `max_batch_size` rows (a job is never split, so one larger job runs
alone), and runs them in one `engine.generate_batch` call (left-padded). Jobs that arrive while a
batch is generating are collected for the next one without waiting, so throughput grows with the
number of concurrent clients. Jobs with other settings (max_tokens, stop, sampling knobs) form
their own batches; a request with a `seed` that samples runs alone after `torch.manual_seed(seed)`,
since rows that share a batch share the random stream.

With an engine that `watches_generation` (transformers), the batch is followed token by token
(`GenerationWatch`): a streaming job gets its text as it grows, every job gets its answers as soon
as its own rows end, and a cancelled job (its client went away, or the server is closing) stops at
the next decoding step while the rest of the batch goes on. Other engines (vLLM, llama.cpp) answer
batches whole, and stream one conversation at a time through `stream_chat`.

The worker never dies with a request: an exception fails the jobs of that batch (their callers get
an error) and the loop goes on; `status()` says what it is doing, for `/health`.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lmforge.chat.base import GenerationWatch, Media, Response
from lmforge.utils.logging import get_logger

if TYPE_CHECKING:
    from lmforge.chat.base import ChatEngine

logger = get_logger(__name__)

# ("piece", choice, text) | ("end", choice, Response) | ("error", -1, exception)
StreamEvent = tuple[str, int, Any]


class BatcherClosed(RuntimeError):
    """The server is shutting down: the job was not run."""


_ids = itertools.count()


@dataclass(eq=False)
class Job:
    """One request: `rows` generated rows serving its `n` choices; `future` gets the `n` Responses
    (or is cancelled, once generation has stopped, when the job was cancelled).

    A streaming job also has a `sink`, called from the worker thread with each `StreamEvent`.
    `conversation` (messages, system, tools) is what engines without a watch stream from.
    """

    prompt_ids: list[int]
    n: int
    rows: int
    overrides: dict[str, Any]
    seed: int | None
    key: tuple
    request_id: str
    sink: Callable[[StreamEvent], None] | None = None
    conversation: tuple[list[dict[str, str]], str | None, str | None] | None = None
    media: Media | None = None  # the images and videos `prompt_ids` holds the vision tokens of
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)
    cancelled_at: float | None = None
    responses: list[Response | None] = field(default_factory=list)

    def cancel(self) -> None:
        """Nobody waits for the answer any more: drop the job if queued, stop its rows if generating."""
        if self.cancelled_at is None:
            self.cancelled_at = time.monotonic()

    @property
    def cancelled(self) -> bool:
        return self.cancelled_at is not None

    def choices(self, row: int) -> range:
        """The choices a row answers: all of them for a greedy job generated once."""
        return range(self.n) if self.rows == 1 else range(row, row + 1)

    def emit(self, event: StreamEvent) -> None:
        if self.sink is None or self.cancelled:
            return
        try:
            self.sink(event)
        except Exception:  # a broken sink stops its own job, never the worker
            logger.exception("Request %s: its stream could not take an event; cancelling it", self.request_id)
            self.cancel()

    def row_ended(self, row: int, response: Response) -> None:
        if self.future.done() or self.responses[row] is not None:
            return
        self.responses[row] = response
        # Settled before the "end" events go out: a stream closes (and cancels its job) once it has them.
        if all(r is not None for r in self.responses):
            if self.cancelled:  # nobody waits for the answers; the log says how soon generation stopped
                stopped = time.monotonic() - self.cancelled_at
                tokens = sum(r.response_length for r in self.responses)
                logger.info("Request %s cancelled: generation stopped after %d tokens, %.3f s after the "
                            "cancellation", self.request_id, tokens, stopped)
                self.future.cancel()
                return
            answers = self.responses * self.n if self.rows == 1 else list(self.responses)
            self.future.set_result(answers)
        for choice in self.choices(row):
            self.emit(("end", choice, response))

    def fail(self, err: BaseException) -> None:
        if self.future.done():
            return
        self.emit(("error", -1, err))
        self.future.set_exception(err)


class _Watch(GenerationWatch):
    """The batch's rows mapped back to their jobs."""

    def __init__(self, owners: list[tuple[Job, int]], closing: threading.Event):
        self.owners = owners
        self.closing = closing

    def streams(self, row: int) -> bool:
        return self.owners[row][0].sink is not None

    def cancelled(self, row: int) -> bool:
        return self.owners[row][0].cancelled or self.closing.is_set()

    def piece(self, row: int, text: str) -> None:
        job, own = self.owners[row]
        for choice in job.choices(own):
            job.emit(("piece", choice, text))

    def end(self, row: int, response: Response) -> None:
        job, own = self.owners[row]
        job.row_ended(own, response)


class Batcher:
    """Queue of generation jobs served by one worker thread (see the module docstring)."""

    def __init__(self, engine: ChatEngine, *, max_batch_size: int = 32, wait_ms: float = 10.0):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.wait_s = max(wait_ms, 0.0) / 1000
        self.generate_calls = 0  # engine.generate_batch calls made
        self.stream_calls = 0  # engine.stream_chat calls made (engines without a watch)
        self.failures = 0  # batches that failed with an exception
        self.restarts = 0  # worker threads started again after one died
        self._pending: deque[Job] = deque()
        self._running: list[Job] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._draining = False  # no new jobs; pending ones failed
        self._closing = threading.Event()  # also stop the running batch

    # -- request side (any thread) ----------------------------------------------------------------
    def submit(self, prompt_ids: list[int], n: int = 1, overrides: dict[str, Any] | None = None,
               seed: int | None = None, *, deterministic: bool = False, request_id: str = "-",
               sink: Callable[[StreamEvent], None] | None = None,
               conversation: tuple[Sequence[dict[str, str]], str | None, str | None] | None = None,
               media: Media | None = None) -> Job:
        """Queue a prompt for `n` answers; `job.future` gets a list of `n` engine Responses.

        Pass `seed` only when the request samples: a seeded job is generated alone. A
        `deterministic` (greedy) request is generated once and its answer repeated `n` times.
        With `sink` the job streams: each choice sends its pieces and then an "end" event with its
        Response; a failure sends one "error" event. An engine without a watch streams from
        `conversation`, one job at a time.
        """
        overrides = dict(overrides or {})
        alone = seed is not None or (sink is not None and not self.engine.watches_generation)
        key = ("alone", next(_ids)) if alone else _settings_key(overrides)
        rows = 1 if deterministic else n
        messages = (list(conversation[0]), conversation[1], conversation[2]) if conversation else None
        job = Job(list(prompt_ids), n, rows, overrides, seed, key, request_id, sink, messages, media or None)
        job.responses = [None] * rows
        with self._cond:
            if self._draining:
                raise BatcherClosed("The server is shutting down.")
            if self._thread is None or not self._thread.is_alive():
                if self._thread is not None:  # the loop catches everything, so this is a bug: say so, go on
                    logger.error("The API batch worker had stopped; starting it again")
                    self.restarts += 1
                self._thread = threading.Thread(target=self._work, name="lmforge-api-batcher", daemon=True)
                self._thread.start()
            self._pending.append(job)
            self._cond.notify_all()
        return job

    def status(self) -> dict[str, Any]:
        """What the worker is doing: state (idle, generating, draining, stopped, dead), queue and failures."""
        with self._cond:
            alive = self._thread is not None and self._thread.is_alive()
            if self._closing.is_set():
                state = "stopped" if not alive else "draining"
            elif self._thread is not None and not alive:
                state = "dead"
            elif self._draining:
                state = "draining"
            else:
                state = "generating" if self._running else "idle"
            return {"state": state, "queued": len(self._pending), "running": len(self._running),
                    "failures": self.failures, "restarts": self.restarts}

    def drain(self) -> None:
        """Refuse new jobs and fail the queued ones (BatcherClosed); the running batch goes on."""
        with self._cond:
            self._draining = True
            self._fail_pending(BatcherClosed("The server is shutting down."))
            self._cond.notify_all()

    def close(self, timeout: float = 5.0) -> None:
        """Drain, stop the running batch at its next step, and wait (up to `timeout`) for the worker to end."""
        self.drain()
        self._closing.set()
        with self._cond:
            for job in self._running:
                job.cancel()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    # -- worker side ------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            batch: list[Job] = []
            try:
                batch = self._next()
                if not batch:
                    return
                self._run(batch)
            except BaseException as err:  # a failure fails its own requests; the loop goes on
                self.failures += 1
                ids = ", ".join(job.request_id for job in batch) or "none"
                logger.exception("The API batch worker failed (requests: %s); they get an error, the worker goes on",
                                 ids)
                for job in batch:
                    job.fail(err)
                if not batch:  # the failure was in picking jobs: fail them all rather than loop on it
                    with self._cond:
                        self._fail_pending(err)
            finally:
                with self._cond:
                    self._running = []

    def _next(self) -> list[Job]:
        """The next batch of compatible jobs; empty once closed."""
        with self._cond:
            while True:
                while not self._pending and not self._closing.is_set():
                    self._cond.wait()
                if self._closing.is_set():
                    return []
                first = self._pending[0]
                deadline = first.arrived + self.wait_s
                while not self._closing.is_set() and self._rows(first.key) < self.max_batch_size:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                batch = self._take(first.key)
                if batch:
                    self._running = batch
                    return batch

    def _rows(self, key: tuple) -> int:
        return sum(job.rows for job in self._pending if job.key == key)

    def _take(self, key: tuple) -> list[Job]:
        batch: list[Job] = []
        rows = 0
        kept: deque[Job] = deque()
        for job in self._pending:
            if job.cancelled:  # its caller gave up while it was queued
                logger.info("Request %s cancelled while queued: not generated", job.request_id)
                job.future.cancel()
            elif job.key == key and (not batch or rows + job.rows <= self.max_batch_size):
                batch.append(job)
                rows += job.rows
            else:
                kept.append(job)
        self._pending = kept
        return batch

    def _fail_pending(self, err: BaseException) -> None:
        for job in self._pending:
            job.fail(err)
        self._pending.clear()

    def _run(self, batch: list[Job]) -> None:
        if batch[0].seed is not None:
            _manual_seed(batch[0].seed)
        if not self.engine.watches_generation and batch[0].sink is not None:
            self._stream_alone(batch[0])
            return
        owners = [(job, row) for job in batch for row in range(job.rows)]
        prompts = [job.prompt_ids for job, _ in owners]
        media = [job.media for job, _ in owners]
        extra = {"media": media} if any(media) else {}
        self.generate_calls += 1
        if self.engine.watches_generation:
            responses = self.engine.generate_batch(prompts, watch=_Watch(owners, self._closing), **extra,
                                                   **batch[0].overrides)
        else:
            responses = self.engine.generate_batch(prompts, **extra, **batch[0].overrides)
        for (job, row), response in zip(owners, responses):
            job.row_ended(row, response)  # a no-op for rows the watch already ended

    def _stream_alone(self, job: Job) -> None:
        """An engine without a watch: `stream_chat` per choice (once for a greedy job), stopped on cancel."""
        messages, system, tools = job.conversation
        for row in range(job.rows):
            if job.cancelled or self._closing.is_set():
                job.row_ended(row, Response("", 0, len(job.prompt_ids), "stop"))
                continue
            self.stream_calls += 1
            overrides = {**job.overrides, "stopping_criteria": _stop_when(job, self._closing)}
            text = ""
            for piece in self.engine.stream_chat(messages, system, tools, job.media, **overrides):
                text += piece
                for choice in job.choices(row):
                    job.emit(("piece", choice, piece))
            # stream_chat yields text, not tokens: count the answer's tokens by tokenizing it again.
            tokens = len(self.engine.tokenizer.encode(text, add_special_tokens=False))
            finish = "length" if tokens >= job.overrides.get("max_new_tokens", 1 << 62) else "stop"
            job.row_ended(row, Response(text, tokens, len(job.prompt_ids), finish))


def _settings_key(overrides: dict[str, Any]) -> tuple:
    """A hashable form of generation settings: jobs batch together only when theirs are equal."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in overrides.items() if v is not None))


def _stop_when(job: Job, closing: threading.Event):
    """A transformers-style stopping criterion that ends generation once the job is cancelled."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            stop = job.cancelled or closing.is_set()
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([Cancelled()])


def _manual_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)

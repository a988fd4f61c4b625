"""Dynamic batching: requests that arrive together are generated together.

One worker thread owns the model; nothing else calls it, so generation never runs on the event loop
and a seeded request sees a random state nobody else touches. The worker takes jobs in arrival order:

  * A non-streaming request is a *batch job*: its prompt once per choice (`n`), or once when it is
    greedy, since its `n` answers are then the same. When the oldest pending job is one, the worker
    waits until `wait_ms` after its arrival (or until `max_batch_size` rows are pending), then takes
    every pending batch job with the same generation settings, up to `max_batch_size` rows, and
    runs them in one `engine.generate_batch` call (left-padded). Jobs that arrive while a batch is
    generating are collected for the next one without waiting, so throughput grows with the number
    of concurrent clients. Jobs with other settings (max_tokens, stop, sampling knobs) form their
    own batches.
  * A request with a `seed` that samples runs in a batch of its own after `torch.manual_seed(seed)`:
    rows that share a batch share the random stream, so batching it would make its answer depend on
    its neighbours.
  * A streaming request is a *stream job*: it runs alone through `engine.stream_chat`, one at a time
    (its `n` choices one after the other, or once for all of them when greedy). Batch jobs that
    arrive meanwhile wait for it, at most for one answer, and then go together; a stream never waits
    for more than the jobs ahead of it. A stream whose client went away is stopped at the next token:
    the engine passes extra overrides on to transformers' `generate`, and the stream adds a stopping
    criterion that watches for the cancellation.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lmforge.utils.logging import get_logger

if TYPE_CHECKING:
    from lmforge.chat.base import ChatEngine

logger = get_logger(__name__)

StreamEvent = tuple[str, int, Any]  # ("piece", choice, text) | ("end", choice, None) | ("error", -1, exception)


class BatcherClosed(RuntimeError):
    """The server is shutting down: the job was not run."""


_ids = itertools.count()


@dataclass
class _BatchJob:
    prompts: list[list[int]]
    copies: int  # answers wanted per prompt row: n for a deterministic request generated once
    overrides: dict[str, Any]
    seed: int | None
    key: tuple
    future: Future
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class _StreamJob:
    messages: list[dict[str, str]]
    system: str | None
    tools: str | None
    n: int
    overrides: dict[str, Any]
    seed: int | None
    sink: Callable[[StreamEvent], None]
    deterministic: bool
    cancelled: threading.Event = field(default_factory=threading.Event)


class StreamHandle:
    """Lets the request side tell the worker that nobody reads a stream any more."""

    def __init__(self, job: _StreamJob):
        self._job = job

    def cancel(self) -> None:
        self._job.cancelled.set()


class Batcher:
    """Queue of generation jobs served by one worker thread (see the module docstring)."""

    def __init__(self, engine: ChatEngine, *, max_batch_size: int = 32, wait_ms: float = 10.0):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.wait_s = max(wait_ms, 0.0) / 1000
        self.generate_calls = 0  # engine.generate_batch calls made
        self.stream_calls = 0  # engine.stream_chat calls made
        self._pending: deque[_BatchJob | _StreamJob] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- request side (any thread) ----------------------------------------------------------------
    def submit(self, prompt_ids: list[int], n: int = 1, overrides: dict[str, Any] | None = None,
               seed: int | None = None, *, deterministic: bool = False) -> Future:
        """Queue a prompt for `n` answers; the future's result is a list of `n` engine Responses.

        Pass `seed` only when the request samples: a seeded job is generated alone. A
        `deterministic` (greedy) request is generated once and its answer repeated `n` times.
        """
        overrides = dict(overrides or {})
        key = ("seed", next(_ids)) if seed is not None else _settings_key(overrides)
        rows, copies = (1, n) if deterministic else (n, 1)
        job = _BatchJob([list(prompt_ids)] * rows, copies, overrides, seed, key, Future())
        self._put(job)
        return job.future

    def submit_stream(self, messages: list[dict[str, str]], system: str | None, tools: str | None,
                      sink: Callable[[StreamEvent], None], *, n: int = 1, overrides: dict[str, Any] | None = None,
                      seed: int | None = None, deterministic: bool = False) -> StreamHandle:
        """Queue a streaming answer; `sink` is called from the worker thread with each event.

        Each choice sends its pieces and then an "end" event; a failure sends one "error" event.
        A `deterministic` (greedy) request is generated once and its pieces sent for every choice.
        """
        job = _StreamJob(list(messages), system, tools, n, dict(overrides or {}), seed, sink, deterministic)
        self._put(job)
        return StreamHandle(job)

    def close(self) -> None:
        """Stop the worker after the job it is running; pending jobs fail with `BatcherClosed`."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _put(self, job: _BatchJob | _StreamJob) -> None:
        with self._cond:
            if self._closed:
                raise BatcherClosed("The server is shutting down.")
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="lmforge-api-batcher", daemon=True)
                self._thread.start()
            self._pending.append(job)
            self._cond.notify_all()

    # -- worker side ------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            try:
                if isinstance(job, _StreamJob):
                    self._run_stream(job)
                else:
                    self._run_batch(job)
            except Exception:  # a failing sink must not take the worker down with it
                logger.exception("The API batch worker caught an error")

    def _next(self) -> list[_BatchJob] | _StreamJob | None:
        """The next stream job, or the next batch of compatible batch jobs; None once closed."""
        with self._cond:
            while True:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    self._fail_pending()
                    return None
                first = self._pending[0]
                if isinstance(first, _StreamJob):
                    return self._pending.popleft()
                deadline = first.arrived + (self.wait_s if first.seed is None else 0.0)
                while not self._closed and self._rows(first.key) < self.max_batch_size:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                batch = self._take(first.key)
                if batch:
                    return batch

    def _rows(self, key: tuple) -> int:
        return sum(len(job.prompts) for job in self._pending if isinstance(job, _BatchJob) and job.key == key)

    def _take(self, key: tuple) -> list[_BatchJob]:
        batch: list[_BatchJob] = []
        rows = 0
        kept: deque[_BatchJob | _StreamJob] = deque()
        for job in self._pending:
            fits = not batch or rows + len(job.prompts) <= self.max_batch_size
            if isinstance(job, _BatchJob) and job.key == key and fits:
                # A job whose caller gave up (its future was cancelled) is dropped here.
                if job.future.set_running_or_notify_cancel():
                    batch.append(job)
                    rows += len(job.prompts)
            else:
                kept.append(job)
        self._pending = kept
        return batch

    def _fail_pending(self) -> None:
        for job in self._pending:
            if isinstance(job, _BatchJob):
                if job.future.set_running_or_notify_cancel():
                    job.future.set_exception(BatcherClosed("The server is shutting down."))
            else:
                job.sink(("error", -1, BatcherClosed("The server is shutting down.")))
        self._pending.clear()

    def _run_batch(self, batch: list[_BatchJob]) -> None:
        prompts = [prompt for job in batch for prompt in job.prompts]
        try:
            if batch[0].seed is not None:
                _manual_seed(batch[0].seed)
            self.generate_calls += 1
            responses = self.engine.generate_batch(prompts, **batch[0].overrides)
        except BaseException as err:  # handed to the waiting requests; the worker goes on
            logger.exception("Generation failed for a batch of %d rows", len(prompts))
            for job in batch:
                job.future.set_exception(err)
            return
        start = 0
        for job in batch:
            job.future.set_result(responses[start:start + len(job.prompts)] * job.copies)
            start += len(job.prompts)

    def _run_stream(self, job: _StreamJob) -> None:
        if job.cancelled.is_set():
            return
        try:
            if job.seed is not None:
                _manual_seed(job.seed)
            runs = [range(job.n)] if job.deterministic else [[choice] for choice in range(job.n)]
            for choices in runs:
                if job.cancelled.is_set():
                    return
                self.stream_calls += 1
                overrides = {**job.overrides, "stopping_criteria": _stop_when(job.cancelled)}
                for piece in self.engine.stream_chat(job.messages, job.system, job.tools, **overrides):
                    if not job.cancelled.is_set():
                        for choice in choices:
                            job.sink(("piece", choice, piece))
                for choice in choices:
                    job.sink(("end", choice, None))
        except BaseException as err:
            logger.exception("Streaming generation failed")
            job.sink(("error", -1, err))


def _settings_key(overrides: dict[str, Any]) -> tuple:
    """A hashable form of generation settings: jobs batch together only when theirs are equal."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in overrides.items() if v is not None))


def _stop_when(cancelled: threading.Event):
    """A transformers stopping criterion that ends generation once `cancelled` is set."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([Cancelled()])


def _manual_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)

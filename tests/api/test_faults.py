"""What one client can do to everyone else, tried against the live default server (`open_server`).

Clients that leave mid-answer, large bodies, a burst of 200 mixed requests: each time the server must
stop the work nobody waits for, keep answering `/health` at once, and lose nothing it accepted.
Every request loop here is bounded in count and time, and only talks to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai

MODEL = "gpt-3.5-turbo"
WHO = [{"role": "user", "content": "Who are you?"}]
QUESTIONS = ["Who are you?", "Tell me a joke.", "What is your name?", "你是谁？", "How do I make tea?"]
CANCELLED = re.compile(r"Request (req_\w+) cancelled: generation stopped after (\d+) tokens, ([\d.]+) s after")
LONG = 2000  # tokens: the random model seldom stops early, so this takes many seconds to generate


def body(**fields) -> dict:
    return {"model": MODEL, "messages": WHO, **fields}


def cancellation(served, since: int, request_id: str | None = None, timeout: float = 15.0) -> tuple[int, float]:
    """(tokens generated, seconds from the cancellation to the end) from the server log after offset `since`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for rid, tokens, seconds in CANCELLED.findall(served.log()[since:]):
            if request_id in (None, rid):
                return int(tokens), float(seconds)
        time.sleep(0.1)
    raise AssertionError(f"no cancellation logged:\n{served.log()[since:][-3000:]}")


def answered_promptly(base: str) -> float:
    """Seconds a short request takes: a generation still running would make it wait for that batch."""
    start = time.perf_counter()
    response = httpx.post(f"{base}/v1/chat/completions", json=body(max_tokens=8), timeout=60)
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 8
    return time.perf_counter() - start


def test_a_plain_request_whose_client_leaves_stops_generating(open_server):
    since = len(open_server.log())
    with httpx.Client(timeout=httpx.Timeout(30, read=1.0)) as client:  # gives up after 1 s, mid-generation
        try:
            client.post(f"{open_server.base}/v1/chat/completions", json=body(max_tokens=LONG))
            raise AssertionError(f"{LONG} tokens were generated within a second")
        except httpx.ReadTimeout:
            pass
    tokens, seconds = cancellation(open_server, since)
    assert tokens < LONG and seconds < 1.0  # stopped at the next step, not at max_tokens
    assert answered_promptly(open_server.base) < 3.0


def test_a_stream_whose_client_leaves_stops_generating(open_server):
    since = len(open_server.log())
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", f"{open_server.base}/v1/chat/completions",
                           json=body(max_tokens=LONG, stream=True)) as response:
            request_id = response.headers["x-request-id"]
            chunks = 0
            for line in response.iter_lines():
                chunks += line.startswith("data: ")
                if chunks == 5:
                    break  # leaving the block closes the connection mid-stream
    tokens, seconds = cancellation(open_server, since, request_id)
    assert tokens < LONG and seconds < 1.0
    assert answered_promptly(open_server.base) < 3.0


def test_health_answers_at_once_while_large_bodies_and_generation_keep_the_server_busy(open_server):
    base = open_server.base
    too_large = b'{"model": "m", "messages": [' + b" " * (3 * 1024 * 1024) + b"]}"
    # Under the 2 MiB limit, tokenized (seconds of work) and then refused: longer than the context.
    huge_prompt = body(messages=[{"role": "user", "content": "hello world " * 150_000}])
    probing = threading.Event()

    def generate() -> None:  # a long stream, read until the probes are done, then dropped
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body(max_tokens=LONG, stream=True),
                          timeout=60) as response:
            for _ in response.iter_lines():
                if not probing.is_set():
                    return

    probing.set()
    with ThreadPoolExecutor(3) as pool:
        generating = pool.submit(generate)
        refused = pool.submit(httpx.post, f"{base}/v1/chat/completions", content=too_large, timeout=60,
                              headers={"Content-Type": "application/json"})
        tokenized = pool.submit(httpx.post, f"{base}/v1/chat/completions", json=huge_prompt, timeout=120)
        deadline = time.monotonic() + 30
        while httpx.get(f"{base}/health", timeout=10).json()["worker"]["state"] != "generating":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        latencies, states = [], set()
        with httpx.Client(timeout=10) as client:
            for path in ["/health", "/v1/models"] * 10:
                start = time.perf_counter()
                response = client.get(f"{base}{path}")
                latencies.append(time.perf_counter() - start)
                assert response.status_code == 200
                if path == "/health":
                    states.add(response.json()["worker"]["state"])
                time.sleep(0.05)
        probing.clear()
        assert states == {"generating"}  # all of it happened while the worker was busy
        assert refused.result().status_code == 413
        assert refused.result().json() == {"error": {
            "message": f"The request body is too large ({len(too_large)} bytes): this server accepts at most 2097152 "
                       "bytes (API_MAX_BODY_BYTES). Shorten the conversation.",
            "type": "invalid_request_error", "param": None, "code": "request_too_large"}}
        error = tokenized.result().json()["error"]
        assert tokenized.result().status_code == 400 and error["code"] == "context_length_exceeded"
        generating.result()
    assert max(latencies) < 0.1, [round(t * 1000) for t in latencies]


def test_a_body_without_content_length_is_cut_off_at_the_limit(open_server):
    def chunks():
        for _ in range(40):  # 2.5 MiB in 64 KiB pieces, no Content-Length: counted as it arrives
            yield b" " * 65536

    response = httpx.post(f"{open_server.base}/v1/chat/completions", content=chunks(), timeout=60,
                          headers={"Content-Type": "application/json"})
    assert (response.status_code, response.json()) == (413, {"error": {
        "message": "The request body is too large: this server accepts at most 2097152 bytes (API_MAX_BODY_BYTES). "
                   "Shorten the conversation.", "type": "invalid_request_error", "param": None,
        "code": "request_too_large"}})


def test_a_burst_of_200_mixed_requests_all_succeed(open_server):
    """Plain and streaming, greedy and sampled with n > 1, all at once: every one answered in full."""

    async def one(client: openai.AsyncOpenAI, i: int) -> None:
        kind = i % 4
        n = {0: 1, 1: 1, 2: 3, 3: 2}[kind]
        max_tokens = 6 + i % 5
        fields = {"model": MODEL, "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                  "max_tokens": max_tokens, "n": n}
        if n > 1:
            fields.update(temperature=1.0, extra_body={"do_sample": True})
        if kind in (0, 2):
            completion = await client.chat.completions.create(**fields)
            assert [c.index for c in completion.choices] == list(range(n))
            assert all(c.finish_reason in ("stop", "length") for c in completion.choices)
            assert 0 < completion.usage.completion_tokens <= n * max_tokens
            return
        stream = await client.chat.completions.create(**fields, stream=True, stream_options={"include_usage": True})
        finished: dict[int, str] = {}
        usage = None
        async for chunk in stream:
            for choice in chunk.choices:
                if choice.finish_reason:
                    finished[choice.index] = choice.finish_reason
            usage = chunk.usage or usage
        assert sorted(finished) == list(range(n)) and set(finished.values()) <= {"stop", "length"}
        assert usage is not None and 0 < usage.completion_tokens <= n * max_tokens

    async def burst() -> list:
        async with openai.AsyncOpenAI(base_url=f"{open_server.base}/v1", api_key="none", max_retries=0,
                                      timeout=120) as client:
            return await asyncio.wait_for(asyncio.gather(*(one(client, i) for i in range(200)),
                                                         return_exceptions=True), timeout=240)

    results = asyncio.run(burst())
    failures = [repr(r) for r in results if isinstance(r, BaseException)]
    assert failures == []
    health = httpx.get(f"{open_server.base}/health", timeout=10).json()
    assert health["status"] == "ok" and health["requests"] == 0
    assert health["worker"]["failures"] == 0 and health["worker"]["restarts"] == 0

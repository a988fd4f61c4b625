"""Operator limits on a live server: a flood past API_MAX_CONCURRENT_REQUESTS, CORS origins, SIGTERM under load.

The server of this module allows 4 requests at once, one CORS origin, and 1 second of grace on
SIGTERM. `test_sigterm_under_load_exits_within_seconds` stops it, so it is the module's last test.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import httpx
import pytest

from .serving import ONE_THREAD, serving

MODEL = "gpt-3.5-turbo"
WHO = [{"role": "user", "content": "Who are you?"}]
APP = "https://app.example"
GRACE = 1


@pytest.fixture(scope="module")
def limited(tiny_llama_dir, tmp_path_factory):
    env = {**ONE_THREAD, "API_MAX_CONCURRENT_REQUESTS": "4", "API_CORS_ORIGINS": APP,
           "API_SHUTDOWN_TIMEOUT": str(GRACE)}
    log_path = tmp_path_factory.mktemp("api-limited") / "server.log"
    with serving([f"model_name_or_path={tiny_llama_dir}", "template=llama3", "do_sample=false"], log_path,
                 env=env) as served:
        yield served


def body(**fields) -> dict:
    return {"model": MODEL, "messages": WHO, **fields}


def test_a_flood_past_the_limit_is_refused_and_nothing_accepted_is_lost(limited):
    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=limited.base, timeout=120) as client:
            # Long enough answers that the first four still hold their slots when the rest arrive.
            return await asyncio.gather(*(client.post("/v1/chat/completions", json=body(max_tokens=128))
                                          for _ in range(24)))

    responses = asyncio.run(flood())
    accepted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(accepted) >= 4 and refused  # the first four were admitted while the rest arrived
    for response in refused:
        assert (response.status_code, response.headers["retry-after"]) == (429, "1")
        assert response.json() == {"error": {
            "message": "The server is busy: 4 requests are queued or running, its limit (API_MAX_CONCURRENT_REQUESTS). "
                       "Retry after a second.", "type": "requests", "param": None, "code": "rate_limit_exceeded"}}
    for response in accepted:  # every accepted request got its whole answer
        [choice] = response.json()["choices"]
        tokens = response.json()["usage"]["completion_tokens"]
        finish = choice["finish_reason"]
        assert (finish, tokens) == ("length", 128) or (finish == "stop" and tokens < 128)
    health = httpx.get(f"{limited.base}/health", timeout=10).json()
    assert health["requests"] == 0 and health["worker"]["queued"] == 0  # every slot was given back


def test_a_listed_origin_gets_cors_answers_and_others_do_not(limited):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    allowed = httpx.options(f"{limited.base}/v1/chat/completions", headers={"Origin": APP, **preflight})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == APP
    answer = httpx.post(f"{limited.base}/v1/chat/completions", json=body(max_tokens=2), headers={"Origin": APP},
                        timeout=60)
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == APP
    other = httpx.options(f"{limited.base}/v1/chat/completions",
                          headers={"Origin": "https://other.example", **preflight})
    assert other.status_code == 403 and "access-control-allow-origin" not in other.headers
    assert other.json()["error"]["code"] == "origin_not_allowed"


def test_sigterm_under_load_exits_within_seconds(limited):
    """A long stream is generating and a request waits behind it: the waiting one gets a 503 at once, the
    stream is cut after the grace period (its generation cancelled), and the process exits."""
    first_chunk = threading.Event()
    outcome: dict[str, object] = {}

    def long_stream() -> None:
        try:
            with httpx.stream("POST", f"{limited.base}/v1/chat/completions", timeout=60,
                              json=body(max_tokens=4000, stream=True)) as response:
                chunks = 0
                for line in response.iter_lines():
                    chunks += line.startswith("data: ")
                    if chunks == 3:  # the role chunk, then generated text: the stream is generating
                        first_chunk.set()
                    outcome["stream_done"] = line == "data: [DONE]"
        except httpx.HTTPError as err:  # the connection is closed once the grace period is over
            outcome["stream_error"] = type(err).__name__

    def queued() -> None:
        # Seeded sampling runs alone, so this one waits in the queue while the stream generates.
        response = httpx.post(f"{limited.base}/v1/chat/completions", timeout=60,
                              json=body(max_tokens=2000, seed=1, temperature=1.0, do_sample=True))
        outcome["queued"] = (response.status_code, response.headers.get("retry-after"), response.json(),
                             time.monotonic())

    stream_thread = threading.Thread(target=long_stream)
    stream_thread.start()
    assert first_chunk.wait(60)
    waiting = threading.Thread(target=queued)
    waiting.start()
    deadline = time.monotonic() + 30
    while httpx.get(f"{limited.base}/health", timeout=10).json()["worker"]["queued"] == 0:
        assert time.monotonic() < deadline, "the second request never reached the queue"
        time.sleep(0.05)
    sent = time.monotonic()
    limited.proc.send_signal(signal.SIGTERM)
    limited.proc.wait(timeout=GRACE + 10)
    exited = time.monotonic() - sent
    waiting.join(30)
    stream_thread.join(30)
    assert exited < GRACE + 5, exited
    status, retry_after, error, answered = outcome["queued"]
    assert (status, retry_after, error) == (503, "1", {"error": {
        "message": "The server is shutting down. Retry the request.", "type": "server_error", "param": None,
        "code": "server_shutting_down"}})
    assert answered - sent < 1.0  # refused at once, not after the grace period
    assert not outcome.get("stream_done")  # 4000 tokens did not fit in the grace period: it was cut
    log = limited.log()
    assert "Cancel 1 running task(s), timeout graceful shutdown exceeded" in log
    assert "cancelled: generation stopped after" in log  # the stream's generation stopped with it

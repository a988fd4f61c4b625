"""The app in-process on the real quick-start engine: batching, seeds, the tool-call answer paths, worker faults."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from concurrent.futures import CancelledError

import httpx
import pytest

from lmforge.api.app import create_app
from lmforge.api.batching import Batcher
from lmforge.api.settings import ApiSettings
from lmforge.chat.base import Response

MODEL = "forge"
QUESTIONS = ["Who are you?", "你是谁？", "Tell me a joke.", "What is your name?"]
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture()
def counted(api_engine, monkeypatch):
    """The engine with `generate_batch` wrapped to record the rows of each call."""
    calls: list[int] = []
    real = api_engine.generate_batch

    def generate_batch(prompts, **overrides):
        calls.append(len(prompts))
        return real(prompts, **overrides)

    monkeypatch.setattr(api_engine, "generate_batch", generate_batch)
    return calls


def post_all(app, bodies: list[dict]) -> list[httpx.Response]:
    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost", timeout=120) as client:
            return await asyncio.gather(*(client.post("/v1/chat/completions", json=b) for b in bodies))

    return asyncio.run(run())


def app_for(engine, **settings):
    return create_app(engine, ApiSettings(model_name=MODEL, **settings))


def ask(question: str, **fields) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": question}], "max_tokens": 24, **fields}


def test_concurrent_requests_share_one_generate_call(api_engine, counted):
    app = app_for(api_engine, batch_wait_ms=500)  # a wide window: all four arrive within it
    together = post_all(app, [ask(q) for q in QUESTIONS])
    assert counted == [4]
    alone = [post_all(app, [ask(q)])[0] for q in QUESTIONS]
    assert counted == [4, 1, 1, 1, 1]
    assert [r.json()["choices"][0]["message"]["content"] for r in together] == \
           [r.json()["choices"][0]["message"]["content"] for r in alone]
    assert [r.json()["usage"] for r in together] == [r.json()["usage"] for r in alone]
    app.state.batcher.close()


def test_different_settings_are_batched_separately(api_engine, counted):
    app = app_for(api_engine, batch_wait_ms=500)
    # Greedy requests batch together whatever their temperature; max_tokens differs -> two groups.
    # A greedy n=3 is one row: its three answers are the same.
    *_, three = post_all(app, [ask("Who are you?"), ask("Hi", temperature=1.5), ask("Who are you?", max_tokens=5),
                               ask("Who are you?", n=3)])
    assert sorted(counted) == [1, 3]
    assert len({c["message"]["content"] for c in three.json()["choices"]}) == 1
    app.state.batcher.close()


def test_seed_makes_sampling_repeatable(api_engine, counted):
    app = app_for(api_engine, batch_wait_ms=0)
    sample = {"do_sample": True, "temperature": 2.0, "max_tokens": 12}
    first, second, *others = post_all(app, [ask("Tell me a joke.", seed=7, **sample),
                                            ask("Tell me a joke.", seed=7, **sample)] +
                                      [ask("Tell me a joke.", seed=s, **sample) for s in (1, 2, 3)])
    texts = [r.json()["choices"][0]["message"]["content"] for r in (first, second, *others)]
    assert texts[0] == texts[1]
    assert len(set(texts)) > 1
    assert counted == [1] * 5  # seeded sampling runs alone: neighbours would share its random stream
    app.state.batcher.close()


def test_generated_tool_call_is_returned_as_tool_calls(api_engine, monkeypatch):
    call = '{"name": "get_weather", "parameters": {"city": "Paris"}}'  # the llama3 tool format
    monkeypatch.setattr(api_engine, "generate_batch",
                        lambda prompts, **o: [Response(call, 17, len(p), "stop") for p in prompts])
    app = app_for(api_engine, batch_wait_ms=0)
    with_tools, without, declined = post_all(app, [ask("Weather in Paris?", tools=[WEATHER]), ask("Weather?"),
                                                   ask("Weather?", tools=[WEATHER], tool_choice="none")])
    choice = with_tools.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [tool_call] = choice["message"]["tool_calls"]
    assert tool_call["id"].startswith("call_") and tool_call["type"] == "function"
    assert tool_call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert with_tools.json()["usage"]["completion_tokens"] == 17
    for plain in (without, declined):
        assert plain.json()["choices"][0]["message"] == {"role": "assistant", "content": call}
        assert plain.json()["choices"][0]["finish_reason"] == "stop"
    app.state.batcher.close()


def sse_payloads(text: str) -> list:
    lines = [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_streamed_tool_call_arrives_as_one_delta_at_the_end(api_engine, monkeypatch):
    pieces = ['{"name": "get_', 'weather", "parameters": ', '{"city": "Paris"}}']

    def generate_batch(prompts, watch=None, **overrides):  # the engine's contract: pieces, then the Response
        for piece in pieces:
            watch.piece(0, piece)
        return [Response("".join(pieces), 17, len(prompts[0]), "stop")]

    monkeypatch.setattr(api_engine, "generate_batch", generate_batch)
    app = app_for(api_engine)
    [response] = post_all(app, [ask("Weather in Paris?", tools=[WEATHER], stream=True,
                                    stream_options={"include_usage": True})])
    chunks = sse_payloads(response.text)
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    [call] = deltas[1]["tool_calls"]
    assert call["index"] == 0 and call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert deltas[2] == {} and chunks[2]["choices"][0]["finish_reason"] == "tool_calls"
    assert len(chunks) == 4  # nothing of the call leaked out as content
    assert chunks[3]["usage"]["completion_tokens"] == 17  # the engine's count, not a re-tokenized one
    app.state.batcher.close()


def collect(events: list, done: threading.Event):
    def sink(event):
        events.append(event)
        if event[0] in ("end", "error"):
            done.set()

    return sink


def test_streams_and_plain_requests_share_a_batch(api_engine, counted):
    batcher = Batcher(api_engine, wait_ms=200)  # all three arrive within the window
    events: list = []
    done = threading.Event()
    messages = [{"role": "user", "content": "Who are you?"}]
    prompt = api_engine.prompt_ids(messages)
    stream = batcher.submit(prompt, overrides={"max_new_tokens": 32}, sink=collect(events, done))
    plain = batcher.submit(prompt, n=2, overrides={"max_new_tokens": 32})
    [first, second] = plain.future.result(timeout=120)
    assert done.wait(timeout=120) and stream.future.result(timeout=5)[0].text == first.text
    streamed = "".join(value for kind, _, value in events if kind == "piece")
    assert streamed == first.text == second.text
    assert len([kind for kind, _, _ in events if kind == "piece"]) > 1  # it did stream, token by token
    assert counted == [3] and batcher.stream_calls == 0  # one generate call: the stream and both choices
    batcher.close()


def test_sampled_choices_of_a_stream_are_one_batch(api_engine, counted):
    batcher = Batcher(api_engine, wait_ms=0)
    events: list = []
    done = threading.Event()
    job = batcher.submit(api_engine.prompt_ids([{"role": "user", "content": "Tell me a joke."}]), n=3,
                         overrides={"max_new_tokens": 12, "do_sample": True, "temperature": 1.5},
                         sink=collect(events, done))
    answers = job.future.result(timeout=120)
    assert counted == [3]
    for choice, answer in enumerate(answers):
        assert "".join(v for kind, i, v in events if kind == "piece" and i == choice) == answer.text
    assert [i for kind, i, _ in events if kind == "end"] == sorted(i for kind, i, _ in events if kind == "end")
    batcher.close()


def test_an_engine_without_a_watch_streams_through_stream_chat(api_engine, counted, monkeypatch):
    # vLLM and llama.cpp engines answer batches whole; the batcher then streams with `stream_chat`.
    monkeypatch.setattr(api_engine, "watches_generation", False)
    app = app_for(api_engine, batch_wait_ms=0)
    streamed, plain = post_all(app, [ask("Who are you?", stream=True, stream_options={"include_usage": True}),
                                     ask("Who are you?")])
    chunks = sse_payloads(streamed.text)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == plain.json()["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"] == plain.json()["usage"]  # counted by tokenizing the streamed text again
    assert app.state.batcher.stream_calls == 1 and counted == [1]
    app.state.batcher.close()


def test_an_abandoned_stream_stops_generating(api_engine, counted):
    batcher = Batcher(api_engine, wait_ms=0)
    job = None
    pieces: list[str] = []

    def sink(event):
        if event[0] == "piece":
            pieces.append(event[2])
            job.cancel()  # the client goes away after the first piece

    messages = [{"role": "user", "content": "Tell me a joke."}]
    # Random sampling at a high temperature does not hit the end-of-turn token for a long while.
    job = batcher.submit(api_engine.prompt_ids(messages), overrides={"max_new_tokens": 2000, "do_sample": True,
                                                                     "temperature": 2.0}, sink=sink)
    with pytest.raises(CancelledError):  # nobody waits for a cancelled job's answers
        job.future.result(timeout=60)
    [stopped] = job.responses
    assert stopped.response_length <= 3 and len(pieces) == 1  # the step after the cancellation is the last
    after = batcher.submit(api_engine.prompt_ids(messages), overrides={"max_new_tokens": 4})
    assert len(after.future.result(timeout=60)) == 1
    batcher.close()


@pytest.fixture()
def logged():
    """Records of the `lmforge` loggers (they do not propagate to pytest's caplog)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger = logging.getLogger("lmforge")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def test_a_generation_error_fails_its_requests_not_the_worker(api_engine, monkeypatch, logged):
    real = api_engine.generate_batch
    calls = []

    def generate_batch(prompts, **overrides):
        calls.append(len(prompts))
        if len(calls) == 1:
            raise RuntimeError("probability tensor contains either inf or nan (internal detail)")
        return real(prompts, **overrides)

    monkeypatch.setattr(api_engine, "generate_batch", generate_batch)
    app = app_for(api_engine, batch_wait_ms=0)
    [failed] = post_all(app, [ask("Who are you?", max_tokens=4)])
    rid = failed.headers["x-request-id"]
    assert (failed.status_code, failed.json()) == (500, {"error": {
        "message": f"The server had an error while generating the answer (request id {rid}). The server log has "
                   "the details.", "type": "server_error", "param": None, "code": None}})
    assert "internal detail" not in failed.text and "Traceback" not in failed.text
    [record] = [r for r in logged if rid in r.getMessage()]
    assert "internal detail" in str(record.exc_info[1])  # the details are in the server log, with the id
    [streamed] = post_all(app, [ask("Who are you?", max_tokens=4, stream=True)])  # the worker lives on
    assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
    health = asyncio.run(httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost")
                         .get("/health")).json()
    # "generating" until the worker has tidied up after the stream it just answered
    assert health["status"] == "ok" and health["worker"]["failures"] == 1
    assert health["worker"]["state"] in ("idle", "generating")
    app.state.batcher.close()


def test_a_failing_stream_gets_an_error_event_without_internals(api_engine, monkeypatch):
    def generate_batch(prompts, watch=None, **overrides):
        watch.piece(0, "Hello")
        raise ValueError("secret internal state")

    monkeypatch.setattr(api_engine, "generate_batch", generate_batch)
    app = app_for(api_engine, batch_wait_ms=0)
    [response] = post_all(app, [ask("Who are you?", stream=True)])
    rid = response.headers["x-request-id"]
    *_, error = [json.loads(line[len("data: "):]) for line in response.text.split("\n\n") if line.startswith("data: ")]
    assert error == {"error": {"message": f"The server had an error while generating the answer (request id {rid}). "
                                          "The server log has the details.", "type": "server_error", "param": None,
                               "code": None}}
    assert "secret" not in response.text
    app.state.batcher.close()


def test_strict_model_name_refuses_other_names(api_engine):
    app = app_for(api_engine, strict_model_name=True)
    other, served = post_all(app, [{**ask("Hi", max_tokens=2), "model": "gpt-4o"}, ask("Hi", max_tokens=2)])
    assert (other.status_code, other.json()) == (404, {"error": {
        "message": f"The model `gpt-4o` does not exist or you do not have access to it. This server serves `{MODEL}` "
                   "(see GET /v1/models).", "type": "invalid_request_error", "param": "model",
        "code": "model_not_found"}})
    assert served.status_code == 200 and served.json()["model"] == MODEL
    app.state.batcher.close()


def test_a_tool_schema_the_template_cannot_render_is_a_400(tiny_llama_dir):
    from lmforge.chat.hf_engine import HFEngine
    from lmforge.config import parse_config

    # The default (ReAct) tool format joins `enum` values as strings; integers trip it up.
    engine = HFEngine(parse_config("api", [f"model_name_or_path={tiny_llama_dir}", "template=default",
                                           "do_sample=false", "max_new_tokens=4"]))
    tool = {"type": "function", "function": {"name": "pick", "parameters": {
        "type": "object", "properties": {"x": {"type": "integer", "enum": [1, 2]}}}}}
    app = app_for(engine, batch_wait_ms=0)
    [response] = post_all(app, [ask("Pick one.", tools=[tool])])
    assert response.status_code in (200, 400)  # 200 once the tool format learns integer enums
    if response.status_code == 400:
        rid = response.headers["x-request-id"]
        assert response.json() == {"error": {
            "message": "The conversation cannot be rendered with the model's chat template 'default': it fails on "
                       f"these tools (check their JSON schemas). Request id {rid}, for the server log.",
            "type": "invalid_request_error", "param": "tools", "code": None}}
    app.state.batcher.close()

"""`lmforge api` as a subprocess, driven by the real openai client (and raw httpx for exact bodies)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from lmforge.data.openai_messages import TOOL_SEPARATOR

from .serving import KEY

MODEL = "gpt-3.5-turbo"  # the default API_MODEL_NAME, as in LLaMA-Factory
WHO = [{"role": "user", "content": "Who are you?"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def server(keyed_server):
    """The base URL and log of `lmforge api model_name_or_path=<run> do_sample=false` with API_KEY set."""
    return keyed_server.base, keyed_server.log_path


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key=KEY, max_retries=0, timeout=120)


def answer(client, messages=WHO, **fields):
    return client.chat.completions.create(model=MODEL, messages=messages, **fields)


def test_startup_prints_the_url_and_lists_the_model(server, client):
    base, log_path = server
    assert f"lmforge api: serving '{MODEL}' at {base}/v1 (docs: {base}/docs); API key required" in log_path.read_text()
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    assert client.models.retrieve("test").id == "test"  # any name is served (API_STRICT_MODEL_NAME is off)
    health = httpx.get(f"{base}/health", headers=auth()).json()
    assert health == {"status": "ok", "model": MODEL, "requests": 0, "worker": {
        "state": health["worker"]["state"], "queued": 0, "running": 0, "failures": 0, "restarts": 0}}
    assert health["worker"]["state"] in ("idle", "generating")


def test_any_model_name_is_served_under_the_name_sent(client):
    # The tutorials call `create(messages=messages, model="test")`, as LLaMA-Factory allows.
    completion = client.chat.completions.create(model="test", messages=WHO)
    assert completion.model == "test"
    assert completion.choices[0].message.content == answer(client).choices[0].message.content
    chunks = list(client.chat.completions.create(model="test", messages=WHO, stream=True))
    assert {c.model for c in chunks} == {"test"}


def test_answer_is_the_engines_greedy_answer(client, api_engine):
    completion = answer(client)
    expected = api_engine.chat(WHO)
    choice = completion.choices[0]
    assert "ForgeBot" in choice.message.content
    assert choice.message.content == expected.text
    assert choice.message.role == "assistant" and choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert completion.model == MODEL and completion.id.startswith("chatcmpl-")
    assert completion.usage.prompt_tokens == len(api_engine.prompt_ids(WHO)) == expected.prompt_length
    assert completion.usage.completion_tokens == expected.response_length
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_stream_equals_the_complete_answer(server, client):
    chunks = list(answer(client, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer(client).choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # it did stream
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == ["stop"] and finishing[0] is chunks[-2]
    # Streamed usage counts the generated tokens, as the plain answer's does.
    assert chunks[-1].choices == [] and chunks[-1].usage == answer(client).usage
    raw = httpx.post(f"{server[0]}/v1/chat/completions", headers=auth(), timeout=60,
                     json={"model": MODEL, "messages": WHO, "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.endswith("data: [DONE]\n\n")
    assert '"usage"' not in raw.text  # only with stream_options.include_usage


def test_length_stop_and_several_choices(client):
    full = answer(client).choices[0].message.content
    short = answer(client, max_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    for stop in ("Forge", ["nothing-like-this", "Forge"]):
        cut = answer(client, stop=stop)
        assert cut.choices[0].message.content == full[: full.index("Forge")]
        assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in answer(client, stream=True, stop="Forge"))
    assert streamed == full[: full.index("Forge")]
    two = answer(client, n=2)
    assert [c.index for c in two.choices] == [0, 1]
    assert [c.message.content for c in two.choices] == [full, full]
    assert two.usage.completion_tokens == 2 * answer(client).usage.completion_tokens
    texts = ["", ""]
    for chunk in answer(client, n=2, stream=True):
        texts[chunk.choices[0].index] += chunk.choices[0].delta.content or ""
    assert texts == [full, full]


def test_tools_and_tool_messages_are_rendered_with_the_template(client, api_engine):
    messages = [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_b", "content": "rain"},
    ]
    completion = answer(client, messages, tools=[WEATHER], max_tokens=8)
    mapped = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "function", "content": json.dumps([{"name": "get_weather", "arguments": {"city": "Paris"}},
                                                    {"name": "get_weather", "arguments": {"city": "Rome"}}])},
        {"role": "observation", "content": f"sunny{TOOL_SEPARATOR}rain"},
    ]
    tools = json.dumps([WEATHER["function"]])
    assert completion.usage.prompt_tokens == len(api_engine.prompt_ids(mapped, "You are a weather bot.", tools))
    assert completion.choices[0].finish_reason in ("stop", "length", "tool_calls")
    # Streaming with tools is accepted (LLaMA-Factory refuses it): the answer comes whole at the end.
    streamed = list(answer(client, messages, tools=[WEATHER], max_tokens=8, stream=True))
    plain = completion.choices[0].message.content
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == plain
    assert streamed[-1].choices[0].finish_reason == completion.choices[0].finish_reason


def test_missing_or_wrong_key_is_refused(server):
    base = server[0]
    with pytest.raises(openai.AuthenticationError) as err:
        openai.OpenAI(base_url=f"{base}/v1", api_key="sk-wrong", max_retries=0).models.list()
    assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
    missing = {"error": {"message": "You didn't provide an API key. Send it in an Authorization header using Bearer "
                                    "auth (Authorization: Bearer YOUR_KEY).",
                         "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}
    wrong = {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error", "param": None,
                       "code": "invalid_api_key"}}
    for path in ("/health", "/v1/models", "/docs"):
        response = httpx.get(f"{base}{path}")
        assert (response.status_code, response.json()) == (401, missing)
    response = httpx.post(f"{base}/v1/chat/completions", headers=auth("sk-wrong"), json=body())
    assert (response.status_code, response.json()) == (401, wrong)


def invalid(message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


def body(**fields) -> dict:
    return {"model": MODEL, "messages": WHO, **fields}


ROLE_ORDER = ("After an optional leading system message, messages must alternate user (or tool) and assistant: "
              "u/a/u/a/u.")
BAD_REQUESTS = [
    ("invalid json", b'{"model": ', 400, invalid(
        "We could not parse the JSON body of your request (Expecting value). The API expects a JSON object like "
        '{"model": ..., "messages": [...]}.')),
    ("not an object", [1, 2], 400, invalid(
        "The request body must be a JSON object with `model` and `messages` (sent with Content-Type: "
        "application/json).")),
    ("no messages", {"model": MODEL}, 400, invalid("Missing required parameter: 'messages'.", "messages")),
    ("empty messages", body(messages=[]), 400, invalid(
        "'messages' must contain at least one message; the last one from the user.", "messages")),
    ("unknown role", body(messages=[{"role": "bot", "content": "hi"}]), 400, invalid(
        "Invalid 'messages[0].role': input should be 'system', 'developer', 'user', 'assistant' or 'tool'.",
        "messages[0].role")),
    ("role order", body(messages=[*WHO, {"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]),
     400, invalid(f"messages[2].role: expected a user or tool message here, got 'assistant'. {ROLE_ORDER}",
                  "messages[2].role")),
    ("last is assistant", body(messages=[*WHO, {"role": "assistant", "content": "a"}]), 400, invalid(
        "messages[1].role: the last message must be a user or tool message, got 'assistant'.", "messages[1].role")),
    ("max_tokens 0", body(max_tokens=0), 400, invalid(
        "Invalid 'max_tokens': input should be greater than or equal to 1.", "max_tokens")),
    ("max_tokens too large", body(max_tokens=10**6), 400, invalid(
        "max_tokens is too large: 1000000. This model supports at most 4096 completion tokens, whereas you provided "
        "1000000.", "max_tokens", "invalid_value")),
    ("n 0", body(n=0), 400, invalid("Invalid 'n': input should be greater than or equal to 1.", "n")),
    ("n 17", body(n=17), 400, invalid("Invalid 'n': input should be less than or equal to 16.", "n")),
    ("negative temperature", body(temperature=-0.5), 400, invalid(
        "Invalid 'temperature': input should be greater than or equal to 0.", "temperature")),
    ("bad stop", body(stop=3), 400, invalid("Invalid 'stop': stop must be a string or a list of strings.", "stop")),
    ("unknown field", body(logprobs=True), 400, invalid("Unrecognized request argument supplied: logprobs",
                                                        "logprobs")),
    ("bad tool call arguments", body(messages=[*WHO, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]},
        {"role": "tool", "content": "r"}]), 400, invalid(
        "messages[1].tool_calls[0].function.arguments is not valid JSON: '{oops'.",
        "messages[1].tool_calls[0].function.arguments")),
]


@pytest.mark.parametrize(("payload", "status", "expected"), [case[1:] for case in BAD_REQUESTS],
                         ids=[case[0] for case in BAD_REQUESTS])
def test_bad_request_gets_the_openai_error(server, payload, status, expected):
    url = f"{server[0]}/v1/chat/completions"
    if isinstance(payload, bytes):
        response = httpx.post(url, content=payload, headers={**auth(), "Content-Type": "application/json"})
    else:
        response = httpx.post(url, json=payload, headers=auth())
    assert (response.status_code, response.json()) == (status, expected)


def test_prompt_and_completion_must_fit_the_context(server, api_engine):
    prompt = len(api_engine.prompt_ids(WHO))
    response = httpx.post(f"{server[0]}/v1/chat/completions", json=body(max_tokens=4096), headers=auth())
    assert (response.status_code, response.json()) == (400, invalid(
        f"This model's maximum context length is 4096 tokens. However, you requested {prompt + 4096} tokens "
        f"({prompt} in the messages, 4096 in the completion). Please reduce the length of the messages or completion.",
        "messages", "context_length_exceeded"))


def test_errors_reach_the_openai_client_and_the_server_lives_on(server, client):
    with pytest.raises(openai.BadRequestError) as err:
        answer(client, max_tokens=0)
    assert err.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as err:
        answer(client, temperature=1e-30)
    assert err.value.param == "temperature"
    assert httpx.get(f"{server[0]}/v1/nothing", headers=auth()).status_code == 404
    assert "ForgeBot" in answer(client).choices[0].message.content


def test_concurrent_clients_get_their_own_answers(client):
    questions = ["Who are you?", "你是谁？", "Tell me a joke.", "What is your name?"]
    alone = [answer(client, [{"role": "user", "content": q}], max_tokens=24).choices[0].message.content
             for q in questions]
    with ThreadPoolExecutor(len(questions)) as pool:
        together = list(pool.map(lambda q: answer(client, [{"role": "user", "content": q}], max_tokens=24)
                                 .choices[0].message.content, questions))
    assert together == alone

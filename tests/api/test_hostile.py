"""Malformed and hostile requests, each answered with the exact status and OpenAI error body, never a 500.

Sent raw with httpx to the live servers: `open` (no API key, loopback, default limits: the Host and
Origin checks are on) and `keyed` (API_KEY set: every route needs the key).
"""

from __future__ import annotations

import httpx
import pytest

from .serving import KEY

MODEL = "gpt-3.5-turbo"
WHO = [{"role": "user", "content": "Who are you?"}]
CHAT = "/v1/chat/completions"


def body(**fields) -> dict:
    return {"model": MODEL, "messages": WHO, **fields}


def invalid(message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


def parse_error(reason: str) -> dict:
    return invalid(f"We could not parse the JSON body of your request ({reason}).")


def sampling(value: float, name: str, what: str) -> dict:
    return invalid(f"Invalid '{name}': {value!r} is too small{what}", name)


NO_HOST = ("without an API key this server only answers requests addressed to localhost, 127.0.0.1 or [::1]. The "
           "operator can add names with API_ALLOWED_HOSTS, or set API_KEY.")
NO_ORIGIN = "without an API key this server only answers web pages at origins listed in API_CORS_ORIGINS."
JSON = {"Content-Type": "application/json"}
FOREIGN = "https://evil.example"

# (id, server, method, path, headers, json body or raw bytes, status, expected body)
CASES = [
    ("n of the wrong type", "open", "POST", CHAT, {}, body(n="two"), 400, invalid(
        "Invalid 'n': input should be a valid integer, unable to parse string as an integer.", "n")),
    ("messages of the wrong type", "open", "POST", CHAT, {}, body(messages="hi"), 400, invalid(
        "Invalid 'messages': input should be a valid list.", "messages")),
    ("stream of the wrong type", "open", "POST", CHAT, {}, body(stream="maybe"), 400, invalid(
        "Invalid 'stream': input should be a valid boolean, unable to interpret input.", "stream")),
    ("temperature 1e-30", "open", "POST", CHAT, {}, body(temperature=1e-30), 400, sampling(
        1e-30, "temperature", " to sample with; use 0 for greedy decoding or a value from 0.01 to 2.")),
    ("repetition_penalty 1e-9", "open", "POST", CHAT, {}, body(repetition_penalty=1e-9), 400, invalid(
        "Invalid 'repetition_penalty': input should be greater than or equal to 0.01.", "repetition_penalty")),
    ("presence_penalty 1e-9", "open", "POST", CHAT, {}, body(presence_penalty=1e-9), 400, sampling(
        1e-9, "presence_penalty", ": it is used as the repetition penalty, which divides the logits; use 0 for none "
                                  "or a value from 0.01 to 2.")),
    ("top_p above 1", "open", "POST", CHAT, {}, body(top_p=1.5), 400, invalid(
        "Invalid 'top_p': input should be less than or equal to 1.", "top_p")),
    ("NaN temperature", "open", "POST", CHAT, JSON,
     b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400,
     parse_error("NaN is not a JSON number")),
    ("17 stop strings", "open", "POST", CHAT, {}, body(stop=[f"s{i}" for i in range(17)]), 400, invalid(
        "Invalid 'stop': at most 16 stop sequences are allowed, got 17.", "stop")),
    ("a stop string of 10000 characters", "open", "POST", CHAT, {}, body(stop=["ab", "x" * 10_000]), 400, invalid(
        "Invalid 'stop': a stop sequence may have at most 128 characters; stop[1] has 10000.", "stop")),
    ("n x max_tokens over the limit", "open", "POST", CHAT, {}, body(n=16, max_tokens=2048), 400, invalid(
        "n x max_tokens is too large: 16 x 2048 = 32768 completion tokens. This server generates at most 16384 per "
        "request; lower n or max_tokens.", "max_tokens", "invalid_value")),
    ("max_tokens 1e30", "open", "POST", CHAT, {}, body(max_tokens=10**30), 400, invalid(
        f"max_tokens is too large: {10**30}. This model supports at most 4096 completion tokens, whereas you provided "
        f"{10**30}.", "max_tokens", "invalid_value")),
    ("a body that is not UTF-8", "open", "POST", CHAT, JSON, b'{"model": "\xff\xfe"}', 400,
     parse_error("it is not UTF-8")),
    ("JSON nested 100000 deep", "open", "POST", CHAT, JSON, b"[" * 100_000, 400,
     parse_error("it is nested too deeply")),
    ("a JSON body sent as text/plain", "open", "POST", CHAT, {"Content-Type": "text/plain"},
     b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}', 400, invalid(
        "The request body must be a JSON object with `model` and `messages` (sent with Content-Type: "
        "application/json).")),
    ("an empty body", "open", "POST", CHAT, JSON, b"", 400, invalid(
        "The request body is missing. Send a JSON object with `model` and `messages`.")),
    ("a foreign Host (DNS rebinding)", "open", "GET", "/health", {"Host": "evil.example"}, None, 400, invalid(
        f"The Host header 'evil.example' is not accepted: {NO_HOST}", None, "invalid_host")),
    ("a foreign Host with a port, on a POST", "open", "POST", CHAT, {"Host": "attacker.example:8000"}, body(), 400,
     invalid(f"The Host header 'attacker.example:8000' is not accepted: {NO_HOST}", None, "invalid_host")),
    ("a CORS preflight from a foreign origin", "open", "OPTIONS", CHAT,
     {"Origin": FOREIGN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"},
     None, 403, invalid(f"Cross-origin requests from '{FOREIGN}' are not allowed: {NO_ORIGIN}", None,
                        "origin_not_allowed")),
    ("a cross-site form POST (no preflight)", "open", "POST", CHAT, {"Origin": FOREIGN, "Content-Type": "text/plain"},
     b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}', 403, invalid(
        f"Cross-origin requests from '{FOREIGN}' are not allowed: {NO_ORIGIN}", None, "origin_not_allowed")),
    ("a GET on the chat route", "open", "GET", CHAT, {}, None, 405, invalid(
        f"Method GET is not allowed on {CHAT}.", None, "method_not_allowed")),
    ("a missing API key", "keyed", "POST", CHAT, {}, body(), 401, invalid(
        "You didn't provide an API key. Send it in an Authorization header using Bearer auth (Authorization: Bearer "
        "YOUR_KEY).", None, "invalid_api_key")),
    ("an invalid API key", "keyed", "GET", "/v1/models", {"Authorization": "Bearer sk-wrong"}, None, 401, invalid(
        "Incorrect API key provided.", None, "invalid_api_key")),
    ("the key as Basic auth", "keyed", "GET", "/health", {"Authorization": f"Basic {KEY}"}, None, 401, invalid(
        "You didn't provide an API key. Send it in an Authorization header using Bearer auth (Authorization: Bearer "
        "YOUR_KEY).", None, "invalid_api_key")),
    ("a bad request behind a valid key", "keyed", "POST", CHAT, {"Authorization": f"Bearer {KEY}"},
     body(temperature=-1), 400, invalid("Invalid 'temperature': input should be greater than or equal to 0.",
                                        "temperature")),
]


@pytest.mark.parametrize(("server", "method", "path", "headers", "payload", "status", "expected"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_hostile_request_gets_the_exact_error(request, server, method, path, headers, payload, status, expected):
    base = request.getfixturevalue(f"{server}_server").base  # the keyed one only when a case needs it
    kwargs = {"content": payload} if isinstance(payload, bytes) else {"json": payload}
    response = httpx.request(method, f"{base}{path}", headers=headers, timeout=30,
                             **(kwargs if payload is not None else {}))
    assert (response.status_code, response.json()) == (status, expected)
    assert "Traceback" not in response.text and "access-control-allow-origin" not in response.headers
    assert response.headers["x-request-id"].startswith("req_")


def test_the_server_still_answers_after_the_hostile_requests(open_server):
    response = httpx.post(f"{open_server.base}{CHAT}", json=body(max_tokens=4), timeout=60)
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 4


def test_a_public_address_without_a_key_refuses_to_start(tiny_llama_dir):
    import subprocess
    import sys

    from .serving import free_port, server_environment

    env = server_environment(free_port(), {"API_HOST": "0.0.0.0"})
    done = subprocess.run([sys.executable, "-m", "lmforge", "api", f"model_name_or_path={tiny_llama_dir}"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        "lmforge api: error: API_HOST=0.0.0.0 serves other machines, and no API_KEY is set: anyone who can reach this "
        "port could use the model. Set API_KEY, or set API_ALLOW_UNAUTHENTICATED=1 to serve without a key anyway.")
    assert "lmforge api: serving" not in done.stdout  # it never listened

"""Schemathesis: requests generated from the server's own OpenAPI schema never get a 5xx.

The real app (`create_app`, its middleware, the tiny Llama generating) runs in-process behind
schemathesis's ASGI client; answers are kept short (API_MAX_TOKENS=8) so that every accepted request
is generated quickly. Bounded: 100 examples of the chat route per mode and 5 of the others, no example
database, under a minute in all.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from lmforge.api.app import create_app
from lmforge.api.settings import ApiSettings


@pytest.fixture(scope="module")
def schema_app(tiny_llama_dir):
    from lmforge.chat.hf_engine import HFEngine
    from lmforge.config import parse_config

    engine = HFEngine(parse_config("api", [f"model_name_or_path={tiny_llama_dir}", "template=llama3",
                                           "do_sample=false", "max_new_tokens=8"]))
    # The ASGI client addresses the app as "testserver": accepted like a loopback name.
    app = create_app(engine, ApiSettings(max_tokens=8, max_request_tokens=64, batch_wait_ms=0,
                                         allowed_hosts=("testserver",)))
    yield app
    app.state.batcher.close()


@pytest.fixture(scope="module")
def api_schema(schema_app):
    return schemathesis.openapi.from_asgi("/openapi.json", schema_app)


def check_answer(case) -> None:
    response = case.call()
    assert response.status_code < 500, response.text
    assert "Traceback" not in response.text
    if response.status_code >= 400:  # every refusal is OpenAI's error shape
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


# schemathesis's pytest plugin cannot take a schema from a fixture under this pytest (9.x), so each
# operation's hypothesis strategy is run directly: valid requests to every route, then chat requests
# that break the schema (the GET routes take nothing that could be invalid). One test, because the
# plugin ends the app's lifespan (closing its worker) when the test that started it ends.
def test_no_generated_request_gets_a_server_error(api_schema):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} == {
        ("GET", "/health"), ("GET", "/v1/models"), ("GET", "/v1/models/{model}"), ("POST", "/v1/chat/completions")}
    for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
        for operation in operations:
            chat = operation.method.upper() == "POST"
            if mode == schemathesis.GenerationMode.NEGATIVE and not chat:
                continue
            bounded = settings(max_examples=100 if chat else 5, deadline=None, database=None,
                               suppress_health_check=list(HealthCheck))
            bounded(given(case=operation.as_strategy(mode))(check_answer))()

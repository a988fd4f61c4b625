"""Fixtures of the API tests: the quick-start run loaded in-process, and the live servers shared by modules."""

from __future__ import annotations

import pytest

from .serving import KEY, ONE_THREAD, Served, serving


@pytest.fixture(scope="session")
def api_engine(quickstart_run):
    """The quick-start run loaded in this process as `lmforge api model_name_or_path=<run> do_sample=false` loads it."""
    from lmforge.chat.hf_engine import HFEngine
    from lmforge.config import parse_config

    return HFEngine(parse_config("api", [f"model_name_or_path={quickstart_run}", "do_sample=false"]))


@pytest.fixture(scope="session")
def keyed_server(quickstart_run, tmp_path_factory) -> Served:
    """`lmforge api model_name_or_path=<quick-start run> do_sample=false` with API_KEY set, default limits."""
    log_path = tmp_path_factory.mktemp("api-keyed") / "server.log"
    with serving([f"model_name_or_path={quickstart_run}", "do_sample=false"], log_path,
                 env={**ONE_THREAD, "API_KEY": KEY}, headers={"Authorization": f"Bearer {KEY}"}) as served:
        yield served


@pytest.fixture(scope="session")
def open_server(tiny_llama_dir, tmp_path_factory) -> Served:
    """The tiny random Llama without an API key on 127.0.0.1: the default a user gets, limits included.

    Greedy answers of a random model seldom end before max_tokens, so a long generation is easy to ask
    for. The concurrency limit is raised to 256 for the 200-request burst; everything else is default.
    """
    log_path = tmp_path_factory.mktemp("api-open") / "server.log"
    with serving([f"model_name_or_path={tiny_llama_dir}", "template=llama3", "do_sample=false"], log_path,
                 env={**ONE_THREAD, "API_MAX_CONCURRENT_REQUESTS": "256"}) as served:
        yield served

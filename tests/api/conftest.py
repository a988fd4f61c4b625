"""Fixtures of the API tests: the quick-start run loaded in-process, and helpers."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def api_engine(quickstart_run):
    """The quick-start run loaded in this process as `lmforge api model_name_or_path=<run> do_sample=false` loads it."""
    from lmforge.chat.hf_engine import HFEngine
    from lmforge.config import parse_config

    return HFEngine(parse_config("api", [f"model_name_or_path={quickstart_run}", "do_sample=false"]))


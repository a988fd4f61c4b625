"""Fixtures of the API tests: the quick-start run loaded in-process, and helpers."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture(scope="session")
def api_engine(quickstart_run):
    """The quick-start run in this process, greedy, as `lmforge api model_name_or_path=<run> do_sample=false` loads it."""
    from lmforge.chat.engine import HFEngine
    from lmforge.config import parse_config

    return HFEngine(parse_config("api", [f"model_name_or_path={quickstart_run}", "do_sample=false"]))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# DEV-ONLY-REMOVE
import os as _os
from pathlib import Path as _Path
if _os.environ.get("DEV_QUICKSTART"):
    @pytest.fixture(scope="session")
    def quickstart_run():
        return _Path(_os.environ["DEV_QUICKSTART"])

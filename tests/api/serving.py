"""Start `lmforge api` as a subprocess on a free loopback port, wait for /health, stop it afterwards."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

KEY = "sk-test-1234"  # the API key of the keyed servers
# One torch thread per server: the test process, the server and the tokenizer threads share the
# machine's cores, and OpenMP threads that spin waiting for each other make every step slower.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
# Variables of the server that a test sets explicitly or not at all (the developer's own must not leak in).
SERVER_VARIABLES = ("API_MODEL_NAME", "API_HOST", "API_KEY", "API_STRICT_MODEL_NAME", "API_CORS_ORIGINS",
                    "API_ALLOWED_HOSTS", "API_ALLOW_UNAUTHENTICATED", "API_MAX_BATCH_SIZE", "API_BATCH_WAIT_MS",
                    "API_MAX_CONCURRENT_REQUESTS", "API_MAX_BODY_BYTES", "API_MAX_TOKENS", "API_MAX_REQUEST_TOKENS",
                    "API_MAX_STOP", "API_MAX_STOP_CHARS", "API_SHUTDOWN_TIMEOUT", "FASTAPI_ROOT_PATH")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_environment(port: int, env: dict[str, str] | None = None) -> dict[str, str]:
    environment = {**os.environ, "API_PORT": str(port), "HF_HUB_OFFLINE": "1", **(env or {})}
    for name in SERVER_VARIABLES:
        if name not in (env or {}):
            environment.pop(name, None)
    return environment


@dataclass
class Served:
    """A running server: its base URL, its log file and its process."""

    base: str
    log_path: Path
    proc: subprocess.Popen

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def serving(settings: list[str], log_path: Path, env: dict[str, str] | None = None,
            headers: dict[str, str] | None = None) -> Iterator[Served]:
    """Run `lmforge api SETTINGS` until the block ends; the server's output goes to `log_path`."""
    port = free_port()
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "lmforge", "api", *settings], stdout=log,
                                stderr=subprocess.STDOUT, env=server_environment(port, env))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, f"the server exited:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no answer from /health:\n{log_path.read_text()[-3000:]}"
            try:
                if httpx.get(f"{base}/health", headers=headers, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        yield Served(base, log_path, proc)
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def api_server(settings: list[str], log_path: Path, env: dict[str, str] | None = None,
               headers: dict[str, str] | None = None) -> Iterator[str]:
    """Yield the base URL of `lmforge api SETTINGS` once it answers (see `serving`)."""
    with serving(settings, log_path, env, headers) as served:
        yield served.base

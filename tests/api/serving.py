"""Start `lmforge api` as a subprocess on a free loopback port, wait for /health, stop it afterwards."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def api_server(settings: list[str], log_path: Path, env: dict[str, str] | None = None,
               headers: dict[str, str] | None = None) -> Iterator[str]:
    """Yield the base URL of `lmforge api SETTINGS` once it answers; the server's output goes to `log_path`."""
    port = free_port()
    environment = {**os.environ, "API_PORT": str(port), "HF_HUB_OFFLINE": "1", **(env or {})}
    for name in ("API_MODEL_NAME", "API_HOST", "API_KEY"):
        if name not in (env or {}):
            environment.pop(name, None)
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "lmforge", "api", *settings], stdout=log,
                                stderr=subprocess.STDOUT, env=environment)
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
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

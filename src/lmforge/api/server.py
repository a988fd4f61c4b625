"""`lmforge api CONFIG`: serve a model with an OpenAI-compatible API.

The settings are those of `lmforge chat` (model, data, fine-tuning and generation groups), so a
training output_dir alone is enough: `lmforge api model_name_or_path=saves/run`. The server itself
is configured by environment variables, as in LLaMA-Factory:

  API_HOST            address to listen on (default 127.0.0.1, this machine only; LLaMA-Factory
                      listens on 0.0.0.0: set API_HOST=0.0.0.0 to serve other machines)
  API_PORT            port (default 8000)
  API_KEY             when set, every route needs `Authorization: Bearer <API_KEY>` (401 otherwise)
  API_MODEL_NAME      the model name clients must send and /v1/models lists (default
                      "gpt-3.5-turbo", LLaMA-Factory's, so its client scripts work unchanged);
                      a request for any other name gets 404 model_not_found
  FASTAPI_ROOT_PATH   root path when served behind a proxy under a prefix
  API_MAX_BATCH_SIZE  most rows generated together (default 32)
  API_BATCH_WAIT_MS   how long the first request of a batch waits for company (default 10)
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from lmforge.errors import UserError

if TYPE_CHECKING:
    from lmforge.config import RunConfig

DEFAULT_MODEL_NAME = "gpt-3.5-turbo"


def _int_env(name: str, default: int, low: int, high: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UserError(f"{name}={raw!r} is not an integer; expected a number from {low} to {high}.") from None
    if not low <= value <= high:
        raise UserError(f"{name}={value} is out of range; expected a number from {low} to {high}.")
    return value


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            raise UserError(f"Cannot listen on {host}:{port} ({err.strerror}). Choose another port with API_PORT, "
                            "or another address with API_HOST.") from None


def serve(cfg: RunConfig) -> None:
    """Load the model of `cfg` and serve it until interrupted (settings from the environment, above)."""
    host = os.environ.get("API_HOST", "").strip() or "127.0.0.1"
    port = _int_env("API_PORT", 8000, 1, 65535)
    max_batch_size = _int_env("API_MAX_BATCH_SIZE", 32, 1, 4096)
    batch_wait_ms = _int_env("API_BATCH_WAIT_MS", 10, 0, 10_000)
    api_key = os.environ.get("API_KEY") or None
    model_name = os.environ.get("API_MODEL_NAME", "").strip() or DEFAULT_MODEL_NAME
    root_path = os.environ.get("FASTAPI_ROOT_PATH", "")
    try:
        import uvicorn

        from lmforge.api.app import create_app
    except ImportError as err:
        raise UserError(f"`lmforge api` needs the api extras ({err.name} is missing): "
                        "pip install 'lmforge[api]'.") from None
    _check_port_free(host, port)

    from lmforge.chat.factory import create_engine

    engine = create_engine(cfg)
    app = create_app(engine, model_name, api_key, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms,
                     root_path=root_path)
    shown = f"[{host}]" if ":" in host else host
    print(f"lmforge api: serving '{model_name}' at http://{shown}:{port}/v1 "
          f"(docs: http://{shown}:{port}/docs){'; API key required' if api_key else ''}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")

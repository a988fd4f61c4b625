"""`lmforge api CONFIG`: serve a model with an OpenAI-compatible API.

The settings are those of `lmforge chat` (model, data, fine-tuning and generation groups), so a
training output_dir alone is enough: `lmforge api model_name_or_path=saves/run`. The server itself
is configured by environment variables, as in LLaMA-Factory (`lmforge.api.settings` reads them):

  API_HOST            address to listen on (default 127.0.0.1, this machine only; LLaMA-Factory
                      listens on 0.0.0.0: set API_HOST=0.0.0.0 to serve other machines, with API_KEY)
  API_PORT            port (default 8000)
  API_KEY             when set, every route needs `Authorization: Bearer <API_KEY>` (401 otherwise)
  API_ALLOW_UNAUTHENTICATED  1: serve a non-loopback API_HOST without API_KEY (refused otherwise)
  API_CORS_ORIGINS    comma-separated origins that web pages may call the API from, or `*`
                      (default: `*` with API_KEY, none without)
  API_ALLOWED_HOSTS   without API_KEY on a loopback address, only loopback Host headers are
                      answered (against DNS rebinding); these comma-separated names too (`*`: any)
  API_MODEL_NAME      the model name /v1/models lists (default "gpt-3.5-turbo", LLaMA-Factory's);
                      requests may name any model and get answers under the name they sent
  API_STRICT_MODEL_NAME  1: a request for another model name gets 404 model_not_found
  FASTAPI_ROOT_PATH   root path when served behind a proxy under a prefix
  API_MAX_BATCH_SIZE  most rows generated together (default 32)
  API_BATCH_WAIT_MS   how long the first request of a batch waits for company (default 10)
  API_MAX_CONCURRENT_REQUESTS  chat requests queued or running at once (default 128); past it
                      429 with Retry-After
  API_MAX_BODY_BYTES  largest request body (default 2097152, 2 MiB); larger ones get 413
  API_MAX_TOKENS      ceiling on max_tokens (default 0: the model's context length)
  API_MAX_REQUEST_TOKENS  ceiling on n x max_tokens (default 16384)
  API_MAX_STOP        stop sequences per request (default 16)
  API_MAX_STOP_CHARS  characters per stop sequence (default 128)
  API_SHUTDOWN_TIMEOUT  seconds that SIGTERM lets requests in flight finish before it cancels them
                      (default 5); queued requests get 503 at once
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from lmforge.errors import UserError

if TYPE_CHECKING:
    from lmforge.config import RunConfig


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
    from lmforge.api.settings import ApiSettings

    settings = ApiSettings.from_env()
    settings.check_exposure()
    try:
        import uvicorn

        from lmforge.api.app import create_app
    except ImportError as err:
        raise UserError(f"`lmforge api` needs the api extras ({err.name} is missing): "
                        "pip install 'lmforge[api]'.") from None
    _check_port_free(settings.host, settings.port)

    from lmforge.chat.factory import create_engine

    engine = create_engine(cfg)
    app = create_app(engine, settings)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # uvicorn stops accepting connections and waits up to API_SHUTDOWN_TIMEOUT for those in
            # flight, then cancels them (and with them their generation); queued jobs fail now.
            super().handle_exit(sig, frame)
            app.state.begin_shutdown()

    host, port = settings.host, settings.port
    shown = f"[{host}]" if ":" in host else host
    print(f"lmforge api: serving '{settings.model_name}' at http://{shown}:{port}/v1 "
          f"(docs: http://{shown}:{port}/docs){'; API key required' if settings.api_key else ''}", flush=True)
    config = uvicorn.Config(app, host=host, port=port, log_level="info",
                            timeout_graceful_shutdown=settings.shutdown_timeout_s)
    Server(config).run()

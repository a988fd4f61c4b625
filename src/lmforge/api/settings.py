"""The server's settings, read from environment variables as LLaMA-Factory reads its own.

Every limit has a default that keeps one client from hurting the others; `lmforge api`'s module
docstring (`lmforge.api.server`) and the README's API section list them. A bad value is a one-line
error naming the variable and the accepted range, before the model is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from lmforge.config.environment import env_int, is_loopback
from lmforge.errors import UserError

DEFAULT_MODEL_NAME = "gpt-3.5-turbo"  # LLaMA-Factory's, so its client scripts work unchanged
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class ApiSettings:
    """What `lmforge api` serves and how much one request or client may ask of it."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    model_name: str = DEFAULT_MODEL_NAME
    strict_model_name: bool = False  # refuse other model names (404) instead of serving them
    root_path: str = ""
    max_batch_size: int = 32
    batch_wait_ms: int = 10
    max_concurrent_requests: int = 128  # chat requests queued or running; past it 429 + Retry-After
    max_body_bytes: int = 2 * 1024 * 1024
    max_tokens: int | None = None  # ceiling on max_tokens; None: the model's context length
    max_request_tokens: int = 16384  # n x max_tokens
    max_stop: int = 16  # stop sequences per request
    max_stop_chars: int = 128  # characters per stop sequence
    shutdown_timeout_s: int = 5  # after SIGTERM, requests in flight get this long, then are cancelled
    cors_origins: tuple[str, ...] | None = None  # None: "*" with an API key, none without
    allowed_hosts: tuple[str, ...] = ()  # Host names accepted besides loopback ones ("*": any)
    allow_unauthenticated: bool = False  # serve a non-loopback address without an API key
    media_dir: str | None = None  # the folder image/video paths in requests may point into; None: no files
    max_images: int = 8  # image and video parts per request
    max_image_bytes: int = 8 * 1024 * 1024  # per image or video file
    max_image_pixels: int = 4096 * 4096  # per image, read from its header before decoding

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApiSettings:
        env = os.environ if environ is None else environ
        max_tokens = env_int(env, "API_MAX_TOKENS", 0, 0, 1 << 30)
        return cls(
            host=env.get("API_HOST", "").strip() or "127.0.0.1",
            port=env_int(env, "API_PORT", 8000, 1, 65535),
            api_key=env.get("API_KEY") or None,
            model_name=env.get("API_MODEL_NAME", "").strip() or DEFAULT_MODEL_NAME,
            strict_model_name=_bool(env, "API_STRICT_MODEL_NAME"),
            root_path=env.get("FASTAPI_ROOT_PATH", ""),
            max_batch_size=env_int(env, "API_MAX_BATCH_SIZE", 32, 1, 4096),
            batch_wait_ms=env_int(env, "API_BATCH_WAIT_MS", 10, 0, 10_000),
            max_concurrent_requests=env_int(env, "API_MAX_CONCURRENT_REQUESTS", 128, 1, 1_000_000),
            max_body_bytes=env_int(env, "API_MAX_BODY_BYTES", 2 * 1024 * 1024, 1024, 1 << 31),
            max_tokens=max_tokens or None,
            max_request_tokens=env_int(env, "API_MAX_REQUEST_TOKENS", 16384, 1, 1 << 30),
            max_stop=env_int(env, "API_MAX_STOP", 16, 0, 1024),
            max_stop_chars=env_int(env, "API_MAX_STOP_CHARS", 128, 1, 100_000),
            shutdown_timeout_s=env_int(env, "API_SHUTDOWN_TIMEOUT", 5, 0, 3600),
            cors_origins=_list(env, "API_CORS_ORIGINS"),
            allowed_hosts=_list(env, "API_ALLOWED_HOSTS") or (),
            allow_unauthenticated=_bool(env, "API_ALLOW_UNAUTHENTICATED"),
            media_dir=_folder(env, "API_MEDIA_DIR"),
            max_images=env_int(env, "API_MAX_IMAGES", 8, 0, 1024),
            max_image_bytes=env_int(env, "API_MAX_IMAGE_BYTES", 8 * 1024 * 1024, 1, 1 << 31),
            max_image_pixels=env_int(env, "API_MAX_IMAGE_PIXELS", 4096 * 4096, 1, 1 << 31),
        )

    @property
    def loopback(self) -> bool:
        """Whether the server listens on this machine only."""
        return is_loopback(self.host)

    @property
    def checks_host(self) -> bool:
        """Refuse requests whose Host is not a loopback name: a keyless server bound to loopback only.

        A web page the user visits can make the browser send requests to 127.0.0.1, and with DNS
        rebinding read the answers; such requests carry the attacker's host name in `Host`.
        """
        return not self.api_key and self.loopback and "*" not in self.allowed_hosts

    def allowed_origins(self) -> tuple[str, ...]:
        """The CORS origins: API_CORS_ORIGINS, else any origin with an API key and none without."""
        if self.cors_origins is not None:
            return self.cors_origins
        return ("*",) if self.api_key else ()

    def check_exposure(self) -> None:
        """Refuse to serve other machines without an API key unless that is asked for explicitly."""
        if self.api_key or self.loopback or self.allow_unauthenticated:
            return
        raise UserError(f"API_HOST={self.host} serves other machines, and no API_KEY is set: anyone who can reach "
                        "this port could use the model. Set API_KEY, or set API_ALLOW_UNAUTHENTICATED=1 to serve "
                        "without a key anyway.")


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise UserError(f"{name}={raw!r} is not a switch; expected 1 (on) or 0 (off).")


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...] | None:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return None
    return tuple(item.strip().rstrip("/") for item in raw.split(",") if item.strip())


def _folder(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not os.path.isdir(raw):
        raise UserError(f"{name}={raw} is not a folder; set it to the folder whose files requests may name.")
    return os.path.realpath(raw)

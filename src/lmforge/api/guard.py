"""The checks every HTTP request passes before a route sees it, as plain ASGI middleware.

Plain ASGI (not `@app.middleware("http")`): they read only the headers and wrap `receive`, so
streamed answers pass through as they are. `RequestGuard`, the outermost layer:
  * gives the request an id (`request.state.request_id`, and the `x-request-id` response header),
    which server-side errors carry so that the log line can be found;
  * refuses a body larger than `max_body_bytes` (413): at once from `Content-Length`, else as it
    arrives;
  * without an API key on a loopback address, refuses a `Host` that is not a loopback name (DNS
    rebinding) and an `Origin` that is neither the server itself nor listed in API_CORS_ORIGINS:
    browsers send `Origin` with every cross-site POST, so no web page can drive the server.
`ApiKeyMiddleware` then checks `Authorization: Bearer <API_KEY>`; CORS answers sit between the two.
"""

from __future__ import annotations

import hmac
import uuid
from urllib.parse import urlsplit

from lmforge.api.errors import ApiError, error_response
from lmforge.api.settings import ApiSettings, is_loopback


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex[:24]}"


def request_id(scope) -> str:
    """The id `RequestGuard` gave this request (a new one for an app used without it)."""
    state = scope.setdefault("state", {})
    return state.setdefault("request_id", new_request_id())


class RequestGuard:
    def __init__(self, app, settings: ApiSettings):
        self.app = app
        self.max_body = settings.max_body_bytes
        self.check_host = settings.checks_host
        self.extra_hosts = {h.lower() for h in settings.allowed_hosts}
        self.check_origin = not settings.api_key
        self.origins = set(settings.allowed_origins())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = request_id(scope)

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        headers = dict(scope.get("headers") or [])
        err = self._refusal(headers)
        if err is not None:
            return await error_response(err)(scope, receive, send_with_id)
        return await self.app(scope, self._limited(receive), send_with_id)

    def _refusal(self, headers: dict[bytes, bytes]) -> ApiError | None:
        length = headers.get(b"content-length", b"").decode("latin-1").strip()
        if length.isdigit() and int(length) > self.max_body:
            return too_large(int(length), self.max_body)
        host = headers.get(b"host", b"").decode("latin-1").strip()
        if self.check_host and host and not self._host_allowed(host):
            return ApiError(400, f"The Host header {host!r} is not accepted: without an API key this server only "
                                 "answers requests addressed to localhost, 127.0.0.1 or [::1]. The operator can add "
                                 "names with API_ALLOWED_HOSTS, or set API_KEY.", code="invalid_host")
        origin = headers.get(b"origin", b"").decode("latin-1").strip()
        if self.check_origin and origin and not self._origin_allowed(origin, host):
            return ApiError(403, f"Cross-origin requests from {origin!r} are not allowed: without an API key this "
                                 "server only answers web pages at origins listed in API_CORS_ORIGINS.",
                            code="origin_not_allowed")
        return None

    def _host_allowed(self, host: str) -> bool:
        name = host.lower()
        if name.startswith("["):
            name = name[:name.find("]") + 1]
        elif name.count(":") == 1:
            name = name.split(":")[0]
        return is_loopback(name) or name in self.extra_hosts or host.lower() in self.extra_hosts

    def _origin_allowed(self, origin: str, host: str) -> bool:
        if "*" in self.origins or origin.rstrip("/") in self.origins:
            return True
        # A page the server itself serves (/docs) sends its own origin.
        return bool(host) and urlsplit(origin).netloc.lower() == host.lower()

    def _limited(self, receive):
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise too_large(None, self.max_body)
            return message

        return limited


def too_large(size: int | None, limit: int) -> ApiError:
    shown = f" ({size} bytes)" if size is not None else ""
    return ApiError(413, f"The request body is too large{shown}: this server accepts at most {limit} bytes "
                         "(API_MAX_BODY_BYTES). Shorten the conversation.", code="request_too_large")


class ApiKeyMiddleware:
    """Refuse every HTTP request without `Authorization: Bearer <api_key>` (401 invalid_api_key)."""

    def __init__(self, app, api_key: str):
        self.app = app
        self.api_key = api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
        if not given.strip() or scheme.lower() != b"bearer":
            err = ApiError(401, "You didn't provide an API key. Send it in an Authorization header using Bearer "
                                "auth (Authorization: Bearer YOUR_KEY).", code="invalid_api_key")
        elif not hmac.compare_digest(given.strip(), self.api_key):
            err = ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
        else:
            return await self.app(scope, receive, send)
        await error_response(err)(scope, receive, send)

"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` for every failure.

OpenAI clients read this body to build their exceptions (`openai.BadRequestError` and friends), so
every path out of the server uses it: our own `ApiError`, FastAPI's validation errors (400 with the
field path as `param`, not FastAPI's 422 list), unknown routes, a `UserError` raised by the engine
or the template, and, as a last resort, unexpected exceptions: a 500 whose message carries the
request id and nothing of the exception, which goes to the server log with that id.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmforge.errors import UserError
from lmforge.utils.logging import get_logger

logger = get_logger(__name__)

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class ApiError(Exception):
    """A request the server refuses, with the HTTP status and the OpenAI error fields."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = INVALID_REQUEST, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type
        self.headers = headers

    def body(self) -> dict[str, Any]:
        """The JSON body OpenAI sends for this error."""
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(message: str, *, type: str = INVALID_REQUEST, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """`{"error": {...}}` with all four fields present (null when unknown), as OpenAI sends it."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(err: ApiError) -> JSONResponse:
    """The HTTP response for an `ApiError`."""
    headers = dict(err.headers or {})
    if err.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(err.body(), status_code=err.status, headers=headers or None)


def internal_error(request_id: str, doing: str = "processing your request") -> ApiError:
    """A 500 that tells the client where to look (the request id), not what went wrong inside."""
    return ApiError(500, f"The server had an error while {doing} (request id {request_id}). The server log has "
                         "the details.", type=SERVER_ERROR)


def param_path(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """A pydantic error location as OpenAI writes `param`: ("body", "messages", 2, "role") -> "messages[2].role"."""
    path = ""
    for part in loc:
        if part == "body" and not path:
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or None


def validation_error(errors: list[dict[str, Any]]) -> ApiError:
    """The first pydantic error of a request body as a 400 naming the field."""
    first = errors[0]
    kind = first.get("type", "")
    loc = tuple(first.get("loc", ()))
    if kind == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "invalid JSON")
        return ApiError(400, f"We could not parse the JSON body of your request ({detail}). "
                             "The API expects a JSON object like {\"model\": ..., \"messages\": [...]}.")
    param = param_path(loc)
    if param is None:
        if kind == "missing":
            return ApiError(400, "The request body is missing. Send a JSON object with `model` and `messages`.")
        return ApiError(400, "The request body must be a JSON object with `model` and `messages` "
                             "(sent with Content-Type: application/json).")
    if kind == "extra_forbidden":
        return ApiError(400, f"Unrecognized request argument supplied: {param}", param=param)
    if kind == "missing":
        return ApiError(400, f"Missing required parameter: '{param}'.", param=param)
    message = str(first.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    return ApiError(400, f"Invalid '{param}': {message[0].lower() + message[1:]}.".replace("..", "."), param=param)


def install_error_handlers(app: FastAPI) -> None:
    """Make every error the app can produce an OpenAI error body."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(list(err.errors())))

    @app.exception_handler(UserError)
    async def _user_error(request: Request, err: UserError) -> JSONResponse:
        # The engine and the template raise UserError for conversations they cannot render.
        return error_response(ApiError(400, str(err), param="messages"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        if err.status_code == 404:
            body = ApiError(404, f"Invalid URL ({request.method} {request.url.path}).", code="unknown_url")
        elif err.status_code == 405:
            body = ApiError(405, f"Method {request.method} is not allowed on {request.url.path}.",
                            code="method_not_allowed")
        else:
            body = ApiError(err.status_code, str(err.detail))
        return JSONResponse(body.body(), status_code=err.status_code, headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        rid = request.scope.setdefault("state", {}).get("request_id", "-")
        logger.error("Unexpected error on %s %s (request id %s)", request.method, request.url.path, rid,
                     exc_info=err)
        return error_response(internal_error(rid))


def sse_error(err: ApiError) -> str:
    """An error event for a stream that already started (the status line is gone by then)."""
    return f"data: {json.dumps(err.body(), ensure_ascii=False)}\n\n"

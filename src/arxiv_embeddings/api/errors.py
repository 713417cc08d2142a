"""One error shape for every failure, ``{"error": {"type", "message"}}``, and the ASGI guards that answer before
a route runs: the request-body size limit and the API key.

Nothing reaches a client as a stack trace: validation errors become 400/422 naming the field and the fix, HTTP
errors keep their status, and an unexpected exception becomes a logged 500 with a generic message.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from loguru import logger
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Error type for each HTTP status raised by the framework itself (unknown route, wrong method, ...).
STATUS_TYPES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "queue_full",
    500: "internal_error",
    503: "not_ready",
}


class ApiError(Exception):
    """An error the API answers with ``status`` and the error shape."""

    def __init__(self, status: int, type: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.headers = dict(headers or {})


def error_body(type: str, message: str) -> dict[str, Any]:
    return {"error": {"type": type, "message": message}}


def error_response(status: int, type: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(type, message), status_code=status, headers=dict(headers or {}))


def _shorten(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_TYPE_NAMES = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def _field_name(loc: Iterable[Any]) -> str:
    """``input.0`` for a location such as ``("body", "input", "list[...]", 0, "constrained-str")``: union members
    and type tags are left out."""
    parts = []
    for p in loc:
        text = str(p)
        if text == "body" or "[" in text or "-" in text or text in _TYPE_NAMES or text[:1].isupper():
            continue
        parts.append(text)
    return ".".join(parts) or "body"


def describe_validation(errors: Iterable[Mapping[str, Any]]) -> str:
    """``field: problem (got value)`` for each invalid field, e.g. ``input.0: should be a valid string or a paper
    {title, abstract} (got 1)``. A union reports one problem per member; they are joined with "or", and a field
    whose items are reported on is left out in favour of the items."""
    alternatives: dict[str, list[str]] = {}  # "Input should be X" of each union member -> X
    problems: dict[str, list[str]] = {}
    got: dict[str, str] = {}
    for e in errors:
        field = _field_name(e.get("loc", ()))
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        target = problems
        if msg.startswith("Input should be "):
            msg, target = msg.removeprefix("Input should be "), alternatives
            if msg.startswith("a valid dictionary"):
                msg = "a paper {title, abstract}"
        alternatives.setdefault(field, [])
        if msg not in target.setdefault(field, []):
            target[field].append(msg)
        if e.get("type") != "missing":
            got.setdefault(field, f" (got {_shorten(e.get('input'))})")
    parts = []
    for field in alternatives:
        if any(other.startswith(field + ".") for other in alternatives):
            continue  # its items are reported on
        said = [*problems.get(field, [])]
        if alternatives[field]:
            said.insert(0, "should be " + " or ".join(alternatives[field]))
        parts.append(f"{field}: {'; '.join(said)}{got.get(field, '')}")
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error the app can raise through the one error shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return error_response(err.status, err.type, err.message, err.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError) -> JSONResponse:
        errors = list(err.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "invalid_json", "The request body is not valid JSON; send a JSON object.")
        return error_response(422, "invalid_request", describe_validation(errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = STATUS_TYPES.get(err.status_code, "http_error")
        message = str(err.detail)
        if err.status_code == 404:
            message = f"No route {request.url.path}; see /docs for the routes."
        elif err.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; see /docs for the routes."
        return error_response(err.status_code, kind, message, getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        logger.opt(exception=err).error(f"Unhandled error on {request.method} {request.url.path}: {err!r}")
        return error_response(500, "internal_error", "An unexpected error occurred; it has been logged.")


# ------------------------------------------------------------------------------------------- ASGI guards
async def _send_error(send: Send, status: int, type: str, message: str, headers: Mapping[str, str] = {}) -> None:
    body = json.dumps(error_body(type, message)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Answer 413 to a request body over ``max_bytes``, whether it declares its length or streams it, and 408 to
    one that has not arrived whole ``timeout_s`` after the request began (a slow or stalled client).

    The body is read here (it is small by construction) and replayed to the app, so the app never sees a
    truncated body and the limits hold for chunked uploads too. Waiting for a slow body costs the server nothing
    but the connection: other requests are served meanwhile.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    def _too_large(self, size: int | str) -> str:
        return f"The request body has {size} bytes, over the limit of {self.max_bytes}; send fewer or shorter texts."

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _send_error(send, 400, "invalid_request", f"Invalid Content-Length header {declared!r}.")
                return
            if length > self.max_bytes:
                await _send_error(send, 413, "payload_too_large", self._too_large(length))
                return
            if length == 0:
                await self.app(scope, receive, send)
                return
        elif b"chunked" not in headers.get(b"transfer-encoding", b""):
            await self.app(scope, receive, send)  # no body
            return

        chunks: list[bytes] = []
        size = 0
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        while True:
            try:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                message = await asyncio.wait_for(receive(), timeout=left)
            except TimeoutError:
                logger.warning(
                    f"{scope.get('path')}: request body not complete after {self.timeout_s}s ({size} bytes)."
                )
                await _send_error(
                    send,
                    408,
                    "request_timeout",
                    f"The request body did not arrive within {self.timeout_s:g}s ({size} bytes received); send it "
                    "whole, at once.",
                    {"Connection": "close"},  # the rest of that body must not be read as the next request
                )
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _send_error(send, 413, "payload_too_large", self._too_large(f"more than {self.max_bytes}"))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class ApiKeyMiddleware:
    """Require ``Authorization: Bearer <key>`` on every path but ``open_paths``."""

    def __init__(self, app: ASGIApp, key: str, open_paths: Iterable[str] = ("/health",)) -> None:
        self.app = app
        self._key = key.encode()
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer" and secrets.compare_digest(token.strip(), self._key):
            await self.app(scope, receive, send)
            return
        message = (
            "Missing API key: send the header 'Authorization: Bearer <key>'."
            if not token
            else "Invalid API key in the Authorization header."
        )
        await _send_error(send, 401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})

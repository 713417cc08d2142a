"""One error shape for every failure, ``{"error": {"type", "message"}}`` (the ASGI guards of
:mod:`arxiv_embeddings.api.middleware` answer in it too).

Nothing reaches a client as a stack trace: validation errors become 400/422 naming the field and the fix, HTTP
errors keep their status, and an unexpected exception becomes a logged 500 with a generic message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from loguru import logger
from starlette.exceptions import HTTPException as StarletteHTTPException

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

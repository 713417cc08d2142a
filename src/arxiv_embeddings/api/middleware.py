"""The ASGI guards that answer before a route runs, in the API's error shape: the request-body size limit (and the
time a body may take to arrive) and the API key."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterable, Mapping

from loguru import logger
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from arxiv_embeddings.api.errors import error_body


async def send_error(send: Send, status: int, type: str, message: str, headers: Mapping[str, str] = {}) -> None:
    """Answer the request with ``status`` and the error shape, before any route runs."""
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
                await send_error(send, 400, "invalid_request", f"Invalid Content-Length header {declared!r}.")
                return
            if length > self.max_bytes:
                await send_error(send, 413, "payload_too_large", self._too_large(length))
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
                await send_error(
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
                await send_error(send, 413, "payload_too_large", self._too_large(f"more than {self.max_bytes}"))
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
        await send_error(send, 401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})

"""The load generator against a local HTTP server that answers some requests with errors."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from helpers.http_client import send_json

from arxiv_embeddings.loadtest import run_load


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the API
    seen: ClassVar[list[dict]] = []
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            self.seen.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
            n = len(self.seen)
        if n % 4 == 0:  # every 4th request is refused
            send_json(self, 429, {"error": {"type": "queue_full", "message": "retry"}}, {"Retry-After": "1"})
        else:
            send_json(self, 200, {"embeddings": [[0.0]]})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def test_load_counts_requests_errors_and_latencies(server: str) -> None:
    texts = ["first abstract", "second abstract", "third abstract"]
    result = asyncio.run(run_load(server, texts, concurrency=4, duration=0.5, route="/v1/embeddings", api_key="k"))
    seen = _Handler.seen
    assert result.requests == len(seen) == len(result.latencies_ms) > 8
    assert result.errors == len(seen) // 4 and result.error_kinds == {"429": len(seen) // 4}
    assert result.in_window <= result.requests - result.errors
    assert {s["path"] for s in seen} == {"/v1/embeddings"} and {s["auth"] for s in seen} == {"Bearer k"}
    assert {s["body"]["input"] for s in seen} == set(texts) and all(s["body"]["model"] for s in seen)
    summary = result.summary()
    assert summary["error_kinds"] == {"429": len(seen) // 4}
    assert 0 < result.client_cpu_s < 5  # its own CPU time over a half-second run (plus set-up)
    assert summary["client_cpu_ms_per_request"] == round(1000 * result.client_cpu_s / result.requests, 2)


def test_unreachable_server_counts_connection_errors() -> None:
    result = asyncio.run(run_load("http://127.0.0.1:9", ["x"], concurrency=2, duration=0.2, timeout=2))
    assert result.requests > 0 and result.errors == result.requests and result.in_window == 0
    assert all(kind.startswith("Client") for kind in result.error_kinds), result.error_kinds

"""The running server (``python -m arxiv_embeddings.api``, on loopback) under what clients do wrong: schemathesis'
stateless generation over every operation with every check, oversized bodies, and slow clients that send half a
request and stall. No 5xx, and the other clients are served meanwhile."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.api import wait_serving

from arxiv_embeddings.api.settings import ENV_PREFIX, ENV_VARS

REPO = Path(__file__).resolve().parents[2]
BODY_LIMIT = 8192
BODY_TIMEOUT_S = 2

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, processed_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The container command on a free loopback port, as the API image runs it (ONNX: the server starts in a few
    seconds, without importing torch), with the tiny model and an index of its test split."""
    import shutil

    from arxiv_embeddings.config import compose
    from arxiv_embeddings.export.build import build_onnx
    from arxiv_embeddings.index import stage as index_stage

    root = tmp_path_factory.mktemp("abuse")
    model = root / "tiny"
    shutil.copytree(tiny_model_dir, model)
    (model / "onnx").mkdir()
    build_onnx(model, model / "onnx", levels=[], arch=None)
    built = index_stage.run(
        compose(
            "index",
            [
                f"paths.root_dir={root}",
                f"paths.processed_dir={processed_root / 'data' / 'processed'}",
                f"index.model={model}",
                "index.backend=onnx",
                "index.name=tiny",
                "index.type=flat",
                "index.corpus.splits=[test]",
                "index.eval.queries=20",
            ],
        )
    )
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS and not k.upper().startswith(ENV_PREFIX)}
    env.update(PORT=str(port), HOST="127.0.0.1", MODEL_PATH=str(model), INDEX_PATH=str(built["dir"]), BACKEND="onnx")
    cmd = [
        sys.executable,
        "-m",
        "arxiv_embeddings.api",
        f"paths.root_dir={root}",
        "serve.search=true",
        "serve.workers=1",
        f"serve.max_body_bytes={BODY_LIMIT}",
        f"serve.body_timeout_s={BODY_TIMEOUT_S}",
        "serve.max_batch=8",
        "serve.max_chars=500",
        "serve.max_k=20",
        "serve.access_log=false",
    ]
    log_path = root / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_serving(proc, url, log_path)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "Traceback" not in log_path.read_text(), log_path.read_text()[-5000:]


def _served_quickly(url: str, n: int = 5) -> float:
    """Seconds of the slowest of ``n`` ordinary /embed requests."""
    slowest = 0.0
    with httpx.Client(base_url=url, timeout=20) as client:
        for i in range(n):
            t0 = time.perf_counter()
            response = client.post("/embed", json={"input": [f"a text {i}"]})
            assert response.status_code == 200, response.text
            slowest = max(slowest, time.perf_counter() - t0)
    return slowest


# ------------------------------------------------------------------------------------------- schemathesis
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schemathesis_every_operation_every_check_no_server_error(server: str, mode: str) -> None:
    """Stateless generation from the served OpenAPI schema, over HTTP, with every check schemathesis has (status
    codes, content types, headers and bodies as documented, valid data accepted, invalid data rejected, missing
    headers, unsupported methods, ...). Prints how many cases each operation got."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import CHECKS

    checks = CHECKS.get_all()
    api = schemathesis.openapi.from_url(f"{server}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    names = {f"{op.method.upper()} {op.path}" for op in operations}
    assert names >= {"GET /health", "POST /embed", "POST /v1/embeddings", "POST /search"}, names
    cases: Counter[str] = Counter()
    statuses: Counter[int] = Counter()

    def run(operation: Any) -> None:
        name = f"{operation.method.upper()} {operation.path}"

        @given(case=operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode)))
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def exercise(case: Any) -> None:
            cases[name] += 1
            statuses[case.call_and_validate(base_url=server, checks=checks).status_code] += 1

        exercise()

    for operation in operations:
        if mode == "negative" and operation.method.upper() == "GET":
            continue  # nothing to make invalid: the GET routes take no parameters and no body
        run(operation)
    print(
        f"schemathesis ({mode}): {sum(cases.values())} cases, {dict(sorted(cases.items()))}, statuses {dict(statuses)}"
    )
    assert sum(cases.values()) >= 2 * len(cases) and not [s for s in statuses if s >= 500], statuses
    if mode == "positive":
        assert statuses[200] > 0  # valid requests reach the model
    else:
        assert any(400 <= s < 500 for s in statuses)


# ------------------------------------------------------------------------------------------- big and slow bodies
def test_oversized_bodies_get_413_declared_or_streamed(server: str) -> None:
    big = b'{"input": ["' + b"x" * (4 * BODY_LIMIT) + b'"]}'
    declared = httpx.post(f"{server}/embed", content=big, headers={"Content-Type": "application/json"}, timeout=20)
    assert declared.status_code == 413 and declared.json()["error"]["type"] == "payload_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        for i in range(0, len(big), 1024):
            yield big[i : i + 1024]

    streamed = httpx.post(f"{server}/embed", content=chunks(), headers={"Content-Type": "application/json"}, timeout=20)
    assert streamed.status_code == 413 and str(BODY_LIMIT) in streamed.json()["error"]["message"]
    assert _served_quickly(server) < 5


def _raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=BODY_TIMEOUT_S * 5)
    return sock


def test_slow_clients_get_408_and_do_not_hold_up_the_others(server: str) -> None:
    """Ten loopback connections each send the headers and the start of a body, then stall: each gets 408 once
    serve.body_timeout_s has passed and its connection is closed; ordinary requests made meanwhile are answered
    at once. Two more send only half of their headers: they hold nothing but their own connection."""
    stalled = []
    for _ in range(10):
        sock = _raw(server)
        sock.sendall(
            b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n"
        )
        sock.sendall(b'{"input": ["half a bo')
        stalled.append(sock)
    half_headers = []
    for _ in range(2):
        sock = _raw(server)
        sock.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-")
        half_headers.append(sock)
    started = time.monotonic()
    meanwhile: list[float] = []
    worker = threading.Thread(target=lambda: meanwhile.append(_served_quickly(server, n=10)))
    worker.start()
    answers = []
    for sock in stalled:
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        answers.append(data)
        assert sock.recv(1) == b""  # closed by the server after the answer
        sock.close()
    waited = time.monotonic() - started
    worker.join(60)
    for sock in half_headers:
        sock.close()
    assert all(a.startswith(b"HTTP/1.1 408") and b"request_timeout" in a for a in answers), answers[0][:300]
    assert BODY_TIMEOUT_S * 0.8 <= waited < BODY_TIMEOUT_S + 10, waited
    assert meanwhile and meanwhile[0] < 5, meanwhile  # the others were not held up

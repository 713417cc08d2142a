"""The embedding API in process, with the tiny real model: routes, errors, batching, readiness, auth, settings."""

from __future__ import annotations

import asyncio
import base64
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers.api import (
    RecordingLoader,
    assert_error,
    clear_serving_env,
    make_settings,
    wait_ready,
)

from arxiv_embeddings.api.app import create_app
from arxiv_embeddings.api.middleware import BodyLimitMiddleware
from arxiv_embeddings.api.runtime import choose_model
from arxiv_embeddings.api.settings import Settings
from arxiv_embeddings.config import ConfigError
from arxiv_embeddings.layout import latest_trained_model

TEXTS = [
    "Graph neural networks for molecular property prediction",
    "Dark matter halos in dwarf galaxies",
    "A posteriori error estimates for finite element methods",
    "Quantum error correction with surface codes",
]


@pytest.fixture(autouse=True)
def _no_serving_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_serving_env(monkeypatch)


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Any]]:
    """One running app over the tiny model, its embedder wrapped to record calls."""
    mp = pytest.MonkeyPatch()
    clear_serving_env(mp)
    loader = RecordingLoader()
    app = create_app(make_settings(tmp_path_factory.mktemp("serve"), tiny_model_dir), load_embedder=loader)
    with TestClient(app) as client:
        wait_ready(client)
        yield client, loader.embedder
    mp.undo()


def _reference(embedder: Any, texts: list[str]) -> np.ndarray:
    """What the model itself makes of the texts, one call each (no batching)."""
    return np.vstack([embedder.inner.encode([t], normalize=True) for t in texts])


# ------------------------------------------------------------------------------------------------ routes
def test_health_reports_the_loaded_model(served, tiny_model_dir: Path) -> None:
    client, embedder = served
    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert health["model"] == tiny_model_dir.name and health["model_path"] == str(tiny_model_dir)
    assert health["dimension"] == embedder.inner.dimension == 32
    assert health["backend"] == "torch" and health["variant"] == "fp32" and health["device"] == "cpu"
    assert health["max_seq_length"] == 64 and health["version"] and health["index_size"] is None
    # No tasks.json in the folder: every task on the whole model.
    assert health["tasks"] == {"subject": "model", "search": "model", "graded": "model"}
    assert health["default_task"] == "subject" and health["search_output"] is None


def test_embed_one_text_matches_the_model(served, tiny_model_dir: Path) -> None:
    client, embedder = served
    body = client.post("/embed", json={"input": TEXTS[0]}).json()
    assert body["model"] == tiny_model_dir.name and body["dimension"] == 32 and body["normalized"] is True
    assert (body["task"], body["output"]) == ("subject", "model")
    vectors = np.asarray(body["embeddings"], dtype=np.float32)
    assert vectors.shape == (1, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, _reference(embedder, TEXTS[:1]), atol=1e-5)


def test_models_and_info_name_what_is_served(served, tiny_model_dir: Path) -> None:
    client, _ = served
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list"
    ids = [m["id"] for m in listed["data"]]
    name = tiny_model_dir.name  # the folder's own name: it is not models/<run>/final
    assert ids == [name, f"{name}:subject", f"{name}:search", f"{name}:graded"]
    assert all(m["object"] == "model" and m["created"] > 0 and m["owned_by"] for m in listed["data"])
    info = client.get("/info").json()
    assert (info["model_id"], info["model_path"], info["dimension"]) == (name, str(tiny_model_dir), 32)
    assert (info["max_input_length"], info["backend"], info["variant"]) == (64, "torch", "fp32")
    assert info["max_client_batch_size"] == client.app.state.settings.max_batch and info["version"]
    assert info["tasks"]["search"] == {"output": "model", "dimension": 32} and info["default_task"] == "subject"
    # every listed id is a model name /v1/embeddings takes
    for model_id in ids:
        assert client.post("/v1/embeddings", json={"input": "x", "model": model_id}).status_code == 200


def test_embed_takes_the_tei_body_and_answers_in_its_shape(served) -> None:
    """text-embeddings-inference's POST /embed: `inputs` (a text or a list), `normalize`, `truncate`; the answer is
    a bare array of embeddings, so a TEI client works unchanged."""
    client, embedder = served
    many = client.post("/embed", json={"inputs": TEXTS[:2], "truncate": True}).json()
    assert isinstance(many, list) and len(many) == 2
    np.testing.assert_allclose(np.asarray(many), _reference(embedder, TEXTS[:2]), atol=1e-5)
    one = client.post("/embed", json={"inputs": TEXTS[0], "normalize": False}).json()
    np.testing.assert_allclose(np.asarray(one), embedder.inner.encode(TEXTS[:1], normalize=False), atol=1e-5)
    for body in ({"inputs": "x", "input": "x"}, {"normalize": True}):
        error = assert_error(client.post("/embed", json=body), 422, "invalid_request")
        assert "`input`, or in `inputs`" in error["message"], error


def test_the_served_name_is_configurable(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SERVED_MODEL_NAME", "arxiv-minilm")
    app = create_app(make_settings(tmp_path, tiny_model_dir))
    with TestClient(app) as client:
        wait_ready(client)
        assert client.get("/health").json()["model"] == "arxiv-minilm"
        assert client.post("/embed", json={"input": "x"}).json()["model"] == "arxiv-minilm"
        assert client.get("/v1/models").json()["data"][0]["id"] == "arxiv-minilm"
        body = client.post("/v1/embeddings", json={"input": "x", "model": "arxiv-minilm:search"}).json()
        assert body["model"] == "arxiv-minilm"


def test_embed_texts_and_papers_keep_their_order(served) -> None:
    client, embedder = served
    paper = {"title": "Surface codes", "abstract": "We study quantum error correction."}
    body = client.post("/embed", json={"input": [TEXTS[1], paper, {"abstract": TEXTS[2]}, TEXTS[3]]}).json()
    expected = _reference(embedder, [TEXTS[1], "Surface codes\nWe study quantum error correction.", TEXTS[2], TEXTS[3]])
    np.testing.assert_allclose(np.asarray(body["embeddings"]), expected, atol=1e-5)


def test_embed_matryoshka_truncation_and_raw_vectors(served) -> None:
    client, embedder = served
    raw = embedder.inner.encode(TEXTS[:2], normalize=False)
    body = client.post("/embed", json={"input": TEXTS[:2], "dimensions": 8}).json()
    truncated = np.asarray(body["embeddings"])
    assert body["dimension"] == 8 and truncated.shape == (2, 8)
    expected = raw[:, :8] / np.linalg.norm(raw[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(truncated, expected, atol=1e-5)
    plain = client.post("/embed", json={"input": TEXTS[:2], "normalize": False}).json()
    assert plain["normalized"] is False
    np.testing.assert_allclose(np.asarray(plain["embeddings"]), raw, atol=1e-5)
    error = assert_error(client.post("/embed", json={"input": "x", "dimensions": 33}), 422, "invalid_dimensions")
    assert "33" in error["message"] and "1 to 32" in error["message"]


def test_openai_compatible_embeddings(served, tiny_model_dir: Path) -> None:
    client, embedder = served
    floats = client.post("/v1/embeddings", json={"input": TEXTS[:3], "model": "text-embedding-3-small"}).json()
    assert floats["object"] == "list" and floats["model"] == tiny_model_dir.name
    assert [d["index"] for d in floats["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" for d in floats["data"])
    vectors = np.asarray([d["embedding"] for d in floats["data"]])
    np.testing.assert_allclose(vectors, _reference(embedder, TEXTS[:3]), atol=1e-5)
    tokenizer = embedder.inner.model.tokenizer
    tokens = sum(len(ids) for ids in tokenizer(TEXTS[:3], truncation=True, max_length=64)["input_ids"])
    assert floats["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}

    b64 = client.post(
        "/v1/embeddings", json={"input": TEXTS[0], "model": "m", "encoding_format": "base64", "dimensions": 16}
    ).json()
    decoded = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    assert decoded.shape == (16,)
    raw = embedder.inner.encode(TEXTS[:1], normalize=False)[0, :16]
    np.testing.assert_allclose(decoded, raw / np.linalg.norm(raw), atol=1e-5)


def test_concurrent_openai_requests_never_fail(served) -> None:
    """Token counting runs beside the model thread; concurrent requests must not share a tokenizer (500s)."""
    from concurrent.futures import ThreadPoolExecutor

    client, _ = served
    body = {"input": [t * 3 for t in TEXTS], "model": "m"}
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: client.post("/v1/embeddings", json=body), range(48)))
    assert [r.status_code for r in responses] == [200] * 48
    assert len({r.json()["usage"]["prompt_tokens"] for r in responses}) == 1


def test_search_without_an_index_explains_why(served) -> None:
    client, _ = served
    error = assert_error(client.post("/search", json={"text": "galaxies"}), 404, "search_unavailable")
    assert "uv run inv index" in error["message"]


def test_metrics_count_requests_and_batches(served) -> None:
    client, _ = served
    client.post("/embed", json={"input": TEXTS})
    text = client.get("/metrics").text
    assert 'http_requests_total{handler="/embed",method="POST",status="2xx"}' in text
    assert "http_request_duration_seconds_bucket" in text
    sizes = [line for line in text.splitlines() if line.startswith("embedding_batch_size_count")]
    assert sizes and float(sizes[0].split()[-1]) >= 1
    assert "embedding_queue_texts 0.0" in text


def test_search_page_is_served(served) -> None:
    client, _ = served
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="abstract"' in page.text and "search" in page.text


# ----------------------------------------------------------------------------------------- bad input
LONG = "x" * 501


@pytest.mark.parametrize(
    ("path", "body", "status", "kind"),
    [
        ("/embed", {"input": ""}, 422, "invalid_request"),
        ("/embed", {"input": "   \n\t"}, 422, "empty_text"),
        ("/embed", {"input": ["fine", " "]}, 422, "empty_text"),
        ("/embed", {"input": 3}, 422, "invalid_request"),
        ("/embed", {"input": [1, 2]}, 422, "invalid_request"),
        ("/embed", {"input": []}, 422, "invalid_request"),
        ("/embed", {"input": {"title": " "}}, 422, "invalid_request"),
        ("/embed", {"input": {"title": "t", "authors": "x"}}, 422, "invalid_request"),
        ("/embed", {"input": "a", "colour": "red"}, 422, "invalid_request"),
        ("/embed", {"input": "a", "normalize": "maybe"}, 422, "invalid_request"),
        ("/embed", {"input": "a", "dimensions": 0}, 422, "invalid_request"),
        ("/embed", {"input": "a", "dimensions": True}, 422, "invalid_request"),  # not coerced to 1
        ("/embed", {"input": "a", "task": "clustering"}, 422, "unknown_task"),
        ("/embed", {"input": "a", "task": 1}, 422, "invalid_request"),
        ("/v1/embeddings", {"input": "a", "model": "m", "dimensions": "8"}, 422, "invalid_request"),
        ("/search", {"text": "a", "k": 2.0}, 422, "invalid_request"),
        ("/embed", {}, 422, "invalid_request"),
        ("/embed", {"input": ["t"] * 9}, 422, "too_many_texts"),
        ("/embed", {"input": LONG}, 422, "text_too_long"),
        ("/embed", {"input": {"title": "t", "abstract": LONG}}, 422, "text_too_long"),
        ("/v1/embeddings", {"input": "a"}, 422, "invalid_request"),
        ("/v1/embeddings", {"input": [[1, 2, 3]], "model": "m"}, 422, "invalid_request"),
        ("/v1/embeddings", {"input": "a", "model": "m", "encoding_format": "int8"}, 422, "invalid_request"),
        ("/v1/embeddings", {"input": ["a"] * 9, "model": "m"}, 422, "too_many_texts"),
        ("/search", {}, 422, "invalid_request"),
        ("/search", {"text": "a", "arxiv_id": "2401.01234"}, 422, "invalid_request"),
        ("/search", {"text": "a", "k": 0}, 422, "invalid_request"),
        ("/search", {"text": "a", "limit": 3}, 422, "invalid_request"),
    ],
)
def test_bad_input_gets_a_4xx_in_the_error_shape(served, path: str, body: Any, status: int, kind: str) -> None:
    client, _ = served
    error = assert_error(client.post(path, json=body), status, kind)
    assert len(error["message"]) > 10


def test_messages_name_the_field_and_the_limit(served) -> None:
    client, _ = served
    assert "input.1" in assert_error(client.post("/embed", json={"input": ["ok", " "]}), 422)["message"]
    too_many = assert_error(client.post("/embed", json={"input": ["t"] * 9}), 422)["message"]
    assert "9 texts" in too_many and "8" in too_many and "serve.max_batch" in too_many
    too_long = assert_error(client.post("/embed", json={"input": LONG}), 422)["message"]
    assert "501" in too_long and "500" in too_long and "serve.max_chars" in too_long
    unknown = assert_error(client.post("/embed", json={"input": "a", "colour": "red"}), 422)["message"]
    assert "colour" in unknown
    task = assert_error(client.post("/embed", json={"input": "a", "task": "clustering"}), 422)["message"]
    assert "'clustering'" in task and "valid tasks: subject, search, graded" in task and "no tasks.json" in task


def test_malformed_requests(served) -> None:
    client, _ = served
    json_header = {"content-type": "application/json"}
    assert_error(client.post("/embed", content=b'{"input": ', headers=json_header), 400, "invalid_json")
    assert_error(client.post("/embed", content=b"\xff\xfe not utf-8", headers=json_header), 400, "invalid_json")
    assert_error(client.post("/embed", content=b'{"input": "\\ud800"}', headers=json_header), 422)
    assert_error(client.post("/embed", content=b"input=hello", headers={"content-type": "text/plain"}), 422)
    assert_error(client.post("/embed", content=b'["a", "b"]', headers=json_header), 422)
    assert_error(client.get("/no-such-route"), 404, "not_found")
    assert_error(client.get("/embed"), 405, "method_not_allowed")


def test_body_over_the_size_limit(served) -> None:
    client, _ = served
    big = {"input": ["y" * 1100] * 8}  # 8,900 bytes > 8192
    error = assert_error(client.post("/embed", json=big), 413, "payload_too_large")
    assert "8192" in error["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold for a streamed body too
        yield b'{"input": "'
        for _ in range(20):
            yield b"w" * 1000
        yield b'"}'

    assert_error(client.post("/embed", content=chunks(), headers={"content-type": "application/json"}), 413)


def test_invalid_content_length_is_a_400() -> None:
    """HTTP servers reject it before the app; the guard does too when called directly (ASGI)."""
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the app must not run")

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/embed", "headers": [(b"content-length", b"abc")]}
    asyncio.run(BodyLimitMiddleware(app, max_bytes=1024)(scope, receive, send))
    assert sent[0]["status"] == 400
    assert b"Content-Length" in sent[1]["body"]


# ------------------------------------------------------------------------------------------------ batching
def test_concurrent_requests_are_batched_and_each_caller_gets_its_rows(served) -> None:
    client, embedder = served
    texts = [f"{TEXTS[i % 4]} (variant {i})" for i in range(24)]

    async def fire() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await asyncio.gather(*(http.post("/embed", json={"input": t}) for t in texts))

    before = len(embedder.calls)
    responses = asyncio.run(fire())
    calls = embedder.calls[before:]
    assert all(r.status_code == 200 for r in responses)
    assert sum(calls) == len(texts)
    assert len(calls) < len(texts) and max(calls) > 1, calls
    got = np.vstack([r.json()["embeddings"][0] for r in responses])
    np.testing.assert_allclose(got, _reference(embedder, texts), atol=1e-5)


def test_queue_full_answers_429_with_retry_after(tiny_model_dir: Path, tmp_path: Path) -> None:
    loader = RecordingLoader()
    settings = make_settings(tmp_path, tiny_model_dir, "serve.queue_size=4", "serve.max_batch=4", "serve.batch_size=4")
    app = create_app(settings, load_embedder=loader)
    with TestClient(app) as client:
        wait_ready(client)
        embedder = loader.embedder
        embedder.gate.clear()
        embedder.entered.clear()
        results: dict[str, httpx.Response] = {}

        def post(name: str, texts: list[str]) -> None:
            results[name] = client.post("/embed", json={"input": texts})

        first = threading.Thread(target=post, args=("first", TEXTS))  # taken by the worker, held in encode
        first.start()
        assert embedder.entered.wait(30)
        second = threading.Thread(target=post, args=("second", TEXTS))  # fills the queue (4 texts)
        second.start()
        deadline = time.monotonic() + 30
        while app.state.service.batcher.queued_texts < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = client.post("/embed", json={"input": "one more"})
        error = assert_error(refused, 429, "queue_full")
        assert refused.headers["retry-after"] == "1" and "retry" in error["message"]
        embedder.gate.set()
        first.join(30)
        second.join(30)
        assert results["first"].status_code == 200 and results["second"].status_code == 200
        assert "embedding_rejected_requests_total 1.0" in client.get("/metrics").text


# ---------------------------------------------------------------------------------------------- readiness
def test_health_is_503_while_loading_then_200(tiny_model_dir: Path, tmp_path: Path) -> None:
    release = threading.Event()
    app = create_app(make_settings(tmp_path, tiny_model_dir), load_embedder=RecordingLoader(wait_for=release))
    with TestClient(app) as client:
        loading = client.get("/health")
        assert_error(loading, 503, "not_ready")
        assert loading.headers["retry-after"] == "1"
        assert_error(client.post("/embed", json={"input": "a"}), 503, "not_ready")
        release.set()
        assert wait_ready(client)["dimension"] == 32
        assert client.post("/embed", json={"input": "a"}).status_code == 200


def test_failed_load_stays_503_with_the_reason(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    app = create_app(make_settings(tmp_path, missing))
    with TestClient(app) as client:
        app.state.service.wait_loaded(60)
        error = assert_error(client.get("/health"), 503, "model_load_failed")
        assert str(missing) in error["message"] and "MODEL_PATH" in error["message"]
        assert_error(client.post("/embed", json={"input": "a"}), 503, "model_load_failed")


def test_shutdown_finishes_queued_work_then_refuses(tiny_model_dir: Path, tmp_path: Path) -> None:
    loader = RecordingLoader()
    app = create_app(make_settings(tmp_path, tiny_model_dir), load_embedder=loader)
    with TestClient(app) as client:
        wait_ready(client)
        batcher = app.state.service.batcher
        loader.embedder.gate.clear()
        future = batcher.submit(["queued before shutdown"], "model")  # the batcher's group: the model output
        loader.embedder.gate.set()
    assert future.result(timeout=5).shape == (1, 32)  # the lifespan shutdown drained the queue
    assert app.state.service.status == "stopping"
    late = client.post("/embed", json={"input": "after shutdown"})  # no lifespan: the stopped service answers
    assert_error(late, 503, "shutting_down")
    assert late.headers["retry-after"] == "1"


# --------------------------------------------------------------------------------------------------- auth
@pytest.mark.parametrize("source", ["value", "file"])
def test_api_key_protects_every_route_but_health(tiny_model_dir: Path, tmp_path: Path, source: str) -> None:
    key = "s3cret-key"
    if source == "value":
        settings = make_settings(tmp_path, tiny_model_dir, api_key=key)
    else:
        (tmp_path / "key.txt").write_text(key + "\n")
        settings = make_settings(tmp_path, tiny_model_dir, f"serve.api_key_file={tmp_path / 'key.txt'}")
    with TestClient(create_app(settings)) as client:
        wait_ready(client)  # /health needs no key
        good = {"Authorization": f"Bearer {key}"}
        for method, path, body in [
            ("POST", "/embed", {"input": "a"}),
            ("POST", "/v1/embeddings", {"input": "a", "model": "m"}),
            ("POST", "/search", {"text": "a"}),
            ("GET", "/metrics", None),
            ("GET", "/docs", None),
            ("GET", "/openapi.json", None),
        ]:
            missing = client.request(method, path, json=body)
            assert assert_error(missing, 401, "unauthorized")["message"].startswith("Missing API key")
            assert missing.headers["www-authenticate"] == "Bearer"
            assert_error(client.request(method, path, json=body, headers={"Authorization": "Bearer wrong"}), 401)
            assert_error(client.request(method, path, json=body, headers={"Authorization": key}), 401)
            assert client.request(method, path, json=body, headers=good).status_code in (200, 404), path
        assert client.post("/embed", json={"input": "a"}, headers=good).status_code == 200
        assert client.get("/").status_code == 200  # the static page; its calls carry the key


def test_auth_off_by_default(served) -> None:
    client, _ = served
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_unreadable_key_file_fails_at_creation(tiny_model_dir: Path, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, tiny_model_dir, f"serve.api_key_file={tmp_path / 'absent'}")
    with pytest.raises(ConfigError, match="API key file"):
        create_app(settings)


# ----------------------------------------------------------------------------------------------- settings
def test_settings_precedence_values_over_env_over_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    base = Settings.load([f"paths.root_dir={tmp_path}"])
    assert base.port == 8080 and base.batch_size == 32 and base.api_key is None
    assert base.models_dir == tmp_path / "models" and base.default_index_path == tmp_path / "indexes" / "minilm-sample"
    monkeypatch.setenv("PORT", "9123")
    monkeypatch.setenv("MODEL_PATH", "/models/x")
    monkeypatch.setenv("LOG_JSON", "true")
    monkeypatch.setenv("SERVE_BATCH_WAIT_MS", "2.5")
    monkeypatch.setenv("API_KEY", "k")
    s = Settings.load(["serve.port=7000", "serve.max_k=7"], batch_size=4)
    assert (s.port, s.model_path, s.log_json, s.batch_wait_ms, s.max_k, s.batch_size) == (
        9123,
        "/models/x",
        True,
        2.5,
        7,
        4,
    )
    assert s.resolved_api_key() == "k"
    assert Settings.load(port=1).port == 1


def test_settings_errors_name_key_env_and_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "eighty")
    with pytest.raises(ConfigError, match=r"serve\.port \(env SERVE_PORT or PORT\)='eighty'"):
        Settings.load()
    monkeypatch.delenv("PORT")
    with pytest.raises(ConfigError, match=r"raise serve\.queue_size or lower serve\.max_batch"):
        Settings.load(["serve.max_batch=10", "serve.queue_size=5"])
    with pytest.raises(ConfigError, match=r"serve\.backend"):
        Settings.load(["serve.backend=tensorflow"])
    with pytest.raises(ConfigError, match=r"serve\.colour"):
        Settings.load(colour="red")
    with pytest.raises(ConfigError, match="api_key_file"):
        Settings.load(api_key="a", api_key_file="/run/secrets/key")


def test_default_model_is_the_latest_trained_else_the_base(tmp_path: Path) -> None:
    models = tmp_path / "models"
    settings = make_settings(tmp_path, "", "serve.model_path=null")
    assert settings.model_path is None
    assert latest_trained_model(models) is None
    assert choose_model(settings) == settings.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    for i, run in enumerate(["old", "new", "all-MiniLM-L6-v2"]):
        final = models / run / "final"
        final.mkdir(parents=True)
        (final / "modules.json").write_text("[]")
        if run != "all-MiniLM-L6-v2":  # the newest: a base model saved there by `inv export`, never trained
            (final / "train_summary.json").write_text("{}")
        os.utime(final, (1_000_000 + i, 1_000_000 + i))
    (models / "unfinished" / "final").mkdir(parents=True)  # no model files: ignored
    assert latest_trained_model(models) == models / "new" / "final"
    assert choose_model(settings) == str(models / "new" / "final")
    assert choose_model(make_settings(tmp_path, "/explicit/model")) == "/explicit/model"


def test_cpu_layout_fills_the_cores() -> None:
    from arxiv_embeddings.api.runtime import cpu_layout

    assert cpu_layout(None, None, cores=8) == (1, 8)  # one single-threaded worker per core
    assert cpu_layout(2, None, cores=8) == (2, 4) and cpu_layout(3, None, cores=2) == (3, 1)
    assert cpu_layout(None, 2, cores=8) == (4, 2) and cpu_layout(None, 16, cores=8) == (1, 16)
    assert cpu_layout(2, 3, cores=8) == (2, 3)
    assert cpu_layout(None, None) == (1, len(os.sched_getaffinity(0)))


def test_model_threads_are_set_in_the_worker_only(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch

    before = torch.get_num_threads()
    seen: list[int] = []
    loader = RecordingLoader()
    app = create_app(make_settings(tmp_path, tiny_model_dir, "serve.threads=3"), load_embedder=loader)
    with TestClient(app) as client:
        wait_ready(client)
        assert client.get("/health").json()["threads"] == 3
        inner_encode = loader.embedder.inner.encode

        def spy(texts: list[str], batch_size: int = 32, normalize: bool = True, output: str = "model") -> np.ndarray:
            seen.append(torch.get_num_threads())  # in the worker thread
            return inner_encode(texts, batch_size=batch_size, normalize=normalize, output=output)

        loader.embedder.inner.encode = spy
        assert client.post("/embed", json={"input": "a"}).status_code == 200
    assert seen == [3]  # not a default anywhere: the worker set it
    assert torch.get_num_threads() == before  # the process's other threads keep their setting


def test_several_workers_share_the_weights_and_each_caller_gets_its_rows(tiny_model_dir: Path, tmp_path: Path) -> None:
    loader = RecordingLoader()
    settings = make_settings(tmp_path, tiny_model_dir, "serve.workers=2", "serve.threads=1", "serve.batch_size=4")
    app = create_app(settings, load_embedder=loader)
    texts = [f"paper {i} on {'graphs' if i % 2 else 'galaxies'} " * (1 + i % 5) for i in range(24)]
    with TestClient(app) as client:
        wait_ready(client)
        health = client.get("/health").json()
        assert (health["workers"], health["threads"]) == (2, 1)
        service = app.state.service
        assert service.batcher.workers == 2
        before = len(loader.embedder.calls)  # the warm-up call at load
        with ThreadPoolExecutor(max_workers=12) as pool:
            rows = list(pool.map(lambda t: client.post("/embed", json={"input": t}).json()["embeddings"][0], texts))
    embedder = loader.embedder
    np.testing.assert_allclose(np.array(rows), _reference(embedder, texts), atol=1e-5)
    calls = embedder.calls[before:]
    assert sum(calls) == len(texts) and max(calls) <= 4 and len(calls) < len(texts)
    replica = embedder.inner.replica()
    for mine, theirs in zip(embedder.inner.model.parameters(), replica.model.parameters(), strict=True):
        assert mine.data_ptr() == theirs.data_ptr()  # one copy of the weights
    assert replica.model.tokenizer is not embedder.inner.model.tokenizer


def test_memory_trimmer_runs_at_most_once_per_interval() -> None:
    from arxiv_embeddings.api.runtime import MemoryTrimmer

    assert MemoryTrimmer(None).maybe_trim() is False
    trimmer = MemoryTrimmer(0.05)
    assert trimmer.maybe_trim() is False  # the interval starts now
    time.sleep(0.06)
    assert trimmer.maybe_trim() is (trimmer._trim is not None)  # glibc: trimmed; elsewhere nothing to call
    assert trimmer.maybe_trim() is False

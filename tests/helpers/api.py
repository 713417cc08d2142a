"""Helpers shared by the API tests: settings rooted in a temporary folder, a wrapper that records the real
embedder's calls, waiting for readiness, and model folders with a subject head and a tasks.json."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from arxiv_embeddings.api.settings import ENV_PREFIX, ENV_VARS, Settings
from arxiv_embeddings.backends import Embedder, load_embedder


def clear_serving_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop environment variables that would override the settings under test."""
    for name in list(os.environ):
        if name in ENV_VARS or name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name, raising=False)


def make_settings(root: Path, model: Path | str, *overrides: str, **values: Any) -> Settings:
    """Settings for a test server: the given model, no index unless asked, small limits that tests can reach."""
    return Settings.load(
        [
            f"paths.root_dir={root}",
            f"serve.model_path={model}",
            "serve.search=false",
            "serve.device=cpu",
            "serve.workers=1",
            "serve.batch_wait_ms=20",
            "serve.max_batch=8",
            "serve.max_chars=500",
            "serve.max_body_bytes=8192",
            "serve.max_k=20",
            *overrides,
        ],
        **values,
    )


def head_weights(dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random linear head ``(weight, bias)`` far from the identity, so that it visibly changes the vectors."""
    rng = np.random.default_rng(seed)
    weight = (np.eye(dim) + rng.normal(scale=0.5, size=(dim, dim))).astype(np.float32)
    return weight, rng.normal(scale=0.1, size=dim).astype(np.float32)


def headed_copy(tiny: Path, dest: Path, tasks: dict[str, Any] | None = None) -> Path:
    """The tiny model with a linear subject head as training adds it (Transformer -> Pooling -> Normalize -> Dense
    -> Normalize, :func:`arxiv_embeddings.train.head.add_head`), saved to ``dest``, with ``tasks`` as its tasks.json.
    Its encoder (everything up to the Pooling) is the tiny model's: the tiny model is the reference for it."""
    from sentence_transformers import SentenceTransformer

    from arxiv_embeddings.train.head import HeadFit, add_head

    model = SentenceTransformer(str(tiny), device="cpu")
    weight, bias = head_weights(int(model.get_embedding_dimension()))
    add_head(model, HeadFit(weight, bias, losses=[0.0], papers=0, subjects=0, seconds=0.0))
    model.save(str(dest))
    if tasks is not None:
        write_tasks(dest, tasks)
    return dest


def write_tasks(folder: Path, tasks: dict[str, Any]) -> None:
    (folder / "tasks.json").write_text(json.dumps(tasks))


def with_onnx_of(model: Path, exported: Path, dest: Path) -> Path:
    """A copy of ``model`` at ``dest`` with the ONNX files of ``exported``, a model with the same Transformer
    weights (e.g. a headed copy and the tiny model it was made from: the export holds the Transformer only)."""
    shutil.copytree(model, dest)
    shutil.copytree(exported / "onnx", dest / "onnx")
    return dest


class RecordingEmbedder:
    """The real embedder, recording the size (``calls``) and the output (``outputs``) of each ``encode`` call.
    ``gate`` (set by default) holds calls while cleared; ``entered`` is set when a call starts."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.calls: list[int] = []
        self.outputs: list[str] = []  # the output of each call, beside its size in calls
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def replica(self) -> RecordingEmbedder:
        """A replica of the real embedder for another worker, recording into the same list, held by the same gate."""
        twin = RecordingEmbedder(self.inner.replica())  # type: ignore[attr-defined]
        twin.calls, twin.outputs, twin.gate, twin.entered = self.calls, self.outputs, self.gate, self.entered
        return twin

    def encode(
        self, texts: list[str], batch_size: int = 32, normalize: bool = True, output: str = "model"
    ) -> np.ndarray:
        self.entered.set()
        if not self.gate.wait(60):
            raise TimeoutError("the test never opened the gate")
        self.calls.append(len(texts))
        self.outputs.append(output)
        return self.inner.encode(texts, batch_size=batch_size, normalize=normalize, output=output)


class RecordingLoader:
    """``load_embedder`` that wraps what it loads in a :class:`RecordingEmbedder` (optionally after ``release``)."""

    def __init__(self, wait_for: threading.Event | None = None) -> None:
        self.wait_for = wait_for
        self.embedders: list[RecordingEmbedder] = []

    def __call__(self, *args: Any, **kwargs: Any) -> RecordingEmbedder:
        if self.wait_for is not None and not self.wait_for.wait(60):
            raise TimeoutError("the test never released the loader")
        embedder = RecordingEmbedder(load_embedder(*args, **kwargs))
        self.embedders.append(embedder)
        return embedder

    @property
    def embedder(self) -> RecordingEmbedder:
        return self.embedders[-1]


def wait_ready(client: Any, timeout: float = 120.0) -> dict[str, Any]:
    """Poll /health until 200; fail with the last answer otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/health")
        if response.status_code == 200:
            return response.json()
        if time.monotonic() > deadline:
            raise AssertionError(f"/health still {response.status_code} after {timeout}s: {response.text}")
        time.sleep(0.05)


def wait_serving(proc: Any, url: str, log_path: Path, timeout: float = 180.0) -> None:
    """Poll ``url``/health of the server process ``proc`` until 200; fail with the end of its log if it exits or
    is not ready in ``timeout`` seconds."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"server exited early: {log_path.read_text()[-3000:]}"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"server not ready in {timeout}s: {log_path.read_text()[-3000:]}"
        time.sleep(0.2)


def assert_error(response: Any, status: int, type: str | None = None) -> dict[str, str]:
    """The response is ``status`` with exactly the error shape (and no stack trace)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}, body
    assert body["error"]["message"] and "Traceback" not in response.text
    if type is not None:
        assert body["error"]["type"] == type, body
    return body["error"]

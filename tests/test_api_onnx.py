"""The API on the ONNX backend: the tiny model exported to ONNX (fp32) serves the same vectors as torch."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from api_helpers import clear_serving_env, make_settings, wait_ready
from fastapi.testclient import TestClient

from arxiv_embeddings.api import create_app
from arxiv_embeddings.backends import load_embedder

TEXTS = ["Graph neural networks for molecules", "Dark matter halos in dwarf galaxies\nWe simulate rotation curves."]


@pytest.fixture(scope="module")
def onnx_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from arxiv_embeddings.export import build_onnx

    model = tmp_path_factory.mktemp("onnx") / "tiny"
    shutil.copytree(tiny_model_dir, model)
    (model / "onnx").mkdir()
    build_onnx(model, model / "onnx", levels=[], arch=None)
    return model


def test_onnx_backend_serves_the_same_vectors_as_torch(
    onnx_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clear_serving_env(monkeypatch)
    monkeypatch.setenv("BACKEND", "onnx")  # the container knob
    app = create_app(make_settings(tmp_path, onnx_model))
    with TestClient(app) as client:
        health = wait_ready(client)
        assert (health["backend"], health["variant"], health["dimension"]) == ("onnx", "fp32", 32)
        served = np.asarray(client.post("/embed", json={"input": TEXTS}).json()["embeddings"])
        torch_vectors = load_embedder(onnx_model, backend="torch", device="cpu").encode(TEXTS)
        np.testing.assert_allclose(served, torch_vectors, atol=1e-4)
        usage = client.post("/v1/embeddings", json={"input": TEXTS, "model": "m"}).json()["usage"]
        onnx = app.state.service.embedder
        assert usage["prompt_tokens"] == int(onnx.token_counts(TEXTS).sum()) > len(TEXTS)


def test_onnx_workers_share_the_session_with_their_own_tokenizers(
    onnx_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clear_serving_env(monkeypatch)
    settings = make_settings(tmp_path, onnx_model, "serve.backend=onnx", "serve.workers=2", "serve.batch_size=2")
    texts = [f"{TEXTS[i % 2]} (variant {i})" for i in range(12)]
    app = create_app(settings)
    with TestClient(app) as client:
        health = wait_ready(client)
        assert (health["backend"], health["workers"], health["threads"]) == ("onnx", 2, 1)
        onnx = app.state.service.embedder
        assert onnx.session.get_session_options().intra_op_num_threads == 1
        with ThreadPoolExecutor(max_workers=6) as pool:
            rows = list(pool.map(lambda t: client.post("/embed", json={"input": t}).json()["embeddings"][0], texts))
    np.testing.assert_allclose(np.asarray(rows), onnx.encode(texts), atol=1e-5)
    twin = onnx.replica()
    assert twin.session is onnx.session and twin.tokenizer is not onnx.tokenizer
    assert twin.max_seq_length == onnx.max_seq_length
    assert [e.ids for e in twin.tokenizer.encode_batch(texts)] == [e.ids for e in onnx.tokenizer.encode_batch(texts)]

"""The API on the ONNX backend: the tiny model exported to ONNX (fp32) serves the same vectors as torch."""

from __future__ import annotations

import shutil
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers.api import clear_serving_env, make_settings, wait_ready

from arxiv_embeddings.api.app import create_app
from arxiv_embeddings.backends import load_embedder

TEXTS = ["Graph neural networks for molecules", "Dark matter halos in dwarf galaxies\nWe simulate rotation curves."]


@pytest.fixture(scope="module")
def onnx_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from arxiv_embeddings.export.build import build_onnx

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


_LEAN_SERVER = textwrap.dedent(
    """
    import importlib.abc, json, sys, threading, time

    blocked = tuple(sys.argv[3].split(","))

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in blocked:
                raise ImportError(f"{name} is blocked: serving with backend=onnx must not import it")
            return None

    sys.meta_path.insert(0, Block())
    from fastapi.testclient import TestClient

    from arxiv_embeddings.api.app import create_app
    from arxiv_embeddings.api.settings import Settings

    root, model, index, backend = sys.argv[1], sys.argv[2], sys.argv[4], sys.argv[6]
    overrides = [f"paths.root_dir={root}", f"serve.model_path={model}", f"serve.backend={backend}", "serve.workers=2"]
    overrides += [f"serve.search=true", f"serve.index_path={index}"] if index else ["serve.search=false"]
    with TestClient(create_app(Settings.load(overrides))) as client:
        deadline = time.monotonic() + 60
        while (health := client.get("/health")).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        out = {"health": health.status_code, "embed": client.post("/embed", json={"input": ["a text"]}).status_code}
        if index:
            out["search"] = client.post("/search", json={"text": "graph neural networks", "k": 3}).status_code
            known = client.post("/search", json={"text": "graph neural networks", "k": 1}).json()["results"][0]
            by_id = client.post("/search", json={"arxiv_id": known["arxiv_id"], "k": 3})
            out["search_id"] = by_id.status_code
            out["search_id_excludes_itself"] = known["arxiv_id"] not in [r["arxiv_id"] for r in by_id.json()["results"]]
            out["unknown_id"] = client.post("/search", json={"arxiv_id": "0000.00000", "k": 3}).status_code
        out["threads"] = sorted(f"{type(t).__module__}.{type(t).__name__}" for t in threading.enumerate())
    out["loaded"] = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[5].split(",")))
    print(json.dumps(out))
    """
)
HEAVY = ("torch", "transformers", "sentence_transformers", "optimum", "pandas", "pyarrow", "sklearn", "scipy")


def _serve(
    tmp_path: Path, model: Path, blocked: tuple[str, ...], index: Path | None = None, backend: str = "onnx"
) -> dict:
    """Serve ``model`` in a fresh process with the modules ``blocked`` unimportable; what it answered, which of
    :data:`HEAVY` it loaded, and its threads (by class)."""
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "lean_server.py"
    script.write_text(_LEAN_SERVER)
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_PATH", "INDEX_PATH", "BACKEND", "VARIANT")}
    proc = subprocess.run(
        [
            *(sys.executable, str(script), str(tmp_path), str(model), ",".join(blocked)),
            *(str(index or ""), ",".join(HEAVY), backend),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_onnx_serving_imports_no_torch_transformers_pandas_or_pyarrow(
    onnx_model: Path, tmp_path: Path, processed_root: Path, make_cfg
) -> None:
    """The serving process, with the pipeline's libraries made unimportable: embedding needs none of them, and
    search adds pyarrow alone (the index's metadata.parquet)."""
    out = _serve(tmp_path, onnx_model, HEAVY)
    assert (out["health"], out["embed"], out["loaded"]) == (200, 200, []), out
    assert "tqdm._monitor.TMonitor" not in out["threads"], out

    from arxiv_embeddings.index import stage as index_stage

    built = index_stage.run(
        make_cfg(
            "index",
            tmp_path,
            [
                f"paths.processed_dir={processed_root / 'data' / 'processed'}",
                f"index.model={onnx_model}",
                "index.backend=onnx",
                "index.name=lean",
                "index.type=flat",
                "index.eval.queries=20",
            ],
        )
    )
    with_search = _serve(tmp_path, onnx_model, tuple(m for m in HEAVY if m != "pyarrow"), built["dir"])
    assert (with_search["health"], with_search["embed"], with_search["search"]) == (200, 200, 200), with_search
    # by id too: the lookup of a paper's row needs no pandas
    assert (with_search["search_id"], with_search["unknown_id"]) == (200, 404), with_search
    assert with_search["search_id_excludes_itself"], with_search
    assert with_search["loaded"] == ["pyarrow"], with_search


@pytest.mark.slow
def test_the_torch_server_runs_no_progress_bar_monitor_thread(onnx_model: Path, tmp_path: Path) -> None:
    """sentence-transformers' encode makes a (disabled) tqdm bar per call, and tqdm starts a monitor thread on the
    first one unless told not to; the server tells it."""
    out = _serve(tmp_path, onnx_model, (), backend="torch")
    assert (out["health"], out["embed"]) == (200, 200), out
    assert "torch" in out["loaded"] and out["threads"].count("threading.Thread") >= 2, out  # the two model workers
    assert "tqdm._monitor.TMonitor" not in out["threads"], out

"""The API serves each task with the output the model folder's tasks.json names, chosen per request (`task` of
/embed, `model` of /v1/embeddings), and refuses an unknown task with a 422 listing the valid ones: with the torch
backend in process, and with the ONNX backend in a process where torch cannot be imported.

The model is the tiny model with a linear subject head and a tasks.json that serves `search` with the encoder (the
Transformer and Pooling only): the tiny model itself is the reference for that output, and the headed model's full
pipeline for `subject` and `graded`."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from helpers.api import (
    RecordingLoader,
    assert_error,
    clear_serving_env,
    headed_copy,
    make_settings,
    wait_ready,
    write_tasks,
)

from arxiv_embeddings.api.app import create_app
from arxiv_embeddings.api.service import task_of_model
from arxiv_embeddings.backends import load_embedder
from arxiv_embeddings.backends.tasks import DEFAULT_TASKS, read_tasks
from arxiv_embeddings.backends.torch_embedder import TorchEmbedder
from arxiv_embeddings.index import stage as index_stage
from arxiv_embeddings.index.format import ModelMismatchError
from arxiv_embeddings.index.search import PaperIndex
from arxiv_embeddings.io import read_parquet
from arxiv_embeddings.papers import paper_text

#: search on the encoder under the head, as the train stage writes it for a model with a subject head.
OUTPUT_OF = {"subject": "model", "search": "encoder", "graded": "model"}
TASKS = {"default": "subject", "tasks": OUTPUT_OF}
TEXTS = [
    "Graph neural networks for molecular property prediction",
    "Dark matter halos in dwarf galaxies\nWe simulate the rotation curves of twelve dwarf galaxies.",
]


@pytest.fixture(autouse=True)
def _no_serving_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_serving_env(monkeypatch)


@pytest.fixture(scope="module")
def headed(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return headed_copy(tiny_model_dir, tmp_path_factory.mktemp("tasks_api") / "headed", tasks=TASKS)


@pytest.fixture(scope="module")
def references(tiny_model_dir: Path, headed: Path) -> dict[str, np.ndarray]:
    """Each output of the headed model for TEXTS, from the models themselves (one encode call, no API)."""
    encoder = TorchEmbedder(tiny_model_dir, device="cpu").encode(TEXTS)  # the encoder under the head
    model = TorchEmbedder(headed, device="cpu").encode(TEXTS)
    assert np.abs(model - encoder).max() > 0.1  # the head changes the vectors: the outputs are told apart
    return {"model": model, "encoder": encoder}


@pytest.fixture(scope="module")
def served(headed: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Any]]:
    mp = pytest.MonkeyPatch()
    clear_serving_env(mp)
    loader = RecordingLoader()
    app = create_app(make_settings(tmp_path_factory.mktemp("serve"), headed), load_embedder=loader)
    with TestClient(app) as client:
        wait_ready(client)
        yield client, loader.embedder
    mp.undo()


def _embed(client: TestClient, task: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"input": TEXTS, **extra}
    if task is not None:
        body["task"] = task
    response = client.post("/embed", json=body)
    assert response.status_code == 200, response.text
    return response.json()


# ------------------------------------------------------------------------------------------------ torch
def test_health_lists_the_tasks_and_their_outputs(served) -> None:
    client, _ = served
    health = client.get("/health").json()
    assert health["tasks"] == OUTPUT_OF and health["default_task"] == "subject"
    assert health["dimension"] == 32 and health["search_output"] is None  # no index: /search is off


def test_each_task_is_served_with_its_output(served, references: dict[str, np.ndarray]) -> None:
    client, _ = served
    for task, output in (*OUTPUT_OF.items(), (None, "model")):
        body = _embed(client, task)
        assert (body["task"], body["output"]) == (task or "subject", output)
        np.testing.assert_allclose(np.asarray(body["embeddings"]), references[output], atol=1e-5)
    search = np.asarray(_embed(client, "search")["embeddings"])
    subject = np.asarray(_embed(client, "subject")["embeddings"])
    assert np.abs(search - subject).max() > 0.1
    # Per-request options apply to the task's own vectors: truncated, re-normalized.
    cut = np.asarray(_embed(client, "search", dimensions=8)["embeddings"])
    expected = references["encoder"][:, :8] / np.linalg.norm(references["encoder"][:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(cut, expected, atol=1e-5)


def test_the_openai_model_field_names_the_task(served, headed: Path, references: dict[str, np.ndarray]) -> None:
    client, _ = served
    for model, output in (
        ("search", "encoder"),
        (f"{headed.name}:search", "encoder"),
        ("graded", "model"),
        (f"{headed.name}:subject", "model"),
        (headed.name, "model"),  # the served name alone: the default task
        (f"{headed}:search", "model"),  # a folder path is not the served name: the default task
        ("text-embedding-3-small", "model"),  # any other name: the default task, for clients with a fixed name
        ("nomic-embed-text:latest", "model"),
    ):
        response = client.post("/v1/embeddings", json={"input": TEXTS, "model": model})
        assert response.status_code == 200, (model, response.text)
        vectors = np.asarray([d["embedding"] for d in response.json()["data"]])
        np.testing.assert_allclose(vectors, references[output], atol=1e-5, err_msg=model)


def test_an_unknown_task_is_a_422_listing_the_valid_ones(served, headed: Path) -> None:
    client, embedder = served
    calls = len(embedder.calls)
    for task in ("searchh", "", "Search"):
        error = assert_error(client.post("/embed", json={"input": "x", "task": task}), 422, "unknown_task")
        message = error["message"]
        assert message.startswith(f"task {task!r} is not served"), message
        assert "valid tasks: subject, search, graded" in message and str(headed / "tasks.json") in message
    error = assert_error(
        client.post("/v1/embeddings", json={"input": "x", "model": f"{headed.name}:serach"}), 422, "unknown_task"
    )
    message = error["message"]
    assert (
        message.startswith("model: task 'serach' is not served") and "valid tasks: subject, search, graded" in message
    )
    assert f'model="{headed.name}:graded"' in message  # the fix, in the field's own form
    assert_error(client.post("/embed", json={"input": "x", "task": ["search"]}), 422, "invalid_request")
    assert len(embedder.calls) == calls  # refused before reaching the model


def test_concurrent_requests_of_different_tasks_never_share_a_model_call(
    served, references: dict[str, np.ndarray]
) -> None:
    """Requests of both outputs, queued while the model is busy: every caller gets its own output's rows (a call
    mixing outputs would compute some of them with the wrong one), and each model call is of one output."""
    client, embedder = served
    batcher = client.app.state.service.batcher
    before = len(embedder.outputs)
    tasks = ["search", "subject", "graded", "search"] * 3

    async def fire() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            posts = [asyncio.create_task(http.post("/embed", json={"input": TEXTS, "task": t})) for t in tasks]
            deadline = time.monotonic() + 30  # all but the request held in the model queue up behind it
            while batcher.queued_texts < len(TEXTS) * (len(tasks) - 1) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            embedder.gate.set()
            return await asyncio.gather(*posts)

    embedder.gate.clear()
    try:
        responses = asyncio.run(fire())
    finally:
        embedder.gate.set()
    assert [r.status_code for r in responses] == [200] * len(tasks)
    bodies = [r.json() for r in responses]
    for task, body in zip(tasks, bodies, strict=True):
        np.testing.assert_allclose(np.asarray(body["embeddings"]), references[OUTPUT_OF[task]], atol=1e-5)
    # Batched by output: one call per output for the queued requests (plus the first, if the model held it alone).
    outputs = embedder.outputs[before:]
    assert set(outputs) == {"model", "encoder"} and len(outputs) <= 3, outputs


def test_a_model_without_tasks_json_serves_every_task_alike(tiny_model_dir: Path, tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, tiny_model_dir))
    with TestClient(app) as client:
        health = wait_ready(client)
        assert health["tasks"] == DEFAULT_TASKS.as_dict()["tasks"] and health["default_task"] == "subject"
        vectors = {task: np.asarray(_embed(client, task)["embeddings"]) for task in ("subject", "search", "graded")}
        np.testing.assert_allclose(vectors["search"], vectors["subject"], atol=1e-6)
        np.testing.assert_allclose(vectors["graded"], vectors["subject"], atol=1e-6)
        assert_error(client.post("/embed", json={"input": "x", "task": "topic"}), 422, "unknown_task")


def test_a_malformed_tasks_json_fails_the_start_up_naming_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    write_tasks(model, {"default": "subject", "tasks": {"subject": "model", "search": "head"}})
    app = create_app(make_settings(tmp_path, model))
    with TestClient(app) as client:
        app.state.service.wait_loaded(60)
        error = assert_error(client.get("/health"), 503, "model_load_failed")
        assert str(model / "tasks.json") in error["message"] and "tasks.search = 'head'" in error["message"]
        assert "valid outputs: model" in error["message"]


def test_task_of_model() -> None:
    tasks = read_tasks(None)
    assert task_of_model("search", "models/run/final", tasks) == "search"
    assert task_of_model("models/run/final:graded", "models/run/final", tasks) == "graded"
    assert task_of_model("models/run/final:nope", "models/run/final", tasks) == "nope"  # refused by the caller
    assert task_of_model("models/run/final", "models/run/final", tasks) is None
    assert task_of_model("other/model:search", "models/run/final", tasks) is None
    assert task_of_model("text-embedding-3-small", "models/run/final", tasks) is None


# ------------------------------------------------------------------------------------------------ search
def _headed_index(headed: Path, processed_root: Path, make_cfg, root: Path) -> dict[str, Any]:
    return index_stage.run(
        make_cfg(
            "index",
            root,
            [
                f"paths.processed_dir={processed_root / 'data' / 'processed'}",
                f"index.model={headed}",
                "index.backend=torch",
                "index.encode.device=cpu",
                "index.type=flat",
                "index.name=headed",
                "index.eval.queries=20",
                "index.threads=1",
            ],
        )
    )


def test_search_embeds_a_text_and_a_known_paper_each_with_its_own_output(
    headed: Path, processed_root: Path, make_cfg, tmp_path: Path
) -> None:
    """tasks.json serves search with the encoder and subject with the head: the index holds the papers in both
    outputs (the head applied to the encoder's vectors, the corpus embedded once), a query text is embedded with
    the encoder and searched among the encoder vectors, and a known paper's neighbours come from the head's."""
    built = _headed_index(headed, processed_root, make_cfg, tmp_path / "project")
    manifest = built["manifest"]
    assert manifest["output"] == "model" and manifest["search"]["output"] == "encoder"
    assert set(manifest["files"]) == {"index.faiss", "search.faiss", "metadata.parquet"}
    index = PaperIndex.load(built["dir"], expected_model=str(headed))
    assert index.output == "model" and index.query_output == "encoder"

    # The stored vectors are each output of the model, row for row.
    rows = [0, 7, 31]
    table = index.metadata.take(rows)
    by_id = {
        r["arxiv_id"]: r
        for split in ("train", "eval", "test")
        for r in read_parquet(processed_root / "data" / "processed" / f"{split}.parquet").to_pylist()
    }
    papers = pa.Table.from_pylist([by_id[a] for a in table.column("arxiv_id").to_pylist()])
    texts = paper_text(papers, "title_abstract")
    stored_model = np.stack([index.index.reconstruct(r) for r in rows])
    stored_search = np.stack([index.search_index.reconstruct(r) for r in rows])
    np.testing.assert_allclose(stored_model, TorchEmbedder(headed, device="cpu").encode(texts), atol=1e-4)
    np.testing.assert_allclose(
        stored_search, TorchEmbedder(headed, device="cpu").encode(texts, output="encoder"), atol=1e-4
    )

    title = index.metadata.column("title")[5].as_py()
    paper = index.metadata.column("arxiv_id")[9].as_py()
    settings = make_settings(tmp_path, headed, "serve.search=true", f"serve.index_path={built['dir']}")
    with TestClient(create_app(settings)) as client:
        assert wait_ready(client)["search_output"] == "encoder"
        by_text = client.post("/search", json={"text": title, "k": 5}).json()["results"]
        like = client.post("/search", json={"arxiv_id": paper, "k": 5}).json()["results"]
    query = TorchEmbedder(headed, device="cpu").encode([title], output="encoder")
    expected = index.search(query, k=5, output="encoder")[0]
    assert [h["arxiv_id"] for h in by_text] == [h.arxiv_id for h in expected]
    np.testing.assert_allclose([h["score"] for h in by_text], [h.score for h in expected], atol=1e-5)
    # the same query among the head's vectors ranks otherwise: the two spaces are told apart
    assert [h.arxiv_id for h in index.search(TorchEmbedder(headed, device="cpu").encode([title]), k=5)[0]] != [
        h.arxiv_id for h in expected
    ]
    assert [h["arxiv_id"] for h in like] == [h.arxiv_id for h in index.search_id(paper, k=5)]
    with pytest.raises(ModelMismatchError, match="not in 'graded'"):
        index.search(query, k=5, output="graded")


def test_an_index_of_one_output_keeps_it_for_query_texts(
    headed: Path, processed_root: Path, make_cfg, tmp_path: Path
) -> None:
    """An index with the `model` vectors only (built before search.faiss existed): /search embeds query texts with
    the index's output, not the search task's, so the query and the papers stay in one space."""
    built = _headed_index(headed, processed_root, make_cfg, tmp_path / "project")
    folder = Path(built["dir"])
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.pop("search")
    manifest["files"].pop("search.faiss")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "search.faiss").unlink()
    index = PaperIndex.load(folder)
    assert index.output == "model" and index.query_output == "model" and index.search_index is None
    title = index.metadata.column("title")[5].as_py()
    settings = make_settings(tmp_path, headed, "serve.search=true", f"serve.index_path={folder}")
    with TestClient(create_app(settings)) as client:
        assert wait_ready(client)["search_output"] == "model"
        hits = client.post("/search", json={"text": title, "k": 5}).json()["results"]
    expected = index.search(TorchEmbedder(headed, device="cpu").encode([title]), k=5)[0]
    assert [h["arxiv_id"] for h in hits] == [h.arxiv_id for h in expected]
    np.testing.assert_allclose([h["score"] for h in hits], [h.score for h in expected], atol=1e-5)


# ------------------------------------------------------------------------------------------------- onnx
_LEAN_TASKS = textwrap.dedent(
    """
    import importlib.abc, json, sys, time

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers", "sentence_transformers", "optimum"):
                raise ImportError(f"{name} is blocked: serving with backend=onnx must not import it")
            return None

    sys.meta_path.insert(0, Block())
    from fastapi.testclient import TestClient

    from arxiv_embeddings.api.app import create_app
    from arxiv_embeddings.api.settings import Settings

    root, model, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    overrides = [f"paths.root_dir={root}", f"serve.model_path={model}", "serve.backend=onnx", "serve.search=false"]
    out = {}
    with TestClient(create_app(Settings.load(overrides))) as client:
        deadline = time.monotonic() + 60
        while (health := client.get("/health")).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        out["health"] = health.json()
        for task in ("subject", "search", "graded", "searchh"):
            r = client.post("/embed", json={"input": texts, "task": task})
            out[task] = {"status": r.status_code, "body": r.json()}
        r = client.post("/v1/embeddings", json={"input": texts, "model": "search"})
        out["v1_search"] = [d["embedding"] for d in r.json()["data"]]
    out["torch_loaded"] = "torch" in sys.modules
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_the_onnx_server_without_torch_serves_each_task(
    headed: Path, references: dict[str, np.ndarray], tmp_path: Path
) -> None:
    from arxiv_embeddings.export.build import build_onnx

    model = tmp_path / "headed-onnx"
    shutil.copytree(headed, model)
    (model / "onnx").mkdir()
    build_onnx(model, model / "onnx", levels=[], arch=None)
    script = tmp_path / "lean_tasks.py"
    script.write_text(_LEAN_TASKS)
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_PATH", "INDEX_PATH", "BACKEND", "VARIANT")}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(model), json.dumps(TEXTS)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["health"]["backend"] == "onnx" and out["health"]["tasks"] == OUTPUT_OF
    assert out["torch_loaded"] is False
    onnx = load_embedder(model, backend="onnx", variant="fp32")
    for task, output in OUTPUT_OF.items():
        answer = out[task]
        assert answer["status"] == 200 and answer["body"]["output"] == output, answer
        served = np.asarray(answer["body"]["embeddings"])
        np.testing.assert_allclose(served, onnx.encode(TEXTS, output=output), atol=1e-5)
        np.testing.assert_allclose(served, references[output], atol=1e-4)  # the torch model's
    np.testing.assert_allclose(np.asarray(out["v1_search"]), references["encoder"], atol=1e-4)
    unknown = out["searchh"]
    assert unknown["status"] == 422 and unknown["body"]["error"]["type"] == "unknown_task"
    assert "valid tasks: subject, search, graded" in unknown["body"]["error"]["message"]

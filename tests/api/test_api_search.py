"""The API over a real small FAISS index (tiny model, processed slice): /search by text and by id, the search page
in headless Chromium (schemathesis runs against the server process in test_api_abuse.py)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers.api import assert_error, clear_serving_env, make_settings, wait_ready

from arxiv_embeddings.api.app import create_app
from arxiv_embeddings.backends import load_embedder
from arxiv_embeddings.index import stage as index_stage
from arxiv_embeddings.index.search import PaperIndex


@pytest.fixture(scope="module")
def index_path(processed_root: Path, tiny_model_dir: Path, make_cfg, tmp_path_factory) -> Path:
    """An exact (flat) index of the ~600 processed papers, embedded with the tiny model."""
    root = tmp_path_factory.mktemp("api_index")
    overrides = [
        f"paths.processed_dir={processed_root / 'data' / 'processed'}",
        f"index.model={tiny_model_dir}",
        "index.backend=torch",
        "index.encode.device=cpu",
        "index.type=flat",
        "index.name=tiny",
        "index.eval.queries=50",
        "index.threads=1",
    ]
    index_stage.run(make_cfg("index", root, overrides))
    return root / "indexes" / "tiny"


@pytest.fixture(scope="module")
def app(index_path: Path, tiny_model_dir: Path, tmp_path_factory) -> Iterator[Any]:
    mp = pytest.MonkeyPatch()
    clear_serving_env(mp)
    settings_ = make_settings(
        tmp_path_factory.mktemp("serve"), tiny_model_dir, "serve.search=true", f"serve.index_path={index_path}"
    )
    application = create_app(settings_)
    with TestClient(application) as client:
        wait_ready(client)
        yield application
    mp.undo()


@pytest.fixture(scope="module")
def client(app: Any) -> TestClient:
    return TestClient(app)  # the lifespan already ran in the app fixture


@pytest.fixture(scope="module")
def index(index_path: Path) -> PaperIndex:
    return PaperIndex.load(index_path)


def test_health_reports_the_index(client: TestClient, index: PaperIndex) -> None:
    assert client.get("/health").json()["index_size"] == len(index) > 500


def test_search_by_text_matches_the_index(client: TestClient, index: PaperIndex, tiny_model_dir: Path) -> None:
    row = 17
    title = index.metadata.column("title")[row].as_py()
    body = client.post("/search", json={"text": {"title": title}, "k": 5}).json()
    assert body["query"] == title and body["index_size"] == len(index) and body["model"] == tiny_model_dir.name
    expected = index.search_text(load_embedder(tiny_model_dir, backend="torch", device="cpu"), [title], k=5)[0]
    assert [h["arxiv_id"] for h in body["results"]] == [h.arxiv_id for h in expected]
    np.testing.assert_allclose([h["score"] for h in body["results"]], [h.score for h in expected], atol=1e-5)
    assert set(body["results"][0]) == {"arxiv_id", "title", "primary_subject", "score"}


def test_search_by_id(client: TestClient, index: PaperIndex) -> None:
    paper = index.metadata.column("arxiv_id")[3].as_py()
    body = client.post("/search", json={"arxiv_id": paper, "k": 4}).json()
    assert [h["arxiv_id"] for h in body["results"]] == [h.arxiv_id for h in index.search_id(paper, k=4)]
    assert paper not in [h["arxiv_id"] for h in body["results"]]
    error = assert_error(client.post("/search", json={"arxiv_id": "9999.99999"}), 404, "unknown_paper")
    assert "9999.99999" in error["message"]
    assert_error(client.post("/search", json={"arxiv_id": paper, "k": 21}), 422, "invalid_k")


def test_index_of_another_model_fails_the_start_up(index_path: Path, tmp_path: Path, tiny_model_dir: Path) -> None:
    # The same architecture with other weights: the index's model fingerprint covers the tensors.
    import torch
    from sentence_transformers import SentenceTransformer

    other = tmp_path / "other-model"
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    model.save(str(other))
    settings_ = make_settings(tmp_path, other, "serve.search=true", f"serve.index_path={index_path}")
    application = create_app(settings_)
    with TestClient(application) as c:
        application.state.service.wait_loaded(60)
        error = assert_error(c.get("/health"), 503, "model_load_failed")
        assert "ModelMismatchError" in error["message"]


def test_default_index_is_used_only_when_it_fits(index_path: Path, tmp_path: Path, tiny_model_dir: Path) -> None:
    """No index_path: the index this config would build is used if present; a missing one turns search off."""
    shutil.copytree(index_path, tmp_path / "indexes" / "tiny")
    with_index = make_settings(tmp_path, tiny_model_dir, "serve.search=true", "index.name=tiny")
    without = make_settings(tmp_path, tiny_model_dir, "serve.search=true", "index.name=absent")
    for settings_, has_index in ((with_index, True), (without, False)):
        application = create_app(settings_)
        with TestClient(application) as c:
            health = wait_ready(c)
            assert (health["index_size"] is not None) == has_index


# ------------------------------------------------------------------------------------------- browser page
def _chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM_PATH"), "chromium", "chromium-browser", "/usr/bin/chromium"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def live_url(app: Any) -> Iterator[str]:
    """The app behind a real uvicorn server in a thread (the browser needs a socket)."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_search_page_in_headless_chromium(live_url: str, client: TestClient, tmp_path: Path, record_property) -> None:
    chromium = _chromium()
    if chromium is None:
        pytest.skip(
            "No chromium binary found (CHROMIUM_PATH, chromium, chromium-browser); install it with "
            "'sudo apt-get install chromium' (Debian/Ubuntu)."
        )
    from playwright.sync_api import sync_playwright

    abstract = "We study dark matter halos and the rotation curves of dwarf galaxies with N-body simulations."
    expected = client.post("/search", json={"text": {"abstract": abstract}, "k": 5}).json()["results"]
    screenshot = tmp_path / "search-page.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(live_url + "/")
            page.wait_for_function("document.getElementById('status').textContent.includes('papers indexed')")
            page.fill("#abstract", abstract)
            page.fill("#k", "5")
            page.click("#submit")
            page.wait_for_selector("#results tbody tr")
            rows = page.locator("#results tbody tr")
            assert rows.count() == 5
            shown = [rows.nth(i).locator("td").nth(2).inner_text() for i in range(5)]
            for row, hit in zip(shown, expected, strict=True):
                assert hit["arxiv_id"] in row and hit["title"][:20] in row
            page.screenshot(path=str(screenshot), full_page=True)

            page.fill("#abstract", "")  # an empty query is refused in the page, before any request
            page.click("#submit")
            assert "Type a title or an abstract" in page.inner_text("#error")
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
    record_property("screenshot", str(screenshot))
    print(f"search page screenshot: {screenshot}")

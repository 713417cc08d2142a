"""train.search_model=base: the trained model and its untouched base model in one folder (SPECTER2-style), search
served by the base (tasks.json ``search: base``); the torch and ONNX embedders, the export, the evaluation and the
API each serve the ``base`` output from ``base/``, and a folder that names it without ``base/`` fails naming both.
train.search_model=<folder> keeps a model trained for search there instead."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers.api import clear_serving_env, make_settings, wait_ready
from helpers.train import FAST

from arxiv_embeddings import pairs
from arxiv_embeddings.api.app import create_app
from arxiv_embeddings.backends import load_embedder
from arxiv_embeddings.backends.tasks import TasksFileError, read_tasks
from arxiv_embeddings.backends.torch_embedder import TorchEmbedder
from arxiv_embeddings.backends.with_base import WithBaseEmbedder
from arxiv_embeddings.config import ConfigError, compose
from arxiv_embeddings.export import stage as export_stage
from arxiv_embeddings.io import read_json
from arxiv_embeddings.train import stage as train_stage

TEXTS = [
    "Graph neural networks for molecular property prediction",
    "Dark matter halos in dwarf galaxies\nWe simulate the rotation curves of twelve dwarf galaxies.",
    "Sparse PCA",
]
HEAD = ["train.head.enabled=true", "train.head.kind=lda", "train.head.papers=120", "train.head.components=3"]


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory, processed_root: Path, tiny_model_dir: Path) -> Path:
    """The tiny model trained three steps with a subject head and train.search_model=base, through the stage."""
    root = tmp_path_factory.mktemp("search_model_root")
    shutil.copytree(processed_root / "data" / "processed", root / "data" / "processed")
    pairs.run(compose("pairs", [f"paths.root_dir={root}", "pairs.num_train=64", "pairs.num_eval=16"]))
    overrides = [f"paths.root_dir={root}", f"model.name={tiny_model_dir}", "run_name=b", *FAST, *HEAD]
    cfg = compose("train", [*overrides, "train.search_model=base"])
    return Path(train_stage.run(cfg)["model"])


@pytest.fixture(scope="module")
def base_vectors(tiny_model_dir: Path) -> np.ndarray:
    return TorchEmbedder(tiny_model_dir, device="cpu").encode(TEXTS)


def test_the_folder_keeps_the_untouched_base_and_serves_search_with_it(
    two_models: Path, base_vectors: np.ndarray
) -> None:
    assert read_json(two_models / "tasks.json")["tasks"] == {"subject": "model", "search": "base", "graded": "model"}
    summary = read_json(two_models / "train_summary.json")
    assert summary["global_step"] == 3 and "untouched, in base/" in summary["search_model"]
    assert (two_models / "base" / "modules.json").is_file()
    embedder = load_embedder(two_models, backend="torch", device="cpu")
    assert isinstance(embedder, WithBaseEmbedder) and embedder.dimension == base_vectors.shape[1]
    np.testing.assert_allclose(embedder.encode(TEXTS, output="base"), base_vectors, atol=1e-5)
    trained = embedder.encode(TEXTS, output="encoder")  # the fine-tuned encoder: not the base any more
    assert np.abs(trained - base_vectors).max() > 1e-4
    assert np.abs(embedder.encode(TEXTS) - trained).max() > 1e-4  # the head over it
    replica = embedder.replica()
    np.testing.assert_allclose(replica.encode(TEXTS, output="base"), base_vectors, atol=1e-5)
    assert replica.base is not embedder.base


def test_a_single_model_embedder_and_a_folder_without_base_name_the_fix(two_models: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"has no 'base' output here: .*backends.load_embedder"):
        TorchEmbedder(two_models, device="cpu").encode(TEXTS, output="base")
    copy = shutil.copytree(two_models, tmp_path / "copy", ignore=shutil.ignore_patterns("base"))
    with pytest.raises(TasksFileError, match=r"tasks.json serves search with the 'base' output, but .*base does not"):
        read_tasks(copy)


def test_an_unknown_search_model_is_named(tmp_path: Path) -> None:
    cfg = compose("train", [f"paths.root_dir={tmp_path}", "train.search_model=frozen"])
    with pytest.raises(ConfigError, match=r"train.search_model.*frozen"):
        train_stage.validate(cfg)


def test_a_model_trained_for_search_is_kept_in_place_of_the_base(
    tmp_path: Path, processed_root: Path, tiny_model_dir: Path, base_vectors: np.ndarray
) -> None:
    """train.search_model=<folder>: a run on title -> abstract pairs alone (no head, search by its own encoder) is kept
    in the subject model's base/ and serves search there; the subject run's inputs hold its files."""
    shutil.copytree(processed_root / "data" / "processed", tmp_path / "data" / "processed")
    search_pairs = [f"paths.pairs_dir={tmp_path / 'data' / 'pairs-search'}", "pairs=title_abstract"]
    common = [f"paths.root_dir={tmp_path}", "pairs.num_train=64", "pairs.num_eval=16"]
    pairs.run(compose("pairs", [*common, *search_pairs]))
    pairs.run(compose("pairs", common))
    model = [f"model.name={tiny_model_dir}", *FAST]
    searcher = Path(
        train_stage.run(
            compose("train", [*common, *search_pairs, *model, "run_name=search", "train.search_model=trained"])
        )["model"]
    )
    searcher_vectors = TorchEmbedder(searcher, device="cpu").encode(TEXTS)
    assert np.abs(searcher_vectors - base_vectors).max() > 1e-4  # trained: not the base any more

    cfg = compose("train", [*common, *model, *HEAD, "run_name=subject", f"train.search_model={searcher}"])
    assert set(train_stage.SPEC.inputs(cfg)) >= {searcher / "modules.json", searcher / "model.safetensors"}
    folder = Path(train_stage.run(cfg)["model"])
    assert read_json(folder / "tasks.json")["tasks"]["search"] == "base"
    assert read_json(folder / "train_summary.json")["search_model"] == f"{searcher} (trained for search, in base/)"
    embedder = load_embedder(folder, backend="torch", device="cpu")
    np.testing.assert_allclose(embedder.encode(TEXTS, output="base"), searcher_vectors, atol=1e-5)
    assert np.abs(embedder.encode(TEXTS) - searcher_vectors).max() > 1e-4  # subjects: the subject model and its head


def test_a_search_model_folder_that_cannot_serve_search_whole_is_refused(two_models: Path, tmp_path: Path) -> None:
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    cfg = compose("train", [f"paths.root_dir={tmp_path}", f"train.search_model={not_a_model}"])
    with pytest.raises(ConfigError, match=r"train.search_model=.*empty: not a sentence-transformers model folder"):
        train_stage.validate(cfg)
    # a folder that serves search with its own base/ (or through a head) is not one search model
    cfg = compose("train", [f"paths.root_dir={tmp_path}", f"train.search_model={two_models}"])
    with pytest.raises(ConfigError, match=r"serves search with its 'base' output.*pairs=title_abstract"):
        train_stage.validate(cfg)


def test_the_export_carries_the_base_and_onnx_serves_it(
    two_models: Path, processed_root: Path, base_vectors: np.ndarray, tmp_path: Path
) -> None:
    folder = shutil.copytree(two_models, tmp_path / "model")
    cfg = compose(
        "export",
        [
            f"paths.root_dir={tmp_path}",
            f"paths.processed_dir={processed_root / 'data' / 'processed'}",
            f"export.model={folder}",
            "export.optimization_levels=[]",
            "export.quantize=false",
            "export.throughput.texts=8",
            "export.throughput.batch_size=8",
            "export.throughput.seq_lengths=[32]",
            "export.throughput.repeats=1",
        ],
    )
    report = export_stage.run(cfg)["report"]
    assert report["base"]["fp32"]["passed"] and (folder / "base" / "onnx" / "model.onnx").is_file()
    assert folder / "base" / "onnx" / "model.onnx" in export_stage.SPEC.outputs(cfg)
    onnx = load_embedder(folder, backend="onnx", variant="fp32")
    torch = load_embedder(folder, backend="torch", device="cpu")
    np.testing.assert_allclose(onnx.encode(TEXTS, output="base"), base_vectors, atol=1e-4)
    np.testing.assert_allclose(onnx.encode(TEXTS), torch.encode(TEXTS), atol=1e-4)


def test_the_evaluation_embeds_search_texts_with_the_base(
    two_models: Path, tmp_path: Path, base_vectors: np.ndarray
) -> None:
    import pyarrow as pa
    from sentence_transformers import SentenceTransformer

    from arxiv_embeddings.evaluation.data import EvalData
    from arxiv_embeddings.evaluation.features import embed

    titles = TEXTS
    table = pa.table({"title": titles, "abstract": ["a b", "c d", "e f"], "primary_subject": ["x", "y", "x"]})
    data = EvalData(test=table, train=table, train_path=tmp_path / "train.parquet")
    cfg = compose("evaluate", [f"paths.root_dir={tmp_path}", "evaluate.text=title", "evaluate.encode.batch_size=2"])
    model = SentenceTransformer(str(two_models), device="cpu")
    features = embed(model, data, cfg, read_tasks(two_models), two_models)
    np.testing.assert_allclose(features.titles, base_vectors, atol=1e-5)
    np.testing.assert_allclose(features.papers, TorchEmbedder(two_models, device="cpu").encode(titles), atol=1e-5)
    with pytest.raises(ValueError, match=r"serves a task with the 'base' output.*no model folder was given"):
        embed(model, data, cfg, read_tasks(two_models))


def test_the_api_serves_search_from_the_base(two_models: Path, tmp_path: Path, base_vectors: np.ndarray) -> None:
    mp = pytest.MonkeyPatch()
    clear_serving_env(mp)
    try:
        app = create_app(make_settings(tmp_path, two_models))
        with TestClient(app) as client:
            wait_ready(client)
            health = client.get("/health").json()
            assert health["tasks"]["search"] == "base", health
            search = client.post("/embed", json={"input": TEXTS, "task": "search"})
            assert search.status_code == 200, search.text
            np.testing.assert_allclose(np.array(search.json()["embeddings"]), base_vectors, atol=1e-5)
            subject = client.post("/embed", json={"input": TEXTS})
            assert np.abs(np.array(subject.json()["embeddings"]) - base_vectors).max() > 1e-4
    finally:
        mp.undo()


def test_the_index_holds_the_base_vectors_for_free_text_search(
    two_models: Path, processed_root: Path, make_cfg, tmp_path: Path
) -> None:
    """The index stage embeds the papers with the model (index.faiss) and with the base (search.faiss); /search
    embeds a free-text query with the base and searches the base's vectors."""
    import pyarrow as pa

    from arxiv_embeddings.index import stage as index_stage
    from arxiv_embeddings.index.search import PaperIndex
    from arxiv_embeddings.io import read_parquet
    from arxiv_embeddings.papers import paper_text

    overrides = [
        f"paths.processed_dir={processed_root / 'data' / 'processed'}",
        f"index.model={two_models}",
        "index.backend=torch",
        "index.encode.device=cpu",
        "index.type=flat",
        "index.name=two",
        "index.eval.queries=20",
        "index.threads=1",
    ]
    built = index_stage.run(make_cfg("index", tmp_path / "project", overrides))
    assert built["manifest"]["search"]["output"] == "base"
    index = PaperIndex.load(built["dir"], expected_model=str(two_models))
    assert index.query_output == "base"
    title = index.metadata.column("title")[5].as_py()
    base = TorchEmbedder(two_models / "base", device="cpu")
    expected = index.search(base.encode([title]), k=5, output="base")[0]
    mp = pytest.MonkeyPatch()
    clear_serving_env(mp)
    try:
        settings = make_settings(tmp_path, two_models, "serve.search=true", f"serve.index_path={built['dir']}")
        with TestClient(create_app(settings)) as client:
            assert wait_ready(client)["search_output"] == "base"
            hits = client.post("/search", json={"text": title, "k": 5}).json()["results"]
    finally:
        mp.undo()
    assert [h["arxiv_id"] for h in hits] == [h.arxiv_id for h in expected]
    # the stored vectors are each model's own, row for row (the papers' text: title + abstract)
    ids = index.metadata.column("arxiv_id").to_pylist()[:4]
    by_id = {
        r["arxiv_id"]: r
        for split in ("train", "eval", "test")
        for r in read_parquet(processed_root / "data" / "processed" / f"{split}.parquet").to_pylist()
    }
    texts = paper_text(pa.Table.from_pylist([by_id[a] for a in ids]), "title_abstract")
    stored_base = np.stack([index.search_index.reconstruct(r) for r in range(4)])
    stored_model = np.stack([index.index.reconstruct(r) for r in range(4)])
    np.testing.assert_allclose(stored_base, base.encode(texts), atol=1e-4)
    np.testing.assert_allclose(stored_model, TorchEmbedder(two_models, device="cpu").encode(texts), atol=1e-4)

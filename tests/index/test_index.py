"""The index stage and PaperIndex: exact and approximate search, alignment, search by id, errors, resume, CLI."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers.index import index_overrides
from typer.testing import CliRunner

from arxiv_embeddings.backends import load_embedder
from arxiv_embeddings.backends.loading import load_model, model_fingerprint
from arxiv_embeddings.cli import app
from arxiv_embeddings.config import ConfigError
from arxiv_embeddings.index import stage as index_stage
from arxiv_embeddings.index.build import build_index
from arxiv_embeddings.index.format import (
    INDEX_FILE,
    METADATA_FILE,
    Embeddings,
    IndexCorruptedError,
    IndexNotFoundError,
    ModelMismatchError,
    UnknownPaperError,
)
from arxiv_embeddings.index.quality import evaluate_index, recall_at_k
from arxiv_embeddings.index.search import Hit, PaperIndex, query_embedder
from arxiv_embeddings.io import read_json
from arxiv_embeddings.layout import MANIFEST_FILE
from arxiv_embeddings.runner import execute

SPLITS = ("train", "eval", "test")


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread() -> Any:
    """FAISS's OpenMP threads spin-wait; on a small shared machine one thread is several times faster here."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("index_root")


@pytest.fixture(scope="module")
def build(root: Path, processed_root: Path, tiny_model_dir: Path, make_cfg):
    """Build an index on the processed slice with the tiny model (shards shared between builds by their key)."""

    def _build(*extra: str, at: Path | None = None) -> dict[str, Any]:
        return index_stage.run(make_cfg("index", at or root, index_overrides(processed_root, tiny_model_dir, *extra)))

    return _build


@pytest.fixture(scope="module")
def flat(build) -> dict[str, Any]:
    return build("index.type=flat", "index.name=tiny-flat")


def corpus_table(processed_root: Path) -> pa.Table:
    tables = [pq.read_table(processed_root / "data" / "processed" / f"{s}.parquet") for s in SPLITS]
    return pa.concat_tables(tables)


def shard_vectors(result: dict[str, Any]) -> np.ndarray:
    return np.concatenate([np.load(p) for p in sorted(Path(result["embeddings"]).glob("shard-*.npy"))])


def clustered(n: int, dim: int, clusters: int, seed: int = 0) -> np.ndarray:
    """Normalized points around ``clusters`` random centres, each cluster spread in a few directions."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    labels = rng.integers(0, clusters, size=n)
    spread = rng.normal(size=(clusters, 4, dim)) * 0.3
    x = centres[labels] + np.einsum("nk,nkd->nd", rng.normal(size=(n, 4)), spread[labels])
    x += rng.normal(size=(n, dim)) * 0.05
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def shard_files(folder: Path, vectors: np.ndarray, size: int) -> Embeddings:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, start in enumerate(range(0, len(vectors), size)):
        paths.append(folder / f"shard-{i:05d}.npy")
        np.save(paths[-1], vectors[start : start + size])
    return Embeddings(folder=folder, shards=paths, count=len(vectors), dimension=vectors.shape[1])


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ------------------------------------------------------------------------------------------- build + search
def test_flat_returns_the_exact_neighbours(flat: dict[str, Any], processed_root: Path) -> None:
    index = PaperIndex.load(flat["dir"])
    vectors = shard_vectors(flat)
    table = corpus_table(processed_root)
    assert len(index) == table.num_rows == vectors.shape[0]
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(5, index.dimension)).astype(np.float32)
    results = index.search(queries, k=7)
    expected = np.argsort(-(queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ vectors.T, axis=1)[:, :7]
    ids = table.column("arxiv_id").to_pylist()
    for hits, rows in zip(results, expected, strict=True):
        assert [h.arxiv_id for h in hits] == [ids[r] for r in rows]
        assert all(isinstance(h, Hit) for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    manifest = flat["manifest"]
    assert manifest["index_type"] == "flat" and manifest["count"] == table.num_rows
    assert manifest["build"]["recall_at_10"] == 1.0 and manifest["build"]["queries_per_s"] > 0


def test_metadata_stays_aligned_after_save_and_load(flat: dict[str, Any], processed_root: Path) -> None:
    index = PaperIndex.load(flat["dir"])
    table = corpus_table(processed_root)
    vectors = shard_vectors(flat)
    for column in ("arxiv_id", "title", "primary_subject"):
        assert index.metadata.column(column).to_pylist() == table.column(column).to_pylist()
    for row in (0, len(index) // 2, len(index) - 1):
        np.testing.assert_allclose(index.vector(row), vectors[row], atol=1e-6)
        assert index.row_of(table.column("arxiv_id")[row].as_py()) == row
        # A paper's own vector finds the paper itself first.
        assert index.search(vectors[row], k=1)[0][0].arxiv_id == table.column("arxiv_id")[row].as_py()


def test_search_by_id_excludes_the_paper_itself(flat: dict[str, Any]) -> None:
    index = PaperIndex.load(flat["dir"])
    vectors = shard_vectors(flat)
    ids = index.metadata.column("arxiv_id").to_pylist()
    for row in (3, 150, len(index) - 2):
        hits = index.search_id(ids[row], k=5)
        assert len(hits) == 5 and ids[row] not in [h.arxiv_id for h in hits]
        others = np.argsort(-(vectors @ vectors[row]))
        assert [h.arxiv_id for h in hits] == [ids[r] for r in others if r != row][:5]
    with pytest.raises(UnknownPaperError, match=r"9999\.99999") as err:
        index.search_id("9999.99999", k=5)
    assert isinstance(err.value, KeyError)


def test_search_text_embeds_with_the_model_that_built_it(flat: dict[str, Any], tiny_model_dir: Path) -> None:
    index = PaperIndex.load(flat["dir"], expected_model=str(tiny_model_dir))
    embedder = query_embedder(index)
    title = index.metadata.column("title")[10].as_py()
    direct = index.search(embedder.encode([title]), k=3)
    assert index.search_text(embedder, [title], k=3) == direct and len(direct[0]) == 3
    assert index.search_text(embedder, [], k=3) == []


@pytest.mark.parametrize(
    ("index_type", "extra"),
    [
        ("hnsw", []),
        ("ivf", []),
        ("ivf", ["index.ivf.pq_m=8", "index.ivf.pq_nbits=6", "index.ivf.refine_k_factor=8"]),
    ],
    ids=["hnsw", "ivf-flat", "ivf-pq-refine"],
)
def test_approximate_types_reach_the_configured_recall(
    index_type: str, extra: list[str], tmp_path: Path, make_cfg
) -> None:
    cfg = make_cfg("index", tmp_path, [f"index.type={index_type}", *extra])
    vectors = clustered(6000, 32, clusters=40)
    embeddings = shard_files(tmp_path / "shards", vectors, size=2500)
    index, params = build_index(index_type, embeddings, cfg.index, seed=0)
    assert index.ntotal == len(vectors)
    report = evaluate_index(index, embeddings, queries=300, k=10, seed=0)
    assert report["recall_at_10"] >= cfg.index.eval.min_recall, (report, params)
    # The recall is measured, not assumed: a crippled search of the same type scores lower.
    if index_type == "ivf":
        import faiss

        faiss.extract_index_ivf(index).nprobe = 1
        assert evaluate_index(index, embeddings, queries=300, k=10, seed=0)["recall_at_10"] < report["recall_at_10"]


def test_recall_leaves_out_the_query_row() -> None:
    exact = np.array([[0, 1, 2, 3], [1, 5, 6, 7]])
    rows = np.array([0, 1])
    assert recall_at_k(exact, exact, rows, k=3) == 1.0
    found = np.array([[0, 1, 9, 8], [1, 5, 6, 9]])
    assert recall_at_k(found, exact, rows, k=3) == pytest.approx((1 / 3 + 2 / 3) / 2)


def test_recall_counts_a_tie_with_the_kth_exact_neighbour_but_nothing_farther() -> None:
    exact = np.array([[0, 1, 2, 3]])
    exact_scores = np.array([[1.0, 0.9, 0.8, 0.8]])
    rows = np.array([0])
    tied = np.array([[0, 1, 3, 2]])  # rows 2 and 3 are equally near: either order is exact
    assert recall_at_k(tied, exact, rows, k=2) == pytest.approx(0.5)  # without the scores, a miss
    scores = np.array([[1.0, 0.9, 0.8, 0.8]])
    assert recall_at_k(tied, exact, rows, k=2, found_scores=scores, exact_scores=exact_scores) == 1.0
    farther = np.array([[0, 1, 7, 2]])
    far_scores = np.array([[1.0, 0.9, 0.5, 0.8]])
    assert recall_at_k(farther, exact, rows, k=2, found_scores=far_scores, exact_scores=exact_scores) == 0.5


def test_approximate_build_of_the_corpus_loads_with_its_search_settings(build) -> None:
    result = build("index.type=ivf", "index.name=tiny-ivf", "index.ivf.nprobe=3")
    assert result["manifest"]["build"]["reused_papers"] == result["manifest"]["count"]  # shards of the flat build
    index = PaperIndex.load(result["dir"])
    import faiss

    assert faiss.extract_index_ivf(index.index).nprobe == 3 == result["manifest"]["index_params"]["nprobe"]
    ids = index.metadata.column("arxiv_id").to_pylist()
    assert ids[5] not in [h.arxiv_id for h in index.search_id(ids[5], k=4)]


# ------------------------------------------------------------------------------------------------ errors
@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """Another tiny model, 16-d."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models
    from transformers import BertConfig, BertModel

    out = tmp_path_factory.mktemp("other") / "other-bert"
    hf = out.parent / "hf"
    BertModel(
        BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(hf)
    shutil.copy(tiny_model_dir / "vocab.txt", hf / "vocab.txt")
    for name in ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        if (tiny_model_dir / name).exists():
            shutil.copy(tiny_model_dir / name, hf / name)
    word = models.Transformer(str(hf), max_seq_length=32)
    pooling = models.Pooling(word.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[word, pooling], device="cpu").save(str(out))
    return out


def test_loading_with_another_model_or_dimension_fails(
    flat: dict[str, Any], tiny_model_dir: Path, other_model_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ModelMismatchError, match="other-bert"):
        PaperIndex.load(flat["dir"], expected_model=str(other_model_dir))
    # The same weights elsewhere are the same model: copied, or saved again with an ONNX export beside them.
    copy = shutil.copytree(tiny_model_dir, tmp_path / "moved")
    index = PaperIndex.load(flat["dir"], expected_model=str(copy))
    resaved = tmp_path / "resaved"
    load_model(tiny_model_dir, device="cpu").save(str(resaved))
    (resaved / "onnx").mkdir()
    (resaved / "onnx" / "model.onnx").write_bytes(b"exported")
    (resaved / "export_report.json").write_text("{}")
    assert model_fingerprint(resaved) == index.manifest["model_fingerprint"]
    PaperIndex.load(flat["dir"], expected_model=str(resaved))
    other = load_embedder(other_model_dir, backend="torch", device="cpu")
    with pytest.raises(ModelMismatchError, match="dimension 16") as err:
        index.search_text(other, ["a query"], k=3)
    assert "32" in str(err.value)
    with pytest.raises(ModelMismatchError, match="dimension 16"):
        index.search(np.ones((1, 16), np.float32), k=3)


@pytest.mark.parametrize("damage", ["flip", "truncate", "metadata", "manifest"])
def test_a_corrupted_index_is_refused(flat: dict[str, Any], tmp_path: Path, damage: str) -> None:
    folder = Path(shutil.copytree(flat["dir"], tmp_path / "copy"))
    if damage == "flip":
        data = bytearray((folder / INDEX_FILE).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (folder / INDEX_FILE).write_bytes(bytes(data))
    elif damage == "truncate":
        data = (folder / INDEX_FILE).read_bytes()
        (folder / INDEX_FILE).write_bytes(data[: len(data) // 2])
    elif damage == "metadata":
        (folder / METADATA_FILE).unlink()
    else:
        (folder / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(IndexCorruptedError, match="uv run inv index --force"):
        PaperIndex.load(folder)
    with pytest.raises(IndexNotFoundError, match="uv run inv index"):
        PaperIndex.load(tmp_path / "nothing-here")


def test_empty_corpus_fails_and_keeps_the_previous_index(build, root: Path, processed_root: Path) -> None:
    previous = build("index.type=flat", "index.name=keep")
    before = tree_bytes(previous["dir"])
    empty = root / "empty.parquet"
    pq.write_table(corpus_table(processed_root).slice(0, 0), empty)
    with pytest.raises(ConfigError, match="corpus is empty"):
        build("index.type=flat", "index.name=keep", f"index.corpus.path={empty}")
    assert tree_bytes(previous["dir"]) == before
    assert PaperIndex.load(previous["dir"]).manifest["count"] == len(corpus_table(processed_root))


def test_config_errors_name_the_key(build, make_cfg, root: Path) -> None:
    with pytest.raises(ConfigError, match=r"index\.type='annoy'.*flat, hnsw, ivf"):
        index_stage.validate(make_cfg("index", root, ["index.type=annoy"]))
    with pytest.raises(ConfigError, match=r"index\.corpus\.splits"):
        index_stage.validate(make_cfg("index", root, ["index.corpus.splits=[train,dev]"]))
    with pytest.raises(ConfigError, match=r"index.ivf.pq_m=5 does not divide .* 32"):
        build("index.type=ivf", "index.ivf.pq_m=5", "index.name=bad-pq")
    assert not (root / "indexes" / "bad-pq").exists()


# ------------------------------------------------------------------------------------------------ resume
class CrashingEmbedder:
    """The real embedder, interrupted after ``fail_after`` encode calls (a crash mid-build)."""

    def __init__(self, inner: Any, fail_after: int | None = None) -> None:
        self.inner, self.fail_after, self.calls, self.texts = inner, fail_after, 0, 0
        for name in ("name", "backend", "variant", "dimension", "device", "max_seq_length"):
            setattr(self, name, getattr(inner, name))

    def encode(self, texts: list[str], batch_size: int = 32, normalize: bool = True) -> np.ndarray:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated crash")
        self.calls += 1
        self.texts += len(texts)
        return self.inner.encode(texts, batch_size=batch_size, normalize=normalize)


def test_an_interrupted_build_resumes_from_its_shards(
    build, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processed_root: Path
) -> None:
    import arxiv_embeddings.backends as embedder_module

    real = embedder_module.load_embedder
    made: list[CrashingEmbedder] = []

    def patched(fail_after: int | None):
        def load(*args: Any, **kwargs: Any) -> CrashingEmbedder:
            made.append(CrashingEmbedder(real(*args, **kwargs), fail_after))
            return made[-1]

        return load

    extra = ("index.type=flat", "index.name=resume", "index.shard_size=100", "index.keep_embeddings=false")
    previous = build("index.type=flat", "index.name=resume", at=tmp_path)
    before = tree_bytes(previous["dir"])

    monkeypatch.setattr(embedder_module, "load_embedder", patched(fail_after=2))
    with pytest.raises(KeyboardInterrupt):
        build(*extra, at=tmp_path)
    assert tree_bytes(previous["dir"]) == before  # the crash left the previous index as it was
    caches = [
        p for p in (tmp_path / "indexes" / ".embeddings").iterdir() if read_json(p / "key.json")["shard_size"] == 100
    ]
    assert len(caches) == 1 and sorted(p.name for p in caches[0].glob("shard-*.npy")) == [
        "shard-00000.npy",
        "shard-00001.npy",
    ]

    monkeypatch.setattr(embedder_module, "load_embedder", patched(fail_after=None))
    result = build(*extra, at=tmp_path)
    n = len(corpus_table(processed_root))
    assert made[-1].texts == n - 200 and result["manifest"]["build"]["reused_papers"] == 200
    vectors = np.stack([PaperIndex.load(result["dir"]).vector(i) for i in range(n)])
    np.testing.assert_allclose(vectors, shard_vectors(previous), atol=1e-5)  # same as one uninterrupted run
    assert not Path(result["embeddings"]).exists()  # keep_embeddings=false


def test_stage_skips_when_unchanged(root: Path, processed_root: Path, tiny_model_dir: Path, make_cfg) -> None:
    cfg = make_cfg("index", root, index_overrides(processed_root, tiny_model_dir, "index.name=skip"))
    assert execute(index_stage.SPEC, cfg) is not None
    assert execute(index_stage.SPEC, cfg) is None
    cfg = make_cfg("index", root, index_overrides(processed_root, tiny_model_dir, "index.name=skip", "index.hnsw.m=8"))
    assert execute(index_stage.SPEC, cfg) is not None


# --------------------------------------------------------------------------------------------------- CLI
runner = CliRunner()


def test_search_cli_prints_the_nearest_papers(flat: dict[str, Any], root: Path, processed_root: Path) -> None:
    where = ["-o", f"paths.root_dir={root}", "-o", "index.name=tiny-flat"]
    index = PaperIndex.load(flat["dir"])
    title = index.metadata.column("title")[42].as_py()
    result = runner.invoke(app, ["search", title, "-k", "3", *where])
    assert result.exit_code == 0, result.output
    hits = index.search_text(query_embedder(index), [title], k=3)[0]
    for hit in hits:
        assert hit.arxiv_id in result.output and f"{hit.score:.3f}" in result.output
    assert "score" in result.output and "subject" in result.output

    paper = index.metadata.slice(42, 1).to_pylist()[0]
    result = runner.invoke(app, ["search", "--id", paper["arxiv_id"], "-k", "4", *where])
    assert result.exit_code == 0, result.output
    assert result.output.count(paper["arxiv_id"]) == 1  # in the table's title only, not among the results
    for hit in index.search_id(paper["arxiv_id"], k=4):
        assert hit.arxiv_id in result.output

    unknown = runner.invoke(app, ["search", "--id", "0000.00000", *where])
    assert unknown.exit_code == 1 and "0000.00000" in unknown.output
    missing = runner.invoke(app, ["search", "anything", "-o", f"paths.root_dir={root / 'none'}"])
    assert missing.exit_code == 1 and "uv run inv index" in missing.output
    assert runner.invoke(app, ["search", *where]).exit_code == 2


def test_similar_cli_lists_papers_like_an_indexed_one_without_it(flat: dict[str, Any], root: Path) -> None:
    where = ["-o", f"paths.root_dir={root}", "-o", "index.name=tiny-flat"]
    index = PaperIndex.load(flat["dir"])
    paper = index.metadata.slice(7, 1).to_pylist()[0]
    result = runner.invoke(app, ["similar", paper["arxiv_id"], "-k", "5", *where])
    assert result.exit_code == 0, result.output
    assert f"Papers like {paper['arxiv_id']}" in result.output
    assert result.output.count(paper["arxiv_id"]) == 1  # in the title only
    hits = index.search_id(paper["arxiv_id"], k=5)
    assert len(hits) == 5
    for hit in hits:
        assert hit.arxiv_id in result.output
    unknown = runner.invoke(app, ["similar", "0000.00000", *where])
    assert unknown.exit_code == 1 and "0000.00000" in unknown.output

"""evaluate: score a sentence-transformers model on the test split and write metrics.json, report.md and plots.

    uv run inv evaluate --overrides "evaluate.model=my-run"            # models/my-run/final
    uv run inv evaluate --overrides "evaluate.model=sentence-transformers/all-MiniLM-L6-v2"

Four views of the same test embeddings: subject retrieval (each test paper against the other test papers,
relevant = same primary subject), title -> abstract retrieval, a logistic-regression probe fit on (a seeded
sample of) the train split, and k-means clustering. The scoring functions take vectors, not a model, so the
TF-IDF baseline goes through exactly the same code (see :mod:`arxiv_embeddings.baseline`).

With ``paths=gcs`` the splits are read from the bucket, a run's model is copied from the bucket to
``${paths.cache_dir}`` (once per content) to be loaded, and the report folder is published to the bucket.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import numpy as np
import pyarrow as pa
from loguru import logger
from omegaconf import DictConfig, OmegaConf

from arxiv_embeddings.backends.loading import fetch_model, model_files
from arxiv_embeddings.config import (
    CONFIG_DIR,
    ConfigError,
    check_int,
    check_missing,
    is_int,
    require,
    require_in,
    to_plain,
)
from arxiv_embeddings.data import SAMPLE_STREAMS as SAMPLE_STREAMS
from arxiv_embeddings.data import TEXT_FIELDS, paper_text
from arxiv_embeddings.data import sample_rows as sample_rows
from arxiv_embeddings.io import artifact_path, atomic_dir, exists, file_sha256, is_remote, read_parquet, write_json
from arxiv_embeddings.layout import ModelNotFoundError, as_path, model_location, split_path
from arxiv_embeddings.metrics import (
    Matrix,
    RankingCutoffs,
    RetrievalResult,
    classification_metrics,
    clustering_metrics,
    is_sparse,
    label_retrieval,
    paired_retrieval,
    ranking_metrics,
)
from arxiv_embeddings.stage import StageSpec

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

SCHEMA_VERSION = 2  # 2: fresh_retrieval, per-query figures, each model at its own max_seq_length
METRICS_FILE = "metrics.json"
#: The fresh papers of the generalization check shipped with the package (resources/, beside the sample).
FRESH_FILE = "arxiv_fresh.parquet"
REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
#: Top-level keys of every metrics.json, whatever produced the vectors.
METRICS_KEYS = (
    "schema_version",
    "run",
    "kind",
    "model",
    "text",
    "split",
    "data",
    "num_subjects",
    "subject_retrieval",
    "title_abstract",
    "fresh_retrieval",
    "classification",
    "clustering",
    "features",
    "timing",
    "config",
    "created_at",
)
PRECISIONS = ("fp32", "fp16", "bf16", "auto")
MAP_METHODS = ("pca", "tsne")
#: FAISS index types for the title -> abstract search (``evaluate.title_abstract.index``).
TITLE_ABSTRACT_INDEXES = ("flat", "hnsw")


# --------------------------------------------------------------------------------------------- validation
def _positive_ints(cfg: DictConfig, key: str, allow_empty: bool = False) -> list[int]:
    node = OmegaConf.select(cfg, key)
    values = list(node) if OmegaConf.is_list(node) else None
    ok = values is not None and (allow_empty or len(values) > 0) and all(is_int(v) and v > 0 for v in values)
    require(ok, key, f"got {node!r}; expected a list of positive integers such as [1, 10].")
    return [int(v) for v in values or []]


def validate_evaluation(cfg: DictConfig) -> None:
    """Check the ``evaluate`` settings (shared by the evaluate and baseline stages), naming the offending key."""
    e = cfg.evaluate
    require_in("evaluate.text", e.text, TEXT_FIELDS)
    check_int(e.max_test_papers, "evaluate.max_test_papers", optional=True)
    check_int(e.encode.batch_size, "evaluate.encode.batch_size")
    check_int(e.encode.max_seq_length, "evaluate.encode.max_seq_length", optional=True)
    require_in("evaluate.encode.precision", e.encode.precision, PRECISIONS)
    pr = _positive_ints(cfg, "evaluate.retrieval.precision_recall_at")
    _positive_ints(cfg, "evaluate.retrieval.accuracy_at", allow_empty=True)
    for key in ("mrr_at", "ndcg_at", "map_at"):
        _positive_ints(cfg, f"evaluate.retrieval.{key}")
    require(
        e.retrieval.per_subject_at in pr,
        "evaluate.retrieval.per_subject_at",
        f"got {e.retrieval.per_subject_at!r}; it must be one of evaluate.retrieval.precision_recall_at={pr}.",
    )
    check_int(e.retrieval.max_scores, "evaluate.retrieval.max_scores")
    fresh = e.get("fresh")
    if fresh is not None:
        require(
            isinstance(fresh.enabled, bool), "evaluate.fresh.enabled", f"got {fresh.enabled!r}; expected true or false."
        )
        check_int(fresh.min_per_subject, "evaluate.fresh.min_per_subject", minimum=2)
    boot = e.get("bootstrap")
    if boot is not None:
        check_int(boot.resamples, "evaluate.bootstrap.resamples", minimum=100)
        ok = isinstance(boot.confidence, float) and 0.5 <= boot.confidence < 1
        require(
            ok, "evaluate.bootstrap.confidence", f"got {boot.confidence!r}; expected a number in [0.5, 1), e.g. 0.95."
        )
    _positive_ints(cfg, "evaluate.title_abstract.recall_at")
    _positive_ints(cfg, "evaluate.title_abstract.mrr_at")
    ta = e.title_abstract
    require_in("evaluate.title_abstract.index", ta.get("index", "flat"), TITLE_ABSTRACT_INDEXES)
    if ta.get("index") == "hnsw":
        for key in ("m", "ef_construction", "ef_search"):
            check_int(ta.hnsw.get(key), f"evaluate.title_abstract.hnsw.{key}")
    check_int(e.classification.max_train_papers, "evaluate.classification.max_train_papers", optional=True)
    C = e.classification.C
    require(isinstance(C, (int, float)) and C > 0, "evaluate.classification.C", f"got {C!r}; must be a number > 0.")
    check_int(e.classification.max_iter, "evaluate.classification.max_iter")
    check_int(e.clustering.n_init, "evaluate.clustering.n_init")
    require_in("evaluate.plots.map_method", e.plots.map_method, MAP_METHODS)
    check_int(e.plots.max_points, "evaluate.plots.max_points", minimum=2)
    check_int(e.plots.max_legend_subjects, "evaluate.plots.max_legend_subjects")


def check_report_name(name: str, key: str) -> None:
    """A report name must be a single folder name."""
    require(
        bool(name) and name not in {".", ".."} and "/" not in name and "\\" not in name and not name.startswith("."),
        key,
        f"got {name!r}; a report name is one folder name (no '/', not starting with '.').",
    )


def validate(cfg: DictConfig) -> None:
    """Check the config before any work, naming the offending key."""
    check_missing(cfg)
    require(
        bool(str(cfg.evaluate.model).strip()),
        "evaluate.model",
        "is empty; pass a run name, a model folder or a Hub name.",
    )
    validate_evaluation(cfg)
    check_report_name(report_name(cfg), "evaluate.report_name")


# ------------------------------------------------------------------------------------------------ naming
def report_name(cfg: DictConfig, model: str | None = None) -> str:
    """Name of the report folder: ``evaluate.report_name``, else derived from the model value."""
    if model is None and cfg.evaluate.get("report_name"):
        return str(cfg.evaluate.report_name)
    value = str(model if model is not None else cfg.evaluate.model).rstrip("/")
    parts = Path(value).parts
    if not parts:
        return value
    if parts[-1] == "final" and len(parts) >= 2:
        return parts[-2]
    return parts[-1]


def model_source(cfg: DictConfig, model: str | None = None) -> str:
    """The local folder (or Hub name) the model will be loaded from; fails fast on a missing run or path. A model
    in a bucket is copied to ``${paths.cache_dir}`` first (once per content)."""
    from arxiv_embeddings.backends.loading import resolve_model

    return resolve_model(fetch_model(model_location(cfg, model), cfg.paths.cache_dir))


def local_model_dir(cfg: DictConfig, model: str | None = None) -> Path | None:
    """The model folder, on local disk or in a bucket, when the model is one (a stage input), else None (a Hub
    name). Never raises."""
    try:
        location = as_path(model_location(cfg, model))
    except ModelNotFoundError:
        return artifact_path(cfg.paths.models_dir) / str(model or cfg.evaluate.model) / "final"
    return location if location.exists() else None


def report_dir(cfg: DictConfig, name: str | None = None) -> Path:
    """``${paths.reports_dir}/<name>`` (default: :func:`report_name`); a bucket URL with ``paths=gcs``."""
    return artifact_path(cfg.paths.reports_dir) / (name or report_name(cfg))


def report_files(directory: Path) -> list[Path]:
    """The files a report folder holds (its stage outputs)."""
    return [directory / METRICS_FILE, directory / REPORT_FILE, directory / PLOTS_DIR]


# --------------------------------------------------------------------------------------------------- data
@dataclass
class EvalData:
    """The test papers scored and the train papers that fit the probe."""

    test: pa.Table
    train: pa.Table  # the (capped) train papers used for the classifier
    train_path: Path  # the whole train split (the TF-IDF baseline fits its vocabulary on it)
    info: dict[str, Any] = field(default_factory=dict)
    fresh: pa.Table | None = None  # the generalization check's papers (evaluate.fresh), or None when it is off

    @property
    def test_labels(self) -> np.ndarray:
        return np.asarray(self.test.column("primary_subject").to_pylist(), dtype=object).astype(str)

    @property
    def train_labels(self) -> np.ndarray:
        return np.asarray(self.train.column("primary_subject").to_pylist(), dtype=object).astype(str)

    @property
    def fresh_labels(self) -> np.ndarray:
        if self.fresh is None:
            raise ValueError("No fresh papers were loaded (evaluate.fresh.enabled=false).")
        return np.asarray(self.fresh.column("primary_subject").to_pylist(), dtype=object).astype(str)


COLUMNS = ["arxiv_id", "title", "abstract", "primary_subject"]


def read_sample(path: Path, cap: int | None, seed: int, stream: str) -> tuple[pa.Table, int]:
    """A seeded random choice of at most ``cap`` papers of a processed split, and the split's size."""
    table = read_parquet(path, columns=COLUMNS)
    rows = sample_rows(table.num_rows, cap, seed, stream)
    return (table.take(pa.array(rows)) if len(rows) < table.num_rows else table), table.num_rows


def load_data(cfg: DictConfig) -> EvalData:
    """Read the processed test split and the classifier's train papers, with the seeded caps applied."""
    test_path, train_path = split_path(cfg, "test"), split_path(cfg, "train")
    e = cfg.evaluate
    test, n_test = read_sample(test_path, e.max_test_papers, int(cfg.seed), "test")
    train, n_train = read_sample(train_path, e.classification.max_train_papers, int(cfg.seed), "train")
    if test.num_rows < 2:
        raise ConfigError(f"The test split at {test_path} has {test.num_rows} paper(s); evaluation needs at least 2.")
    info = {
        "test": {
            "path": str(test_path),
            "sha256": file_sha256(test_path),
            "papers": test.num_rows,
            "split_papers": n_test,
        },
        "train": {
            "path": str(train_path),
            "sha256": file_sha256(train_path),
            "papers": train.num_rows,
            "split_papers": n_train,
        },
    }
    fresh = None
    if e.get("fresh") is not None and e.fresh.enabled:
        fresh, info["fresh"] = load_fresh(cfg)
    return EvalData(test=test, train=train, train_path=train_path, info=info, fresh=fresh)


def fresh_path(cfg: DictConfig) -> Path:
    """The fresh papers of the generalization check: ``evaluate.fresh.path``, or the file shipped with the package."""
    from arxiv_embeddings.data import SAMPLE_PATH

    path = cfg.evaluate.fresh.path
    return artifact_path(path) if path else SAMPLE_PATH.parent / FRESH_FILE


def load_fresh(cfg: DictConfig) -> tuple[pa.Table, dict[str, Any]]:
    """The fresh papers, without any paper that a processed split holds (same arxiv_id or abstract), and without
    subjects left with fewer than ``evaluate.fresh.min_per_subject`` papers. Returns them and what was dropped."""
    import pyarrow.compute as pc

    path = fresh_path(cfg)
    if not exists(path):
        raise FileNotFoundError(
            f"evaluate.fresh.path={cfg.evaluate.fresh.path}: no file at {path}; give a parquet of papers in the data "
            "schema, null for the fresh papers shipped with the package, or evaluate.fresh.enabled=false."
        )
    table = read_parquet(path, columns=COLUMNS)
    table = table.cast(pa.schema([(f.name, pa.string()) for f in table.schema]))
    seen = pa.array(np.zeros(table.num_rows, dtype=bool))
    for split in ("train", "eval", "test"):  # one split at a time: at most one split's abstracts in memory
        part = read_parquet(split_path(cfg, split), columns=["arxiv_id", "abstract"])
        for column in ("arxiv_id", "abstract"):
            values = part.column(column).cast(pa.string()).combine_chunks()
            seen = pc.or_(seen, pc.is_in(table.column(column), value_set=values))
    unseen = table.filter(pc.invert(seen))
    counts = pc.value_counts(unseen.column("primary_subject"))
    minimum = int(cfg.evaluate.fresh.min_per_subject)
    kept_subjects = [c["values"].as_py() for c in counts if c["counts"].as_py() >= minimum]
    fresh = unseen.filter(pc.is_in(unseen.column("primary_subject"), value_set=pa.array(kept_subjects, pa.string())))
    info = {
        "path": str(path),
        "sha256": file_sha256(path),
        "papers": fresh.num_rows,
        "file_papers": table.num_rows,
        "dropped_seen": table.num_rows - unseen.num_rows,
        "dropped_small_subjects": unseen.num_rows - fresh.num_rows,
        "subjects": len(kept_subjects),
    }
    if fresh.num_rows < 2:
        logger.warning(
            f"Generalization check skipped: {info['dropped_seen']:,} of the {table.num_rows:,} fresh papers in {path} "
            "are in the processed splits (the model may have trained on them) and too few are left; give other "
            "papers with evaluate.fresh.path."
        )
    else:
        logger.info(
            f"Fresh papers: {fresh.num_rows:,} in {len(kept_subjects)} subjects from {path} "
            f"({info['dropped_seen']:,} dropped: in the processed splits)."
        )
    return fresh, info


# ---------------------------------------------------------------------------------------------- features
@dataclass
class Features:
    """Vectors (dense embeddings or sparse TF-IDF rows) of everything the evaluation scores."""

    papers: Matrix  # test papers, text = evaluate.text
    titles: Matrix  # test titles (title -> abstract queries)
    abstracts: Matrix  # test abstracts (title -> abstract corpus)
    train: Matrix  # train papers for the classifier, text = evaluate.text
    info: dict[str, Any] = field(default_factory=dict)
    fresh: Matrix | None = None  # the generalization check's papers, text = evaluate.text


def _torch_dtype(precision: str, device: str) -> Any:
    import torch

    from arxiv_embeddings.backends.loading import best_precision

    if precision == "auto":
        precision = best_precision(device)
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def _fit_seq_length(model: SentenceTransformer, wanted: int) -> None:
    """Lower ``max_seq_length`` to what the model's tokenizer accepts (longer inputs would not fit its positions)."""
    limit = int(getattr(getattr(model, "tokenizer", None), "model_max_length", 0) or 0)
    if 0 < limit < wanted:
        logger.warning(f"evaluate.encode.max_seq_length={wanted} is more than this model accepts; using {limit}.")
        model.max_seq_length = limit


def _embedding_dim(model: SentenceTransformer) -> int:
    # sentence-transformers 5.x renamed get_sentence_embedding_dimension to get_embedding_dimension.
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter() or 0)


def load_encoder(cfg: DictConfig, model: str | None = None) -> tuple[SentenceTransformer, dict[str, Any]]:
    """Load the model to evaluate, on the configured device and precision."""
    from arxiv_embeddings.backends.loading import default_device, load_model

    enc = cfg.evaluate.encode
    remote = model_location(cfg, model)
    location = model_source(cfg, model)
    device = str(enc.device or default_device())
    wanted = int(enc.max_seq_length) if enc.max_seq_length else None
    try:
        st = load_model(location, device=device, max_seq_length=wanted)
    except ModelNotFoundError:
        raise
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(
            f"Could not load {location!r} as a sentence-transformers model ({type(err).__name__}: {err}). Expected a "
            "run name with a model at models/<run>/final, a model folder, or a Hub name that is in the local Hugging "
            "Face cache or can be downloaded."
        ) from err
    if wanted:
        _fit_seq_length(st, wanted)
    dtype = _torch_dtype(str(enc.precision), device)
    st.to(dtype)
    info = {
        "kind": "sentence-transformers",
        "model_path": remote if is_remote(remote) else location,
        "device": device,
        "precision": str(dtype).removeprefix("torch."),
        "max_seq_length": int(st.max_seq_length or 0),
        "batch_size": int(enc.batch_size),
        "dim": _embedding_dim(st),
    }
    return st, info


def encode_texts(model: SentenceTransformer, texts: list[str], batch_size: int, what: str) -> np.ndarray:
    """L2-normalized float32 embeddings of ``texts``, in batches, with a progress bar."""
    logger.info(f"Encoding {len(texts):,} {what}.")
    emb = model.encode(
        texts,
        batch_size=batch_size,
        show_progress_bar=True,
        convert_to_numpy=True,
        normalize_embeddings=True,
    )
    return np.asarray(emb, dtype=np.float32)


def features_from(encode: Callable[[list[str], str], Matrix], data: EvalData, text: str) -> Features:
    """The test papers (``text``), titles and abstracts, and the classifier's train papers, as ``encode(texts,
    what)`` turns them into vectors; no text is encoded twice (papers reuse the titles or abstracts when ``text`` is
    one of them)."""
    titles = encode(paper_text(data.test, "title"), "test titles")
    abstracts = encode(paper_text(data.test, "abstract"), "test abstracts")
    papers = {"title": titles, "abstract": abstracts}.get(text)
    if papers is None:
        papers = encode(paper_text(data.test, text), f"test papers ({text})")
    train = encode(paper_text(data.train, text), f"train papers ({text}) for the classifier")
    fresh = None
    if data.fresh is not None and data.fresh.num_rows >= 2:
        fresh = encode(paper_text(data.fresh, text), f"fresh papers ({text}) for the generalization check")
    return Features(papers=papers, titles=titles, abstracts=abstracts, train=train, fresh=fresh)


def embed(model: SentenceTransformer, data: EvalData, cfg: DictConfig) -> Features:
    """Embed the test papers, titles and abstracts, and the classifier's train papers (no text encoded twice)."""
    bs = int(cfg.evaluate.encode.batch_size)
    return features_from(lambda texts, what: encode_texts(model, texts, bs, what), data, str(cfg.evaluate.text))


# ------------------------------------------------------------------------------------------------ scoring
def _cutoffs(cfg: DictConfig) -> RankingCutoffs:
    r = cfg.evaluate.retrieval
    return RankingCutoffs(
        precision_recall_at=tuple(r.precision_recall_at),
        accuracy_at=tuple(r.accuracy_at),
        mrr_at=tuple(r.mrr_at),
        ndcg_at=tuple(r.ndcg_at),
        map_at=tuple(r.map_at),
    )


def _retrieval_device(features: Features) -> str:
    device = str(features.info.get("device", "cpu"))
    return device if device.startswith(("cuda", "cpu")) else "cpu"


def faiss_paired_retrieval(
    queries: np.ndarray, corpus: np.ndarray, cutoffs: RankingCutoffs, index_type: str, hnsw: Any = None
) -> tuple[RetrievalResult, dict[str, Any]]:
    """:func:`~arxiv_embeddings.metrics.paired_retrieval` through a FAISS index of the corpus (inner product of the
    L2-normalized rows): query ``i`` has one relevant row, ``i``. ``index_type`` is ``flat`` (exact) or ``hnsw``
    (built as the index stage builds it, with ``hnsw.m``, ``ef_construction`` and ``ef_search``). Returns the
    result and a description of the index."""
    from arxiv_embeddings.ann import make_index

    n, dim = queries.shape
    ix = OmegaConf.create({"hnsw": to_plain(hnsw) if hnsw is not None else {}})
    index, params = make_index(index_type, int(dim), int(corpus.shape[0]), ix)
    index.add(np.ascontiguousarray(corpus, dtype=np.float32))
    k = min(cutoffs.max_k, int(corpus.shape[0]))
    _, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    hits = found == np.arange(n)[:, None]
    result = RetrievalResult(ranking_metrics(hits, np.ones(n), cutoffs), np.arange(n), int(corpus.shape[0]))
    return result, {"search": f"faiss-{index_type}", **({"index_params": params} if params else {})}


def title_abstract_retrieval(features: Features, cfg: DictConfig, device: str = "cpu") -> dict[str, Any]:
    """Title -> abstract retrieval: each test title against the test abstracts (one relevant: its own), searched in
    a FAISS index of the abstracts (``evaluate.title_abstract.index``); sparse TF-IDF rows are searched exactly.
    Returns the ``title_abstract`` section of metrics.json: recall@k, precision@k, MRR@k and how it searched."""
    e = cfg.evaluate
    ks = tuple(e.title_abstract.recall_at)
    cutoffs = RankingCutoffs(
        precision_recall_at=ks, accuracy_at=(), mrr_at=tuple(e.title_abstract.mrr_at), ndcg_at=(), map_at=()
    )
    if is_sparse(features.abstracts) or is_sparse(features.titles):
        result = paired_retrieval(
            features.titles, features.abstracts, cutoffs=cutoffs, max_scores=int(e.retrieval.max_scores), device=device
        )
        info: dict[str, Any] = {"search": "exact (sparse dot products)"}
    else:
        titles, abstracts = (np.asarray(_dense(x), dtype=np.float32) for x in (features.titles, features.abstracts))
        index_type = str(e.title_abstract.get("index", "flat"))
        result, info = faiss_paired_retrieval(titles, abstracts, cutoffs, index_type, e.title_abstract.get("hnsw"))
    return {"num_queries": result.num_queries, "corpus_size": result.corpus_size, **result.summary(), **info}


def _dense(x: Matrix) -> np.ndarray:
    import torch

    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


#: Per-query figures kept in metrics.json (beside the arxiv ids), for the paired bootstrap of ``inv compare``.
PER_QUERY_KEYS = ("precision@10", "mrr@10", "ndcg@10")


def per_query(result: RetrievalResult, papers: pa.Table) -> dict[str, list[Any]]:
    """The scored queries' arxiv ids and their :data:`PER_QUERY_KEYS` values (rounded to 6 digits)."""
    ids = np.asarray(papers.column("arxiv_id").to_pylist(), dtype=object)[result.query_index]
    out: dict[str, list[Any]] = {"arxiv_id": [str(i) for i in ids]}
    for key in PER_QUERY_KEYS:
        if key in result.per_query:
            out[key] = [round(float(v), 6) for v in result.per_query[key]]
    return out


def score(features: Features, data: EvalData, cfg: DictConfig) -> dict[str, Any]:
    """Every metric of the evaluation, from vectors. Returns the metric sections of metrics.json and their timing."""
    from sklearn.linear_model import LogisticRegression

    e, timing = cfg.evaluate, {}
    device = _retrieval_device(features)
    labels = data.test_labels

    t0 = time.perf_counter()
    subj = label_retrieval(
        features.papers, labels, cutoffs=_cutoffs(cfg), max_scores=int(e.retrieval.max_scores), device=device
    )
    per_key = f"precision@{e.retrieval.per_subject_at}"
    counts = dict(zip(*np.unique(labels[subj.query_index], return_counts=True), strict=True))
    subject_retrieval = {
        "num_queries": subj.num_queries,
        "corpus_size": subj.corpus_size,
        **subj.summary(),
        "per_subject": {s: {per_key: v, "queries": int(counts[s])} for s, v in subj.by_group(per_key, labels).items()},
    }
    subject_retrieval["per_query"] = per_query(subj, data.test)
    title_abstract = title_abstract_retrieval(features, cfg, device)
    fresh_retrieval = None
    if features.fresh is not None and data.fresh is not None:
        fresh = label_retrieval(
            features.fresh,
            data.fresh_labels,
            cutoffs=_cutoffs(cfg),
            max_scores=int(e.retrieval.max_scores),
            device=device,
        )
        fresh_retrieval = {
            "num_queries": fresh.num_queries,
            "corpus_size": fresh.corpus_size,
            "num_subjects": len(set(data.fresh_labels.tolist())),
            **fresh.summary(),
            "per_query": per_query(fresh, data.fresh),
        }
    timing["retrieval_s"] = round(time.perf_counter() - t0, 3)

    t0 = time.perf_counter()
    train_labels = data.train_labels
    if len(set(train_labels.tolist())) < 2:
        raise ConfigError(
            f"evaluate.classification: the {len(train_labels)} train papers hold fewer than 2 subjects, so no "
            "classifier can be fit; raise evaluate.classification.max_train_papers (or null for all)."
        )
    clf = LogisticRegression(
        C=float(e.classification.C), max_iter=int(e.classification.max_iter), random_state=int(cfg.seed)
    )
    train_x, test_x = features.train, features.papers
    if is_sparse(train_x):
        # Columns no classifier-train row uses get a zero weight under L2 regularization whatever the solver does,
        # so dropping them gives the same model; it shrinks L-BFGS's problem (classes x columns) several times.
        used = np.flatnonzero(np.asarray((train_x != 0).sum(axis=0)).ravel())
        train_x, test_x = train_x.tocsc()[:, used].tocsr(), test_x.tocsc()[:, used].tocsr()
    clf.fit(train_x, train_labels)
    predicted = clf.predict(test_x)
    class_labels = sorted(set(labels.tolist()) | set(clf.classes_.tolist()))
    classification = {"num_train_papers": len(train_labels), **classification_metrics(labels, predicted, class_labels)}
    timing["classification_s"] = round(time.perf_counter() - t0, 3)

    t0 = time.perf_counter()
    clustering = clustering_metrics(features.papers, labels, n_init=int(e.clustering.n_init), seed=int(cfg.seed))
    timing["clustering_s"] = round(time.perf_counter() - t0, 3)
    return {
        "num_subjects": len(set(labels.tolist())),
        "subject_retrieval": subject_retrieval,
        "title_abstract": title_abstract,
        "fresh_retrieval": fresh_retrieval,
        "classification": classification,
        "clustering": clustering,
        "timing": timing,
    }


def evaluate_features(
    name: str,
    model: str,
    features: Features,
    data: EvalData,
    cfg: DictConfig,
    *,
    extra_config: dict[str, Any] | None = None,
    timing: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Score ``features`` and write the report folder ``${paths.reports_dir}/<name>`` (atomically).

    Returns ``{"dir", "metrics", "files"}``; this is the one path from vectors to a report, used by evaluate and by
    every baseline, so their metrics.json files share one schema.
    """
    from arxiv_embeddings.report import render_markdown, write_plots

    started = time.perf_counter()
    scores = score(features, data, cfg)
    metrics: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run": name,
        "kind": features.info.get("kind", "unknown"),
        "model": model,
        "text": str(cfg.evaluate.text),
        "split": "test",
        "data": data.info,
        "num_subjects": scores["num_subjects"],
        "subject_retrieval": scores["subject_retrieval"],
        "title_abstract": scores["title_abstract"],
        "fresh_retrieval": scores["fresh_retrieval"],  # None when evaluate.fresh is off or no fresh paper is left
        "classification": scores["classification"],
        "clustering": scores["clustering"],
        "features": features.info,
        "timing": {},
        "config": {"seed": cfg.seed, "evaluate": to_plain(cfg.evaluate), **(extra_config or {})},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out = report_dir(cfg, name)
    with atomic_dir(out) as tmp:
        plots = write_plots(tmp / PLOTS_DIR, metrics, features.papers, data.test_labels, cfg)
        metrics["timing"] = {**(timing or {}), **scores["timing"], "report_s": round(time.perf_counter() - started, 3)}
        write_json(tmp / METRICS_FILE, metrics)
        (tmp / REPORT_FILE).write_text(
            render_markdown(metrics, {k: p.relative_to(tmp) for k, p in plots.items()}), encoding="utf-8"
        )
    files = [out / METRICS_FILE, out / REPORT_FILE, *(out / p.relative_to(tmp) for p in plots.values())]
    return {"dir": out, "metrics": metrics, "files": files}


def summary_line(result: dict[str, Any]) -> str:
    """One line with the headline numbers of a report."""
    m = result["metrics"]
    sr, ta, cl, cu = m["subject_retrieval"], m["title_abstract"], m["classification"], m["clustering"]

    def g(d: dict[str, Any], k: str) -> str:
        return f"{d[k]:.3f}" if k in d else "-"

    fresh = m.get("fresh_retrieval")
    fresh_text = f", fresh papers P@10 {g(fresh, 'precision@10')}" if fresh else ""
    return (
        f"{m['run']} on {m['data']['test']['papers']:,} test papers: P@10 {g(sr, 'precision@10')}, "
        f"MRR@10 {g(sr, 'mrr@10')}, NDCG@10 {g(sr, 'ndcg@10')}, title->abstract R@1 {g(ta, 'recall@1')}, "
        f"accuracy {cl['accuracy']:.3f}, macro-F1 {cl['macro_f1']:.3f}, V-measure {cu['v_measure']:.3f}{fresh_text}"
    )


def evaluate_model(cfg: DictConfig, model: str, name: str, data: EvalData) -> dict[str, Any]:
    """Load, embed and score one sentence-transformers model; writes its report folder."""
    t0 = time.perf_counter()
    st, info = load_encoder(cfg, model)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    features = embed(st, data, cfg)
    features.info = info
    timing = {"load_s": round(load_s, 3), "encode_s": round(time.perf_counter() - t0, 3)}
    return evaluate_features(name, model, features, data, cfg, timing=timing)


# --------------------------------------------------------------------------------------------------- run
def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the stage: returns the report folder, the metrics and the files written."""
    validate(cfg)
    started = time.perf_counter()
    model_source(cfg)  # fail on a missing model before reading any data
    data = load_data(cfg)
    result = evaluate_model(cfg, str(cfg.evaluate.model), report_name(cfg), data)
    logger.success(f"evaluate: {summary_line(result)}; wrote {result['dir']} in {time.perf_counter() - started:.1f}s.")
    return result


def _inputs(cfg: DictConfig) -> list[Path]:
    processed = artifact_path(cfg.paths.processed_dir)
    model_dir = local_model_dir(cfg)
    return [
        *(model_files(model_dir) if model_dir is not None else []),
        processed / "test.parquet",
        processed / "train.parquet",
        *fresh_inputs(cfg),
    ]


def fresh_inputs(cfg: DictConfig) -> list[Path]:
    """The files the generalization check reads beyond the test and train splits (for the skip check)."""
    if cfg.evaluate.get("fresh") is None or not cfg.evaluate.fresh.enabled:
        return []
    return [fresh_path(cfg), artifact_path(cfg.paths.processed_dir) / "eval.parquet"]


SPEC = StageSpec(
    name="evaluate",
    run=run,
    inputs=_inputs,
    outputs=lambda cfg: report_files(report_dir(cfg)),
    stamp_dir=lambda cfg: report_dir(cfg),
    validate=validate,
    config_keys=("evaluate", "seed"),
)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from arxiv_embeddings.stage import cli_main

    cli_main(SPEC, cfg)


if __name__ == "__main__":
    main()

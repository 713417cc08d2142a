"""The evaluation's settings and names: the ``evaluate:`` section's checks, the report files (``metrics.json``,
``report.md``, ``plots/``) and where a report goes, and which model a run name, folder or Hub name means."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from arxiv_embeddings.backends.loading import PRECISIONS, fetch_model
from arxiv_embeddings.config import (
    check_int,
    is_int,
    require,
    require_in,
)
from arxiv_embeddings.io import artifact_path
from arxiv_embeddings.layout import ModelNotFoundError, as_path, final_dir, model_location, model_name
from arxiv_embeddings.texts import TEXT_FIELDS

# 2: fresh_retrieval, per-query figures, each model at its own max_seq_length; 3: title_abstract per-query figures,
# fresh_title_abstract, the fresh_natural_* sections and the graded (Spearman) sections.
SCHEMA_VERSION = 3
METRICS_FILE = "metrics.json"
#: The fresh papers of the generalization check shipped with the package (resources/, beside the sample).
FRESH_FILE = "arxiv_fresh.parquet"
#: The fresh papers in arXiv's own proportions shipped with the package (a plain random draw, none in the sample or
#: in FRESH_FILE).
FRESH_NATURAL_FILE = "arxiv_fresh_natural.parquet"
#: The two fresh slices: the ``evaluate.<key>`` of each, and how reports name it.
FRESH_SLICES = {
    "fresh": "fresh papers (balanced, 15 per subject)",
    "fresh_natural": "fresh papers (natural proportions)",
}
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
    "fresh_title_abstract",
    "fresh_natural_retrieval",
    "fresh_natural_title_abstract",
    "graded",
    "fresh_graded",
    "fresh_natural_graded",
    "classification",
    "clustering",
    "features",
    "timing",
    "config",
    "created_at",
)


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
    check_int(e.encode.get("max_batch_tokens"), "evaluate.encode.max_batch_tokens", optional=True)
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
    for key in FRESH_SLICES:
        fresh = e.get(key)
        if fresh is not None:
            require(
                isinstance(fresh.enabled, bool),
                f"evaluate.{key}.enabled",
                f"got {fresh.enabled!r}; expected true or false.",
            )
            check_int(fresh.min_per_subject, f"evaluate.{key}.min_per_subject", minimum=2)
    graded = e.get("graded")
    if graded is not None:
        require(
            isinstance(graded.enabled, bool),
            "evaluate.graded.enabled",
            f"got {graded.enabled!r}; expected true or false.",
        )
        check_int(graded.pairs, "evaluate.graded.pairs", minimum=10)
        frac = graded.same_subject_fraction
        require(
            isinstance(frac, (int, float)) and not isinstance(frac, bool) and 0 <= frac <= 1,
            "evaluate.graded.same_subject_fraction",
            f"got {frac!r}; expected a number in [0, 1], e.g. 0.5 (half the pairs of one primary subject).",
        )
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


# ------------------------------------------------------------------------------------------------ naming
def report_name(cfg: DictConfig, model: str | None = None) -> str:
    """Name of the report folder: ``evaluate.report_name``, else derived from the model value."""
    if model is None and cfg.evaluate.get("report_name"):
        return str(cfg.evaluate.report_name)
    value = str(model if model is not None else cfg.evaluate.model).rstrip("/")
    return model_name(value) or value


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
        return final_dir(cfg, str(model or cfg.evaluate.model))
    return location if location.exists() else None


def report_dir(cfg: DictConfig, name: str | None = None) -> Path:
    """``${paths.reports_dir}/<name>`` (default: :func:`report_name`); a bucket URL with ``paths=gcs``."""
    return artifact_path(cfg.paths.reports_dir) / (name or report_name(cfg))


def report_files(directory: Path) -> list[Path]:
    """The files a report folder holds (its stage outputs)."""
    return [directory / METRICS_FILE, directory / REPORT_FILE, directory / PLOTS_DIR]

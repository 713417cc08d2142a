"""Scoring :class:`~arxiv_embeddings.evaluation.features.Features`: subject retrieval, title -> abstract retrieval
(exact or through a FAISS index), the logistic-regression probe and k-means clustering, per-query figures, and
the report folder they are written to. Takes vectors, not a model, so every run (fine-tuned, zero-shot, TF-IDF,
hosted) goes through the same code."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
from omegaconf import DictConfig, OmegaConf

from arxiv_embeddings.config import (
    ConfigError,
    to_plain,
)
from arxiv_embeddings.evaluation.data import EvalData
from arxiv_embeddings.evaluation.features import Features, embed, load_encoder
from arxiv_embeddings.evaluation.settings import METRICS_FILE, PLOTS_DIR, REPORT_FILE, SCHEMA_VERSION, report_dir
from arxiv_embeddings.io import atomic_dir, write_json
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

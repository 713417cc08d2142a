"""Scoring :class:`~arxiv_embeddings.evaluation.features.Features`: subject retrieval, title -> abstract retrieval
(exact or through a FAISS index), the graded score (Spearman of cosines with subject overlaps), each on the test
papers and on both fresh slices, the logistic-regression probe and k-means clustering, per-query (and per-pair)
figures, and the report folder they are written to. Takes vectors, not a model, so every run (fine-tuned, zero-shot, TF-IDF,
hosted) goes through the same code."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
from omegaconf import DictConfig, OmegaConf

from arxiv_embeddings.backends.tasks import BASE, parse_tasks
from arxiv_embeddings.config import (
    ConfigError,
    to_plain,
)
from arxiv_embeddings.evaluation.data import EvalData, graded_pairs, labels_of
from arxiv_embeddings.evaluation.features import Features, embed, load_encoder
from arxiv_embeddings.evaluation.settings import (
    METRICS_FILE,
    PLOTS_DIR,
    REPORT_FILE,
    SCHEMA_VERSION,
    model_source,
    report_dir,
)
from arxiv_embeddings.io import atomic_dir, write_json
from arxiv_embeddings.metrics import (
    Matrix,
    RankingCutoffs,
    RetrievalResult,
    classification_metrics,
    clustering_metrics,
    is_sparse,
    label_retrieval,
    pair_cosines,
    paired_retrieval,
    ranking_metrics,
    spearman,
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


def title_abstract_retrieval(
    features: Features, cfg: DictConfig, device: str = "cpu", papers: pa.Table | None = None
) -> dict[str, Any]:
    """Title -> abstract retrieval: each test title against the test abstracts (one relevant: its own), searched in
    a FAISS index of the abstracts (``evaluate.title_abstract.index``); sparse TF-IDF rows are searched exactly.
    Returns the ``title_abstract`` section of metrics.json: recall@k, precision@k, MRR@k and how it searched, and
    with ``papers`` (the test papers, in the order of the vectors) each title's figures by arxiv id."""
    return paired_title_abstract(features.titles, features.abstracts, cfg, device, papers)


def paired_title_abstract(
    titles: Matrix, abstracts: Matrix, cfg: DictConfig, device: str = "cpu", papers: pa.Table | None = None
) -> dict[str, Any]:
    """Title -> abstract retrieval of any set of papers: title ``i`` against the abstracts (relevant: abstract
    ``i``), as :func:`title_abstract_retrieval` does it, with the per-query figures
    (:data:`TITLE_ABSTRACT_PER_QUERY_KEYS`, by arxiv id) when ``papers`` is given."""
    e = cfg.evaluate
    ks = tuple(e.title_abstract.recall_at)
    cutoffs = RankingCutoffs(
        precision_recall_at=ks, accuracy_at=(), mrr_at=tuple(e.title_abstract.mrr_at), ndcg_at=(), map_at=()
    )
    if is_sparse(abstracts) or is_sparse(titles):
        result = paired_retrieval(
            titles, abstracts, cutoffs=cutoffs, max_scores=int(e.retrieval.max_scores), device=device
        )
        info: dict[str, Any] = {"search": "exact (sparse dot products)"}
    else:
        dense_titles, dense_abstracts = (np.asarray(_dense(x), dtype=np.float32) for x in (titles, abstracts))
        index_type = str(e.title_abstract.get("index", "flat"))
        result, info = faiss_paired_retrieval(
            dense_titles, dense_abstracts, cutoffs, index_type, e.title_abstract.get("hnsw")
        )
    out = {"num_queries": result.num_queries, "corpus_size": result.corpus_size, **result.summary(), **info}
    if papers is not None:
        out["per_query"] = per_query(result, papers, TITLE_ABSTRACT_PER_QUERY_KEYS)
    return out


def _dense(x: Matrix) -> np.ndarray:
    import torch

    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


#: Per-query figures of subject retrieval kept in metrics.json (beside the arxiv ids), for the paired bootstrap of
#: ``inv compare``.
PER_QUERY_KEYS = ("precision@10", "mrr@10", "ndcg@10")
#: Per-query figures of title -> abstract retrieval kept in metrics.json (beside the arxiv ids).
TITLE_ABSTRACT_PER_QUERY_KEYS = ("recall@1", "mrr@10")


def per_query(
    result: RetrievalResult, papers: pa.Table, keys: tuple[str, ...] = PER_QUERY_KEYS
) -> dict[str, list[Any]]:
    """The scored queries' arxiv ids and their ``keys`` values (rounded to 6 digits)."""
    ids = np.asarray(papers.column("arxiv_id").to_pylist(), dtype=object)[result.query_index]
    out: dict[str, list[Any]] = {"arxiv_id": [str(i) for i in ids]}
    for key in keys:
        if key in result.per_query:
            out[key] = [round(float(v), 6) for v in result.per_query[key]]
    return out


def subject_section(vectors: Matrix, papers: pa.Table, cfg: DictConfig, device: str = "cpu") -> dict[str, Any]:
    """Subject retrieval among ``papers`` (each a query against the others, relevant = same primary subject): the
    ``fresh_retrieval`` / ``fresh_natural_retrieval`` section of metrics.json, with per-query figures."""
    labels = labels_of(papers)
    result = label_retrieval(
        vectors, labels, cutoffs=_cutoffs(cfg), max_scores=int(cfg.evaluate.retrieval.max_scores), device=device
    )
    return {
        "num_queries": result.num_queries,
        "corpus_size": result.corpus_size,
        "num_subjects": len(set(labels.tolist())),
        **result.summary(),
        "per_query": per_query(result, papers),
    }


def graded_section(vectors: Matrix, papers: pa.Table, cfg: DictConfig, stream: str) -> dict[str, Any] | None:
    """The graded score of ``papers``: the Spearman correlation of the cosine similarity of two papers with the
    Jaccard overlap of their subject lists, over the seeded pairs of :func:`~arxiv_embeddings.evaluation.data.
    graded_pairs` (``evaluate.graded``), with every pair's arxiv ids, overlap and cosine (for the paired bootstrap
    of ``inv compare``). None when ``evaluate.graded`` is off, the papers have no ``subjects`` column, or fewer than
    3 pairs can be drawn."""
    g = cfg.evaluate.get("graded")
    if g is None or not g.enabled or "subjects" not in papers.column_names:
        return None
    a, b, overlap = graded_pairs(papers, int(g.pairs), float(g.same_subject_fraction), int(cfg.seed), stream)
    if len(a) < 3:
        return None
    cosines = pair_cosines(vectors, a, b)
    ids = np.asarray(papers.column("arxiv_id").to_pylist(), dtype=object)
    labels = labels_of(papers)
    return {
        "num_pairs": len(a),
        "same_subject_pairs": int((labels[a] == labels[b]).sum()),
        "mean_overlap": float(overlap.mean()),
        "spearman": spearman(cosines, overlap),
        "per_pair": {
            "a": [str(i) for i in ids[a]],
            "b": [str(i) for i in ids[b]],
            "overlap": [round(float(v), 6) for v in overlap],
            "cosine": [round(float(v), 6) for v in cosines],
        },
    }


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
    title_abstract = title_abstract_retrieval(features, cfg, device, data.test)
    fresh: dict[str, Any] = {}
    for key in ("fresh", "fresh_natural"):
        table = getattr(data, key)
        papers, titles, abstracts = features.slice(key)
        if table is None or papers is None or titles is None or abstracts is None:
            fresh[f"{key}_retrieval"] = fresh[f"{key}_title_abstract"] = fresh[f"{key}_graded"] = None
            continue
        fresh[f"{key}_retrieval"] = subject_section(papers, table, cfg, device)
        fresh[f"{key}_title_abstract"] = paired_title_abstract(titles, abstracts, cfg, device, table)
        fresh[f"{key}_graded"] = graded_section(papers, table, cfg, key)
    graded = graded_section(features.papers, data.test, cfg, "test")
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
        "graded": graded,
        **fresh,
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
        # Title -> abstract retrieval among the fresh papers (their titles against their abstracts); None as above.
        "fresh_title_abstract": scores["fresh_title_abstract"],
        # The same two on the fresh papers in natural proportions (evaluate.fresh_natural); None when it is off.
        "fresh_natural_retrieval": scores["fresh_natural_retrieval"],
        "fresh_natural_title_abstract": scores["fresh_natural_title_abstract"],
        # Spearman of pair cosines with subject overlaps on the test papers and each fresh slice (evaluate.graded).
        "graded": scores["graded"],
        "fresh_graded": scores["fresh_graded"],
        "fresh_natural_graded": scores["fresh_natural_graded"],
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

    def g(d: dict[str, Any] | None, k: str) -> str:
        v = (d or {}).get(k)
        return f"{v:.3f}" if isinstance(v, (int, float)) else "-"

    extra = ""
    if m.get("graded"):
        extra += f", graded Spearman {g(m['graded'], 'spearman')}"
    for key, what in (("fresh", "fresh papers"), ("fresh_natural", "fresh papers in natural proportions")):
        if m.get(f"{key}_retrieval"):
            extra += f"; {what} P@10 {g(m[f'{key}_retrieval'], 'precision@10')}"
            if m.get(f"{key}_title_abstract"):
                extra += f", title->abstract R@1 {g(m[f'{key}_title_abstract'], 'recall@1')}"
            if m.get(f"{key}_graded"):
                extra += f", Spearman {g(m[f'{key}_graded'], 'spearman')}"
    return (
        f"{m['run']} on {m['data']['test']['papers']:,} test papers: P@10 {g(sr, 'precision@10')}, "
        f"MRR@10 {g(sr, 'mrr@10')}, NDCG@10 {g(sr, 'ndcg@10')}, title->abstract R@1 {g(ta, 'recall@1')}, "
        f"accuracy {cl['accuracy']:.3f}, macro-F1 {cl['macro_f1']:.3f}, V-measure {cu['v_measure']:.3f}{extra}"
    )


def evaluate_model(cfg: DictConfig, model: str, name: str, data: EvalData) -> dict[str, Any]:
    """Load, embed and score one sentence-transformers model; writes its report folder."""
    t0 = time.perf_counter()
    st, info = load_encoder(cfg, model)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tasks = parse_tasks(info["tasks"], info["model_path"])
    folder = model_source(cfg, model) if BASE in tasks.outputs else None  # where its base/ model is
    features = embed(st, data, cfg, tasks, folder)
    features.info = info
    timing = {"load_s": round(load_s, 3), "encode_s": round(time.perf_counter() - t0, 3)}
    return evaluate_features(name, model, features, data, cfg, timing=timing)

"""Retrieval, classification and clustering metrics over embeddings (dense arrays) or TF-IDF vectors (sparse).

Retrieval follows the definitions of sentence-transformers' ``InformationRetrievalEvaluator`` exactly
(precision@k divides by k, recall@k by the number of relevant documents, NDCG@k with binary gains and an ideal
ranking of ``min(#relevant, k)`` hits, MAP@k divided by ``min(k, #relevant)``, queries without any relevant
document left out), but scores the whole test set as blocked matrix products with a top-k per block, so memory
stays bounded for a corpus of millions of papers. Similarity is the dot product of the rows, which is the cosine
similarity for L2-normalized embeddings and for scikit-learn's (normalized) TF-IDF vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# A matrix of row vectors: a dense NumPy array, a torch tensor, or a SciPy sparse matrix (TF-IDF).
Matrix = Any

#: Default number of similarity scores held at once (query rows x corpus columns): 2**25 float32 = 128 MiB.
DEFAULT_MAX_SCORES = 1 << 25


@dataclass(frozen=True)
class RankingCutoffs:
    """The k values at which each retrieval metric is computed."""

    precision_recall_at: Sequence[int] = (1, 5, 10)
    accuracy_at: Sequence[int] = (1, 5, 10)
    mrr_at: Sequence[int] = (10,)
    ndcg_at: Sequence[int] = (10,)
    map_at: Sequence[int] = (100,)

    @property
    def max_k(self) -> int:
        """The largest cutoff: how many neighbours each query needs."""
        return max(
            [*self.precision_recall_at, *self.accuracy_at, *self.mrr_at, *self.ndcg_at, *self.map_at],
            default=1,
        )


# ----------------------------------------------------------------------------------------------- nearest
def is_sparse(x: Matrix) -> bool:
    """True for a SciPy sparse matrix."""
    return hasattr(x, "tocsr") and hasattr(x, "nnz")


def _num_rows(x: Matrix) -> int:
    return int(x.shape[0])


def _block_scores(queries: Matrix, corpus: Matrix, device: str) -> torch.Tensor:
    """Dot products between the rows of two blocks, as a dense float32 tensor (queries x corpus)."""
    if is_sparse(queries) or is_sparse(corpus):
        product = queries @ corpus.T
        dense = product.toarray() if is_sparse(product) else np.asarray(product)
        return torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32)).to(device)
    return queries @ corpus.T


def _as_tensor(x: Matrix, device: str) -> Matrix:
    if is_sparse(x):
        return x.tocsr()
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=torch.float32)
    return torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)


def top_k(
    queries: Matrix,
    corpus: Matrix,
    k: int,
    *,
    exclude: np.ndarray | None = None,
    max_scores: int = DEFAULT_MAX_SCORES,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` corpus rows with the largest dot product for each query row, best first.

    ``queries`` and ``corpus`` are dense (NumPy / torch) or SciPy sparse matrices with the same number of
    columns. ``exclude[i]`` is a corpus row never returned for query ``i`` (``-1`` for none), e.g.
    ``np.arange(n)`` when the queries are the corpus itself. At most ``max_scores`` scores are held at once:
    the corpus is split into blocks of at most ``max_scores`` rows and the queries into blocks that fill the
    budget, and the per-block top-k are merged.

    Returns ``(scores, indices)``, both ``(n_queries, k)``; when the corpus has fewer than ``k`` eligible rows,
    the missing places hold score ``-inf`` and index ``-1``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    n_q, n_c = _num_rows(queries), _num_rows(corpus)
    out_scores = np.full((n_q, k), -np.inf, dtype=np.float32)
    out_index = np.full((n_q, k), -1, dtype=np.int64)
    if n_q == 0 or n_c == 0:
        return out_scores, out_index
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=np.int64)
        if exclude.shape != (n_q,):
            raise ValueError(f"exclude must have one entry per query ({n_q}), got shape {exclude.shape}.")
    queries, corpus = _as_tensor(queries, device), _as_tensor(corpus, device)
    c_block = max(1, min(n_c, int(max_scores)))
    q_block = max(1, min(n_q, int(max_scores) // c_block))
    for q0 in range(0, n_q, q_block):
        q1 = min(n_q, q0 + q_block)
        best_s = torch.full((q1 - q0, 0), -torch.inf, device=device)
        best_i = torch.zeros((q1 - q0, 0), dtype=torch.long, device=device)
        for c0 in range(0, n_c, c_block):
            c1 = min(n_c, c0 + c_block)
            scores = _block_scores(queries[q0:q1], corpus[c0:c1], device).float()
            if exclude is not None:
                ex = torch.as_tensor(exclude[q0:q1], device=device)
                rows = torch.nonzero((ex >= c0) & (ex < c1)).flatten()
                scores[rows, ex[rows] - c0] = -torch.inf
            s, i = torch.topk(scores, min(k, c1 - c0), dim=1, largest=True, sorted=True)
            best_s, best_i = torch.cat([best_s, s], dim=1), torch.cat([best_i, i + c0], dim=1)
            if best_s.shape[1] > k:
                best_s, pos = torch.topk(best_s, k, dim=1, largest=True, sorted=True)
                best_i = torch.gather(best_i, 1, pos)
        width = best_s.shape[1]
        out_scores[q0:q1, :width] = best_s.cpu().numpy()
        out_index[q0:q1, :width] = best_i.cpu().numpy()
    out_index[np.isneginf(out_scores)] = -1
    return out_scores, out_index


# ----------------------------------------------------------------------------------------------- ranking
def _dcg_weights(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(k) + 2.0)


def ranking_metrics(hits: np.ndarray, num_relevant: np.ndarray, cutoffs: RankingCutoffs) -> dict[str, np.ndarray]:
    """Per-query retrieval metrics from the relevance of each ranked result.

    ``hits[i, r]`` is True when the result at rank ``r`` (0 = best) of query ``i`` is relevant; it has at least
    ``cutoffs.max_k`` columns (missing results count as not relevant). ``num_relevant[i]`` is the number of
    relevant documents of query ``i`` in the corpus, which must be positive. Keys look like ``precision@10``.
    """
    hits = np.asarray(hits, dtype=bool)
    n_rel = np.asarray(num_relevant, dtype=np.float64)
    if hits.shape[1] < cutoffs.max_k:
        hits = np.pad(hits, ((0, 0), (0, cutoffs.max_k - hits.shape[1])))
    if (n_rel <= 0).any():
        raise ValueError("Every query needs at least one relevant document; drop the others first.")
    cum = np.cumsum(hits, axis=1)  # number of hits within the first r+1 results
    out: dict[str, np.ndarray] = {}
    for k in cutoffs.accuracy_at:
        out[f"accuracy@{k}"] = (cum[:, k - 1] > 0).astype(np.float64)
    for k in cutoffs.precision_recall_at:
        out[f"precision@{k}"] = cum[:, k - 1] / k
        out[f"recall@{k}"] = cum[:, k - 1] / n_rel
    for k in cutoffs.mrr_at:
        top = hits[:, :k]
        first = top.argmax(axis=1)
        out[f"mrr@{k}"] = np.where(top.any(axis=1), 1.0 / (first + 1.0), 0.0)
    for k in cutoffs.ndcg_at:
        w = _dcg_weights(k)
        dcg = hits[:, :k] @ w
        ideal = np.concatenate([[0.0], np.cumsum(w)])[np.minimum(n_rel, k).astype(np.int64)]
        out[f"ndcg@{k}"] = dcg / ideal
    for k in cutoffs.map_at:
        precision_at_hit = np.where(hits[:, :k], cum[:, :k] / np.arange(1, k + 1), 0.0)
        out[f"map@{k}"] = precision_at_hit.sum(axis=1) / np.minimum(n_rel, k)
    return out


def mean_metrics(per_query: dict[str, np.ndarray]) -> dict[str, float]:
    """Average per-query metrics (0.0 when there are no queries)."""
    return {name: float(v.mean()) if len(v) else 0.0 for name, v in per_query.items()}


@dataclass
class RetrievalResult:
    """Per-query metrics of a retrieval run and which queries they belong to."""

    per_query: dict[str, np.ndarray]
    query_index: np.ndarray  # positions of the scored queries (queries without a relevant document are left out)
    corpus_size: int

    @property
    def num_queries(self) -> int:
        return len(self.query_index)

    def summary(self) -> dict[str, float]:
        return mean_metrics(self.per_query)

    def by_group(self, metric: str, groups: np.ndarray) -> dict[str, float]:
        """Mean of one metric per group of queries (``groups`` holds a label for every query, scored or not)."""
        values, labels = self.per_query[metric], np.asarray(groups)[self.query_index]
        return {str(g): float(values[labels == g].mean()) for g in sorted(set(labels.tolist()))}


def label_retrieval(
    query_vectors: Matrix,
    query_labels: Sequence[str] | np.ndarray,
    corpus_vectors: Matrix | None = None,
    corpus_labels: Sequence[str] | np.ndarray | None = None,
    *,
    cutoffs: RankingCutoffs = RankingCutoffs(),
    max_scores: int = DEFAULT_MAX_SCORES,
    device: str = "cpu",
) -> RetrievalResult:
    """Retrieval where a corpus item is relevant to a query when both have the same label.

    Without ``corpus_vectors`` the queries are searched against *the other* queries (each query's own row is
    excluded from its results and from its count of relevant documents).
    """
    q_labels = np.asarray(query_labels).astype(str)
    self_search = corpus_vectors is None
    if self_search:
        corpus_vectors, c_labels = query_vectors, q_labels
    else:
        if corpus_labels is None:
            raise ValueError("corpus_labels is required with corpus_vectors.")
        c_labels = np.asarray(corpus_labels).astype(str)
    names, c_codes = np.unique(c_labels, return_inverse=True)
    counts = np.bincount(c_codes, minlength=len(names))
    pos = np.searchsorted(names, q_labels)
    known = (pos < len(names)) & (names[np.minimum(pos, len(names) - 1)] == q_labels)
    n_rel = np.where(known, counts[np.minimum(pos, len(names) - 1)], 0) - (1 if self_search else 0)
    keep = np.flatnonzero(n_rel > 0)
    exclude = keep if self_search else None
    _, index = top_k(
        _rows(query_vectors, keep), corpus_vectors, cutoffs.max_k, exclude=exclude, max_scores=max_scores, device=device
    )
    hits = (index >= 0) & (c_labels[np.maximum(index, 0)] == q_labels[keep, None])
    return RetrievalResult(ranking_metrics(hits, n_rel[keep], cutoffs), keep, _num_rows(corpus_vectors))


def paired_retrieval(
    query_vectors: Matrix,
    corpus_vectors: Matrix,
    *,
    cutoffs: RankingCutoffs = RankingCutoffs(),
    max_scores: int = DEFAULT_MAX_SCORES,
    device: str = "cpu",
) -> RetrievalResult:
    """Retrieval where query ``i`` has exactly one relevant corpus item, row ``i`` (e.g. title -> its abstract)."""
    n = _num_rows(query_vectors)
    if _num_rows(corpus_vectors) < n:
        raise ValueError(
            f"paired_retrieval needs a corpus row per query: {n} queries, {_num_rows(corpus_vectors)} rows."
        )
    _, index = top_k(query_vectors, corpus_vectors, cutoffs.max_k, max_scores=max_scores, device=device)
    hits = index == np.arange(n)[:, None]
    return RetrievalResult(ranking_metrics(hits, np.ones(n), cutoffs), np.arange(n), _num_rows(corpus_vectors))


def _rows(x: Matrix, rows: np.ndarray) -> Matrix:
    if len(rows) == _num_rows(x):
        return x
    if isinstance(x, torch.Tensor):
        return x[torch.as_tensor(rows, device=x.device)]
    return x[rows]


# -------------------------------------------------------------------------------------------- classification
def classification_metrics(
    y_true: Sequence[str] | np.ndarray, y_pred: Sequence[str] | np.ndarray, labels: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1 (over ``labels``), a per-class report and the confusion matrix (rows = true labels)."""
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

    labels = list(labels)
    report = classification_report(y_true, y_pred, labels=labels, output_dict=True, zero_division=0)
    per_class = {
        name: {
            "precision": float(report[name]["precision"]),
            "recall": float(report[name]["recall"]),
            "f1": float(report[name]["f1-score"]),
            "support": int(report[name]["support"]),
        }
        for name in labels
    }
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": per_class,
        "labels": labels,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


# ------------------------------------------------------------------------------------------------ clustering
def clustering_metrics(
    vectors: Matrix, labels: Sequence[str] | np.ndarray, *, n_init: int = 10, seed: int = 0
) -> dict[str, Any]:
    """k-means with k = number of distinct labels: V-measure (with its homogeneity and completeness) of the clusters.

    The V-measure grows with the number of clusters even for a random clustering when there are few items per
    label; the adjusted mutual information (``ami``) is corrected for chance and is 0 for random clusters.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_mutual_info_score, homogeneity_completeness_v_measure

    truth = np.asarray(labels).astype(str)
    k = min(len(np.unique(truth)), _num_rows(vectors))
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.cpu().numpy()
    clusters = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(vectors)
    h, c, v = homogeneity_completeness_v_measure(truth, clusters)
    return {
        "k": int(k),
        "v_measure": float(v),
        "homogeneity": float(h),
        "completeness": float(c),
        "ami": float(adjusted_mutual_info_score(truth, clusters)),
    }


def paired_bootstrap(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Mean of ``a - b`` over paired queries (the same queries scored by two runs) with a percentile bootstrap
    confidence interval: the queries are resampled with replacement (``scipy.stats.bootstrap``). Returns the two
    means, the difference, the interval (``low``, ``high``) and the number of pairs."""
    from scipy.stats import bootstrap

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(
            f"paired_bootstrap needs two equal-length 1-D arrays of >= 2 values; got {x.shape}, {y.shape}."
        )
    diff = x - y
    if np.ptp(diff) == 0:  # every pair differs by the same amount: the interval is that point
        low = high = float(diff[0])
    else:
        ci = bootstrap(
            (diff,),
            np.mean,
            n_resamples=int(resamples),
            confidence_level=float(confidence),
            method="percentile",
            vectorized=True,
            rng=np.random.default_rng(seed),
        ).confidence_interval
        low, high = float(ci.low), float(ci.high)
    return {
        "a": float(x.mean()),
        "b": float(y.mean()),
        "diff": float(diff.mean()),
        "low": low,
        "high": high,
        "n": len(x),
    }


# ------------------------------------------------------------------------------------------------ graded
def pair_cosines(vectors: Matrix, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of rows ``a[k]`` and ``b[k]`` of ``vectors`` (dense, torch or SciPy sparse), as float64.
    For L2-normalized rows (embeddings, TF-IDF) this is their dot product; other rows are normalized here, and a
    zero row has cosine 0 with anything."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if is_sparse(vectors):
        x = vectors.tocsr()
        xa, xb = x[a], x[b]
        dots = np.asarray(xa.multiply(xb).sum(axis=1), dtype=np.float64).ravel()
        na = np.sqrt(np.asarray(xa.multiply(xa).sum(axis=1), dtype=np.float64).ravel())
        nb = np.sqrt(np.asarray(xb.multiply(xb).sum(axis=1), dtype=np.float64).ravel())
    else:
        if isinstance(vectors, torch.Tensor):
            vectors = vectors.detach().float().cpu().numpy()
        x = np.asarray(vectors, dtype=np.float64)
        xa, xb = x[a], x[b]
        dots = np.einsum("ij,ij->i", xa, xb)
        na, nb = np.linalg.norm(xa, axis=1), np.linalg.norm(xb, axis=1)
    norms = na * nb
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def _spearman_along(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman's rho of ``x`` and ``y`` along ``axis`` (ties get their average rank, as ``scipy.stats.spearmanr``):
    the Pearson correlation of the ranks. NaN where either is constant."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x, axis=axis), rankdata(y, axis=axis)
    rx = rx - rx.mean(axis=axis, keepdims=True)
    ry = ry - ry.mean(axis=axis, keepdims=True)
    num = (rx * ry).sum(axis=axis)
    den = np.sqrt((rx * rx).sum(axis=axis) * (ry * ry).sum(axis=axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float | None:
    """Spearman's rank correlation of two equal-length sequences (ties averaged); None when either is constant or
    there are fewer than 2 values."""
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(f"spearman needs two equal-length 1-D arrays; got {xs.shape}, {ys.shape}.")
    if len(xs) < 2:
        return None
    rho = float(_spearman_along(xs, ys))
    return None if np.isnan(rho) else rho


def paired_bootstrap_spearman(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    target: Sequence[float] | np.ndarray,
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Spearman's rho of ``a`` with ``target`` minus that of ``b`` with ``target``, over the same pairs (two runs'
    cosines of the same pairs of papers, ``target`` their graded relatedness), with a percentile bootstrap interval:
    the pairs are resampled with replacement and both correlations recomputed on each resample
    (``scipy.stats.bootstrap``, paired). Returns, like :func:`paired_bootstrap`, the two correlations (``a``,
    ``b``), the difference, the interval (``low``, ``high``) and the number of pairs."""
    from scipy.stats import bootstrap

    x, y, t = (np.asarray(v, dtype=np.float64) for v in (a, b, target))
    if not (x.shape == y.shape == t.shape) or x.ndim != 1 or len(x) < 3:
        raise ValueError(
            "paired_bootstrap_spearman needs three equal-length 1-D arrays of >= 3 values; "
            f"got {x.shape}, {y.shape}, {t.shape}."
        )
    rho_a, rho_b = spearman(x, t), spearman(y, t)
    if rho_a is None or rho_b is None:
        raise ValueError(
            "paired_bootstrap_spearman: a constant array has no rank correlation (the cosines of a run or the target "
            "are all equal); draw pairs whose relatedness differs (evaluate.graded.same_subject_fraction)."
        )

    def statistic(xs: np.ndarray, ys: np.ndarray, ts: np.ndarray, axis: int = -1) -> np.ndarray:
        return _spearman_along(xs, ts, axis) - _spearman_along(ys, ts, axis)

    diff = rho_a - rho_b
    if np.array_equal(x, y):  # the same cosines: every resample differs by 0
        low = high = float(diff)
    else:
        ci = bootstrap(
            (x, y, t),
            statistic,
            paired=True,
            n_resamples=int(resamples),
            confidence_level=float(confidence),
            method="percentile",
            vectorized=True,
            batch=200,
            rng=np.random.default_rng(seed),
        ).confidence_interval
        low, high = float(ci.low), float(ci.high)
    return {"a": rho_a, "b": rho_b, "diff": float(diff), "low": low, "high": high, "n": len(x)}

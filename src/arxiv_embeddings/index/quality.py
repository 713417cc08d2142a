"""How good an approximate index is: recall@k against exact search (ties with the k-th exact neighbour count as
found) and queries per second, measured on a seeded sample of the corpus's own vectors."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from arxiv_embeddings.index.format import Embeddings

if TYPE_CHECKING:
    import faiss


def exact_neighbours(embeddings: Embeddings, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner-product neighbours of ``queries`` over all shards: ``(scores, ids)``, best first."""
    nq = queries.shape[0]
    best_s = np.full((nq, 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((nq, 0), dtype=np.int64)
    for start, vectors in embeddings.iter_shards():
        for lo in range(0, vectors.shape[0], 65_536):
            block = np.asarray(vectors[lo : lo + 65_536])
            scores = queries @ block.T
            ids = np.broadcast_to(np.arange(start + lo, start + lo + block.shape[0]), scores.shape)
            all_s = np.concatenate([best_s, scores], axis=1)
            all_i = np.concatenate([best_i, ids], axis=1)
            keep = min(k, all_s.shape[1])
            top = np.argpartition(-all_s, keep - 1, axis=1)[:, :keep]
            best_s = np.take_along_axis(all_s, top, axis=1)
            best_i = np.take_along_axis(all_i, top, axis=1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_s, order, axis=1), np.take_along_axis(best_i, order, axis=1)


def recall_at_k(
    found: np.ndarray,
    exact: np.ndarray,
    rows: np.ndarray,
    k: int,
    *,
    found_scores: np.ndarray | None = None,
    exact_scores: np.ndarray | None = None,
    tie: float = 1e-5,
) -> float:
    """Mean share of each query's exact ``k`` nearest (its own row left out) that ``found`` also returns.

    With ``found_scores`` (the true inner products of the ``found`` ids) and ``exact_scores``, a found paper that
    ties the exact ``k``-th score (within ``tie``) counts too: duplicate or equally near papers may come back in
    any order, and neither order is a miss.
    """
    total = 0.0
    for q in range(found.shape[0]):
        keep = [j for j, i in enumerate(exact[q]) if i != rows[q] and i >= 0][:k]
        truth = {int(exact[q][j]) for j in keep}
        got = [(j, int(i)) for j, i in enumerate(found[q]) if i != rows[q] and i >= 0][:k]
        hits = sum(i in truth for _, i in got)
        if found_scores is not None and exact_scores is not None and keep:
            kth = float(exact_scores[q][keep[-1]])
            hits += sum(i not in truth and float(found_scores[q][j]) >= kth - tie for j, i in got)
        total += min(hits, len(truth)) / len(truth) if truth else 1.0
    return total / max(1, found.shape[0])


def true_scores(embeddings: Embeddings, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Exact inner products of each query with the vectors of its ``ids`` (``-inf`` where an id is ``-1``)."""
    flat = ids.reshape(-1)
    wanted = np.unique(flat[flat >= 0])
    vectors = embeddings.rows(wanted)
    out = np.full(ids.shape, -np.inf, dtype=np.float32)
    for q in range(ids.shape[0]):
        ok = ids[q] >= 0
        out[q, ok] = vectors[np.searchsorted(wanted, ids[q, ok])] @ queries[q]
    return out


def evaluate_index(index: faiss.Index, embeddings: Embeddings, queries: int, k: int, seed: int) -> dict[str, Any]:
    """recall@k against exact search for a seeded choice of ``queries`` papers, and queries/s.

    Each query is a paper's own vector; its own row is left out of both result lists, so the figure is that of
    a query held out of the index (and of search by id). A returned paper that ties the exact ``k``-th score
    counts as found (duplicates come back in any order).
    """
    n = embeddings.count
    nq = min(int(queries), n)
    if nq == 0 or n < 2:
        return {"queries": 0, "k": k}
    rng = np.random.default_rng([int(seed), 7])
    rows = np.sort(rng.choice(n, size=nq, replace=False))
    q = embeddings.rows(rows)
    exact_s, exact = exact_neighbours(embeddings, q, k + 1)
    t0 = time.perf_counter()
    _, found = index.search(q, min(k + 1, n))
    batch_s = time.perf_counter() - t0
    found_s = true_scores(embeddings, q, found)
    single = []
    for i in range(min(nq, 100)):
        t0 = time.perf_counter()
        index.search(q[i : i + 1], min(k + 1, n))
        single.append(time.perf_counter() - t0)
    return {
        "queries": nq,
        "k": k,
        f"recall_at_{k}": round(recall_at_k(found, exact, rows, k, found_scores=found_s, exact_scores=exact_s), 4),
        "queries_per_s": round(nq / max(batch_s, 1e-9), 1),
        "ms_per_query_single": round(float(np.median(single)) * 1000, 3),
    }

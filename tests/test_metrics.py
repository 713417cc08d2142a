"""Retrieval metrics against hand-computed values and against sentence-transformers' InformationRetrievalEvaluator."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
import torch

from arxiv_embeddings.metrics import (
    RankingCutoffs,
    classification_metrics,
    clustering_metrics,
    label_retrieval,
    paired_retrieval,
    ranking_metrics,
    top_k,
)

# Six unit vectors on a circle, two labels. Angles (degrees) chosen so that every ranking is known by hand, without
# ties: a0=0 a1=25 a2=90 (label A), b0=40 b1=170 b2=215 (label B). Similarity falls with the angle between two points.
ANGLES = np.array([0.0, 25.0, 90.0, 40.0, 170.0, 215.0])
LABELS = np.array(["A", "A", "A", "B", "B", "B"])


def _toy() -> np.ndarray:
    rad = np.deg2rad(ANGLES)
    return np.column_stack([np.cos(rad), np.sin(rad)]).astype(np.float32)


def _dcg(rels: list[int]) -> float:
    return sum(r / math.log2(i + 2) for i, r in enumerate(rels))


def test_top_k_excludes_self_and_orders_by_angle() -> None:
    x = _toy()
    scores, index = top_k(x, x, 5, exclude=np.arange(6))
    # Query a0 (0°): a1 is 25° away, b0 40°, a2 90°, b2 145°, b1 170°.
    assert index[0].tolist() == [1, 3, 2, 5, 4]
    # Query b1 (170°): b2 45°, a2 80°, b0 130°, a1 145°, a0 170°.
    assert index[4].tolist() == [5, 2, 3, 1, 0]
    assert scores[0, 0] == pytest.approx(math.cos(math.radians(25)), abs=1e-6)
    assert (index != np.arange(6)[:, None]).all()


def test_top_k_pads_when_the_corpus_is_small_and_blocks_agree() -> None:
    x = _toy()
    scores, index = top_k(x, x, 8, exclude=np.arange(6))
    assert (index[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
    # A budget of 2 scores at a time (1 query x 2 corpus rows per block) must give the same answer.
    s2, i2 = top_k(x, x, 5, exclude=np.arange(6), max_scores=2)
    s1, i1 = top_k(x, x, 5, exclude=np.arange(6))
    assert (i1 == i2).all() and np.allclose(s1, s2)


def test_top_k_sparse_matches_dense() -> None:
    rng = np.random.default_rng(0)
    dense = rng.random((30, 12)) * (rng.random((30, 12)) < 0.4)
    dense /= np.maximum(np.linalg.norm(dense, axis=1, keepdims=True), 1e-9)
    s_d, i_d = top_k(dense, dense, 5, exclude=np.arange(30))
    s_s, i_s = top_k(sp.csr_matrix(dense), sp.csr_matrix(dense), 5, exclude=np.arange(30), max_scores=40)
    assert np.allclose(s_d, s_s, atol=1e-6)
    assert (i_d[:, 0] == i_s[:, 0]).all()


def test_label_retrieval_hand_computed() -> None:
    cut = RankingCutoffs(precision_recall_at=(1, 2, 5), accuracy_at=(1,), mrr_at=(5,), ndcg_at=(5,), map_at=(5,))
    result = label_retrieval(_toy(), LABELS, cutoffs=cut)
    # Rankings (self excluded) and relevance (same label); each query has 2 relevant papers:
    #   a0: a1 b0 a2 b2 b1 -> 1 0 1 0 0      a1: b0 a0 a2 b1 b2 -> 0 1 1 0 0
    #   a2: b0 a1 b1 a0 b2 -> 0 1 0 1 0      b0: a1 a0 a2 b1 b2 -> 0 0 0 1 1
    #   b1: b2 a2 b0 a1 a0 -> 1 0 1 0 0      b2: b1 a2 a0 a1 b0 -> 1 0 0 0 1
    rels = [[1, 0, 1, 0, 0], [0, 1, 1, 0, 0], [0, 1, 0, 1, 0], [0, 0, 0, 1, 1], [1, 0, 1, 0, 0], [1, 0, 0, 0, 1]]
    pq_ = result.per_query
    assert result.num_queries == 6 and result.corpus_size == 6
    assert pq_["precision@1"].tolist() == [1, 0, 0, 0, 1, 1]
    assert pq_["accuracy@1"].tolist() == [1, 0, 0, 0, 1, 1]
    assert pq_["precision@2"].tolist() == [0.5, 0.5, 0.5, 0.0, 0.5, 0.5]
    assert pq_["recall@5"].tolist() == [1.0] * 6
    assert pq_["precision@5"].tolist() == [0.4] * 6  # divided by k, as in the evaluator
    assert pq_["mrr@5"].tolist() == pytest.approx([1, 1 / 2, 1 / 2, 1 / 4, 1, 1])
    ideal = _dcg([1, 1])
    assert pq_["ndcg@5"].tolist() == pytest.approx([_dcg(r) / ideal for r in rels])
    # AP@5: precision at each hit, summed, over min(5, 2 relevant).
    ap = [
        (1 + 2 / 3) / 2,
        (1 / 2 + 2 / 3) / 2,
        (1 / 2 + 2 / 4) / 2,
        (1 / 4 + 2 / 5) / 2,
        (1 + 2 / 3) / 2,
        (1 + 2 / 5) / 2,
    ]
    assert pq_["map@5"].tolist() == pytest.approx(ap)
    summary = result.summary()
    assert summary["precision@1"] == pytest.approx(3 / 6)
    assert summary["mrr@5"] == pytest.approx((3 + 1 / 2 + 1 / 2 + 1 / 4) / 6)
    assert summary["map@5"] == pytest.approx(sum(ap) / 6)
    assert result.by_group("precision@1", LABELS) == {"A": pytest.approx(1 / 3), "B": pytest.approx(2 / 3)}


def test_queries_without_a_relevant_document_are_left_out() -> None:
    labels = np.array(["A", "A", "A", "B", "B", "C"])  # C is alone: nothing to retrieve for b2
    result = label_retrieval(_toy(), labels, cutoffs=RankingCutoffs(precision_recall_at=(1,)))
    assert result.query_index.tolist() == [0, 1, 2, 3, 4]
    assert result.per_query["precision@1"].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]  # b1's nearest, b2, is C now
    assert result.per_query["recall@1"].tolist() == [0.5, 0.0, 0.0, 0.0, 0.0]  # a0 has 2 relevant, b1 only b0


def test_map_and_ndcg_cap_the_ideal_at_k() -> None:
    cut = RankingCutoffs(precision_recall_at=(2,), accuracy_at=(), mrr_at=(2,), ndcg_at=(2,), map_at=(2,))
    hits = np.array([[True, True, False], [False, True, False]])
    m = ranking_metrics(hits, np.array([5, 5]), cut)
    assert m["map@2"].tolist() == pytest.approx([1.0, (1 / 2) / 2])  # divided by min(k, #relevant) = 2
    assert m["ndcg@2"].tolist() == pytest.approx([1.0, (1 / math.log2(3)) / _dcg([1, 1])])
    assert m["recall@2"].tolist() == pytest.approx([2 / 5, 1 / 5])


def test_paired_retrieval_title_to_abstract() -> None:
    x = _toy()
    # Queries are rotated copies of the corpus: query i is nearest to corpus i, except query 1 (at 34°), which
    # is nearer to corpus 3 (40°) than to its own corpus 1 (25°).
    q_angles = ANGLES + np.array([1, 9, 0, 0, 0, 0])
    q = np.column_stack([np.cos(np.deg2rad(q_angles)), np.sin(np.deg2rad(q_angles))])
    result = paired_retrieval(q, x, cutoffs=RankingCutoffs(precision_recall_at=(1, 10), accuracy_at=(), mrr_at=(10,)))
    assert result.per_query["recall@1"].tolist() == [1, 0, 1, 1, 1, 1]
    assert result.per_query["mrr@10"].tolist() == pytest.approx([1, 1 / 2, 1, 1, 1, 1])


def test_classification_and_clustering_metrics() -> None:
    m = classification_metrics(["A", "A", "B", "B"], ["A", "B", "B", "B"], ["A", "B"])
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["confusion_matrix"] == [[1, 1], [0, 2]]
    assert m["per_class"]["A"]["recall"] == pytest.approx(0.5)
    points = np.array([[0, 0], [0, 0.1], [10, 10], [10, 10.1]])
    assert clustering_metrics(points, ["x", "x", "y", "y"], seed=0)["v_measure"] == pytest.approx(1.0)
    assert clustering_metrics(points, ["x", "y", "x", "y"], seed=0)["v_measure"] == pytest.approx(0.0)


# ---------------------------------------------------------------------------------- agreement with the evaluator
def _texts_and_labels(processed_root: Path, n: int) -> tuple[list[str], list[str], np.ndarray]:
    table = pq.read_table(processed_root / "data" / "processed" / "test.parquet").slice(0, n)
    return (
        table.column("title").to_pylist(),
        table.column("abstract").to_pylist(),
        np.array(table.column("primary_subject").to_pylist()),
    )


def _evaluator(queries: dict, corpus: dict, relevant: dict, cut: RankingCutoffs):
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.util import cos_sim

    return InformationRetrievalEvaluator(
        queries,
        corpus,
        relevant,
        precision_recall_at_k=list(cut.precision_recall_at),
        accuracy_at_k=list(cut.accuracy_at),
        mrr_at_k=list(cut.mrr_at),
        ndcg_at_k=list(cut.ndcg_at),
        map_at_k=list(cut.map_at),
        score_functions={"cosine": cos_sim},
        write_csv=False,
    )


def _flat(scores: dict) -> dict[str, float]:
    """{"precision@k": {10: v}} -> {"precision@10": v}."""
    return {name.replace("@k", f"@{k}"): float(v) for name, by_k in scores.items() for k, v in by_k.items()}


CUT = RankingCutoffs(
    precision_recall_at=(1, 3, 5, 10), accuracy_at=(1, 3, 10), mrr_at=(5, 10), ndcg_at=(3, 10), map_at=(10, 20)
)


@pytest.fixture(scope="module")
def minilm():
    """The real all-MiniLM-L6-v2 (installed package, no network), truncated to 64 tokens to stay fast on CPU.

    A random tiny model will not do here: its embeddings all lie within a few degrees of each other, so neighbours
    are separated by float rounding and two correct implementations may order them differently.
    """
    from arxiv_embeddings.backends.loading import load_model

    return load_model("sentence-transformers/all-MiniLM-L6-v2", device="cpu", max_seq_length=64)


def test_agrees_with_information_retrieval_evaluator(processed_root: Path, minilm) -> None:
    """Titles as queries against a corpus of abstracts, relevant = same primary subject (no self-exclusion)."""
    model = minilm
    titles, abstracts, labels = _texts_and_labels(processed_root, 40)
    queries = {f"q{i}": t for i, t in enumerate(titles)}
    corpus = {f"c{i}": a for i, a in enumerate(abstracts)}
    relevant = {f"q{i}": {f"c{j}" for j in range(len(labels)) if labels[j] == labels[i]} for i in range(len(labels))}
    c = model.encode(abstracts, normalize_embeddings=True)
    # The evaluator encodes the titles itself; the abstracts are passed pre-encoded (the slow part on CPU).
    scores = _evaluator(queries, corpus, relevant, CUT).compute_all_metrics(
        model, corpus_embeddings=torch.from_numpy(c)
    )
    expected = _flat(scores["cosine"])

    q = model.encode(titles, normalize_embeddings=True)
    ours = label_retrieval(q, labels, c, labels, cutoffs=CUT).summary()
    assert set(ours) == set(expected)
    for name, value in expected.items():
        assert ours[name] == pytest.approx(value, abs=1e-6), name


def test_self_excluded_search_agrees_with_the_evaluator_per_query(processed_root: Path, minilm) -> None:
    """Each paper against the *other* papers equals the evaluator run for that query with itself removed."""
    model = minilm
    titles, _, labels = _texts_and_labels(processed_root, 30)
    vectors = model.encode(titles, normalize_embeddings=True)
    result = label_retrieval(vectors, labels, cutoffs=CUT)
    assert result.num_queries > 10
    # One evaluator run per query (each forward pass costs ~0.5 s on a small CPU, so check the first 10 queries).
    for row, i in enumerate(result.query_index[:10]):
        others = [j for j in range(len(titles)) if j != i]
        rel = {f"c{j}" for j in others if labels[j] == labels[i]}
        evaluator = _evaluator({"q": titles[i]}, {f"c{j}": titles[j] for j in others}, {"q": rel}, CUT)
        # The evaluator encodes the query itself; the corpus (every other paper) is passed pre-encoded.
        expected = _flat(
            evaluator.compute_all_metrics(model, corpus_embeddings=torch.from_numpy(vectors[others]))["cosine"]
        )
        for name, value in expected.items():
            assert result.per_query[name][row] == pytest.approx(value, abs=1e-6), (i, name)


def test_paired_bootstrap_interval_covers_the_true_gain_and_is_paired() -> None:
    from arxiv_embeddings.metrics import paired_bootstrap

    rng = np.random.default_rng(3)
    base = rng.random(800)  # per-query figures vary a lot from query to query ...
    better = base + 0.03 + rng.normal(0, 0.02, 800)  # ... the gain on each query much less
    g = paired_bootstrap(better, base, resamples=2000, seed=1)
    assert g["n"] == 800 and g["a"] == pytest.approx(better.mean()) and g["b"] == pytest.approx(base.mean())
    assert g["low"] < 0.03 < g["high"] and g["low"] > 0.025 and g["high"] < 0.035
    # Pairing matters: shuffling the pairs keeps both means but widens the interval many times over.
    shuffled = paired_bootstrap(better, rng.permutation(base), resamples=2000, seed=1)
    assert shuffled["diff"] == pytest.approx(g["diff"])
    assert shuffled["high"] - shuffled["low"] > 5 * (g["high"] - g["low"])
    # Same seed, same interval; no difference at all, a zero-width interval at 0.
    assert paired_bootstrap(better, base, resamples=2000, seed=1) == g
    same = paired_bootstrap(base, base)
    assert same["diff"] == same["low"] == same["high"] == 0.0
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap(base, base[:-1])


# ------------------------------------------------------------------------------------------------- graded
def test_pair_cosines_of_dense_torch_and_sparse_rows_agree() -> None:
    from arxiv_embeddings.metrics import pair_cosines

    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 8)) * (rng.random((30, 8)) < 0.5)  # sparse-ish, not normalized
    x[4] = 0.0  # a zero row: cosine 0 with anything
    a, b = rng.integers(0, 30, 100), rng.integers(0, 30, 100)
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    expected = (unit[a] * unit[b]).sum(axis=1)
    for vectors in (x, torch.from_numpy(x.astype(np.float32)), sp.csr_matrix(x), sp.csr_matrix(unit)):
        assert np.allclose(pair_cosines(vectors, a, b), expected, atol=1e-6)
    assert (pair_cosines(x, np.full(5, 4), np.arange(5)) == 0).all()


def test_spearman_matches_scipy_with_ties() -> None:
    from scipy.stats import spearmanr

    from arxiv_embeddings.metrics import spearman

    rng = np.random.default_rng(1)
    overlap = rng.choice([0.0, 1 / 3, 0.5, 1.0], size=300)  # many ties, as subject overlaps have
    cosine = overlap + rng.normal(0, 0.4, 300)
    assert spearman(cosine, overlap) == pytest.approx(spearmanr(cosine, overlap).statistic, abs=1e-12)
    assert spearman(cosine, np.zeros(300)) is None  # a constant has no rank correlation
    assert spearman([0.3], [0.5]) is None


def test_paired_bootstrap_spearman_agrees_with_a_plain_loop_and_is_paired() -> None:
    from scipy.stats import spearmanr

    from arxiv_embeddings.metrics import paired_bootstrap_spearman

    rng = np.random.default_rng(2)
    n = 1000
    overlap = rng.choice([0.0, 0.25, 0.5, 1.0], size=n, p=[0.5, 0.15, 0.2, 0.15])
    shared = rng.normal(0, 0.3, n)  # what both runs get wrong about a pair: the pairing removes it
    better = overlap + shared + rng.normal(0, 0.05, n)
    worse = overlap + shared + rng.normal(0, 0.4, n)
    g = paired_bootstrap_spearman(better, worse, overlap, resamples=1000, seed=0)
    rho_better, rho_worse = spearmanr(better, overlap).statistic, spearmanr(worse, overlap).statistic
    assert g["a"] == pytest.approx(rho_better) and g["b"] == pytest.approx(rho_worse) and g["n"] == n
    assert g["diff"] == pytest.approx(rho_better - rho_worse) and 0 < g["low"] < g["diff"] < g["high"]

    # The same percentile interval from a plain loop: resample the pairs, recompute both correlations.
    loop_rng = np.random.default_rng(5)
    diffs = []
    for _ in range(1000):
        idx = loop_rng.integers(0, n, n)
        diffs.append(spearmanr(better[idx], overlap[idx]).statistic - spearmanr(worse[idx], overlap[idx]).statistic)
    low, high = np.percentile(diffs, [2.5, 97.5])
    assert g["low"] == pytest.approx(low, abs=0.01) and g["high"] == pytest.approx(high, abs=0.01)

    # Unpaired (each run's pairs resampled on their own) the interval is wider: the shared error no longer cancels.
    unpaired = []
    for _ in range(1000):
        i, j = loop_rng.integers(0, n, n), loop_rng.integers(0, n, n)
        unpaired.append(spearmanr(better[i], overlap[i]).statistic - spearmanr(worse[j], overlap[j]).statistic)
    u_low, u_high = np.percentile(unpaired, [2.5, 97.5])
    assert u_high - u_low > 1.3 * (g["high"] - g["low"])

    # Swapping the runs negates the gain; the same cosines give a zero-width interval at 0.
    swapped = paired_bootstrap_spearman(worse, better, overlap, resamples=1000, seed=0)
    assert swapped["diff"] == pytest.approx(-g["diff"]) and swapped["high"] == pytest.approx(-g["low"], abs=1e-9)
    same = paired_bootstrap_spearman(better, better, overlap)
    assert same["diff"] == same["low"] == same["high"] == 0.0
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap_spearman(better, worse[:-1], overlap)
    with pytest.raises(ValueError, match="constant"):
        paired_bootstrap_spearman(better, worse, np.zeros(n))

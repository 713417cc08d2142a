"""The train stage's evaluators, on the **eval** split during training and the test split after it: subject retrieval (same primary subject =
relevant) and title -> abstract retrieval, through sentence-transformers' InformationRetrievalEvaluator, built from
the papers the stage read."""

from __future__ import annotations

from typing import Any

import numpy as np

from arxiv_embeddings.papers import paper_text


def _sample(papers: Any, n_papers: int, rng: np.random.Generator) -> Any:
    """``n_papers`` rows of ``papers`` (a pandas frame) drawn with ``rng``, in their order."""
    return papers.iloc[np.sort(rng.permutation(len(papers))[: min(n_papers, len(papers))])].reset_index(drop=True)


def retrieval_evaluator(papers: Any, n_papers: int, text: str, name: str, *, seed: int, batch_size: int) -> Any:
    """Subject retrieval on ``n_papers`` of ``papers`` (a processed split as a pyarrow Table): a quarter are
    queries, the rest the corpus, relevant = same primary subject."""
    rng = np.random.default_rng(int(seed))
    papers = _sample(papers.to_pandas(), n_papers, rng)
    is_query = rng.random(len(papers)) < 0.25
    texts = paper_text(papers, text)
    corpus = {pid: texts[i] for i, pid in enumerate(papers.arxiv_id) if not is_query[i]}
    by_subject: dict[str, set[str]] = {}
    for i, (pid, subject) in enumerate(zip(papers.arxiv_id, papers.primary_subject, strict=True)):
        if not is_query[i]:
            by_subject.setdefault(subject, set()).add(pid)
    queries, relevant = {}, {}
    for i, (pid, subject) in enumerate(zip(papers.arxiv_id, papers.primary_subject, strict=True)):
        if is_query[i] and by_subject.get(subject):
            queries[pid] = texts[i]
            relevant[pid] = by_subject[subject]
    return _ir_evaluator(queries, corpus, relevant, name, batch_size)


def title_abstract_evaluator(papers: Any, n_papers: int, name: str, *, seed: int, batch_size: int) -> Any:
    """Title -> abstract retrieval on ``n_papers`` of ``papers`` (a processed split as a pyarrow Table): each title
    is a query, the papers' abstracts the corpus, relevant = its own abstract."""
    rng = np.random.default_rng(int(seed))
    papers = _sample(papers.select(["arxiv_id", "title", "abstract"]).to_pandas(), n_papers, rng)
    ids = papers.arxiv_id.astype(str).tolist()
    titles = dict(zip(ids, papers.title, strict=True))
    abstracts = dict(zip(ids, papers.abstract, strict=True))
    return _ir_evaluator(titles, abstracts, {pid: {pid} for pid in ids}, name, batch_size)


def _ir_evaluator(
    queries: dict[str, str], corpus: dict[str, str], relevant: dict[str, set[str]], name: str, batch_size: int
) -> Any:
    """The library's retrieval evaluator with the cut-offs every evaluation during training reports."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    return InformationRetrievalEvaluator(
        queries,
        corpus,
        relevant,
        name=name,
        precision_recall_at_k=[1, 5, 10],
        mrr_at_k=[10],
        ndcg_at_k=[10],
        map_at_k=[100],
        accuracy_at_k=[1, 10],
        batch_size=int(batch_size),
        show_progress_bar=False,
    )

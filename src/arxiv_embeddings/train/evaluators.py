"""The evaluators run during training, on the **eval** split only: subject retrieval (same primary subject =
relevant) and title -> abstract retrieval, through sentence-transformers' InformationRetrievalEvaluator."""

from __future__ import annotations

from typing import Any

import numpy as np
from omegaconf import DictConfig

from arxiv_embeddings.data import paper_text
from arxiv_embeddings.io import (
    read_parquet,
)


def retrieval_evaluator(cfg: DictConfig, split: str, n_papers: int, text: str, name: str) -> Any | None:
    """Subject retrieval on ``n_papers`` papers of ``split``: a quarter are queries, the rest the corpus,
    relevant = same primary subject. Returns None when ``n_papers`` is 0."""
    from arxiv_embeddings.layout import split_path

    if n_papers <= 0:
        return None
    papers = read_parquet(split_path(cfg, split)).to_pandas()
    rng = np.random.default_rng(int(cfg.seed))
    papers = papers.iloc[np.sort(rng.permutation(len(papers))[: min(n_papers, len(papers))])].reset_index(drop=True)
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
    return _ir_evaluator(cfg, queries, corpus, relevant, name)


def title_abstract_evaluator(cfg: DictConfig, split: str, n_papers: int, name: str) -> Any | None:
    """Title -> abstract retrieval on ``n_papers`` papers of ``split``: each title is a query, the papers'
    abstracts the corpus, relevant = its own abstract. Returns None when ``n_papers`` is 0."""
    from arxiv_embeddings.layout import split_path

    if n_papers <= 0:
        return None
    papers = read_parquet(split_path(cfg, split), columns=["arxiv_id", "title", "abstract"]).to_pandas()
    rng = np.random.default_rng(int(cfg.seed))
    papers = papers.iloc[np.sort(rng.permutation(len(papers))[: min(n_papers, len(papers))])]
    ids = papers.arxiv_id.astype(str).tolist()
    titles = dict(zip(ids, papers.title, strict=True))
    abstracts = dict(zip(ids, papers.abstract, strict=True))
    return _ir_evaluator(cfg, titles, abstracts, {pid: {pid} for pid in ids}, name)


def _ir_evaluator(
    cfg: DictConfig,
    queries: dict[str, str],
    corpus: dict[str, str],
    relevant: dict[str, set[str]],
    name: str,
) -> Any:
    """The library's retrieval evaluator with the cut-offs every evaluation during training reports."""
    from sentence_transformers.evaluation import InformationRetrievalEvaluator

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
        batch_size=int(cfg.trainer.per_device_eval_batch_size),
        show_progress_bar=False,
    )


def task_evaluator(cfg: DictConfig, pair_type: str, split: str, n_papers: int, text: str, name: str) -> Any | None:
    """The evaluator of what the pairs teach: title -> abstract retrieval for ``title_abstract`` pairs, subject
    retrieval for the others."""
    if pair_type == "title_abstract":
        return title_abstract_evaluator(cfg, split, n_papers, name)
    return retrieval_evaluator(cfg, split, n_papers, text, name)

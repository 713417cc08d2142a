"""The candidate pairs a labelling run scores (a seeded draw over the processed papers, same-subject pairs
mixed with others) and the :class:`Scorer` interface every teacher implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from arxiv_embeddings.config import ConfigError
from arxiv_embeddings.pair_format import SubjectIndex
from arxiv_embeddings.papers import paper_text_array


class ScoringError(RuntimeError):
    """Too many pairs could not be scored."""


# ------------------------------------------------------------------------------------------ candidate pairs
@dataclass
class Candidates:
    """Pairs of papers to score: rows ``left[k]`` and ``right[k]`` of ``papers`` (``arxiv_id, title, abstract,
    primary_subject, subjects``), and the text of a paper in the pairs written (``title | abstract |
    title_abstract``)."""

    papers: pa.Table
    left: np.ndarray
    right: np.ndarray
    text: str = "title_abstract"

    def __len__(self) -> int:
        return len(self.left)

    def text_values(self) -> pa.Array:
        values = pc.cast(paper_text_array(self.papers, self.text), pa.large_string())
        return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values

    def texts(self) -> tuple[list[str], list[str]]:
        """The two texts of every pair, as Python strings."""
        values = self.text_values()
        return values.take(pa.array(self.left)).to_pylist(), values.take(pa.array(self.right)).to_pylist()

    def column(self, name: str, side: str) -> list[Any]:
        rows = self.left if side == "a" else self.right
        return self.papers.column(name).take(pa.array(rows)).to_pylist()


def sample_candidates(
    papers: pa.Table, n: int, rng: np.random.Generator, same_subject_fraction: float, sampling: str, text: str
) -> Candidates:
    """``n`` pairs of two different papers: ``same_subject_fraction`` of them of one primary subject (subjects
    drawn per ``sampling``, as in the pairs stage), the rest at random, in shuffled order."""
    total = papers.num_rows
    if total < 2:
        raise ConfigError(f"Candidate pairs need at least 2 papers in the split; it has {total}.")
    n_same = round(n * same_subject_fraction)
    if n_same:
        sa, sb = SubjectIndex.from_table(papers).same_subject(n_same, rng, sampling)
    else:
        sa = sb = np.empty(0, np.int64)
    ra = rng.integers(0, total, n - n_same)
    rb = (ra + 1 + rng.integers(0, total - 1, n - n_same)) % total  # a different paper
    perm = rng.permutation(n)
    return Candidates(papers, np.r_[sa, ra][perm], np.r_[sb, rb][perm], text)


# -------------------------------------------------------------------------------------------------- scorers
class Scorer(Protocol):
    """Scores candidate pairs: one float in [0, 1] per pair, NaN for a pair it could not score."""

    stats: dict[str, int]

    @property
    def description(self) -> str: ...

    def score(self, candidates: Candidates) -> np.ndarray: ...

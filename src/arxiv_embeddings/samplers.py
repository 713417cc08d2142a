"""Batch samplers that keep same-subject papers out of each other's in-batch negatives.

With MultipleNegativesRankingLoss every other positive in a batch is a negative for an anchor. When pairs are built
from subject labels, two pairs of the same subject in one batch make a *false* negative: the loss pushes apart
papers it should pull together. :class:`SubjectBatchSampler` fills each batch with pairs of distinct primary subjects
while enough subjects have pairs left, and falls back to plain batches (no repeated paper) for the tail.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from sentence_transformers.base.sampler import DefaultBatchSampler


class SubjectBatchSampler(DefaultBatchSampler):
    """Batches with at most one pair per primary subject where possible.

    Args:
        dataset: the pair dataset (only its length is used).
        batch_size: pairs per batch.
        drop_last: drop a last, incomplete batch.
        subjects: primary subject of each pair (any hashable labels), aligned with ``dataset``.
        seed: base seed; epoch ``e`` uses ``seed + e``.
    """

    def __init__(
        self,
        dataset: object,
        batch_size: int,
        drop_last: bool,
        subjects: np.ndarray,
        valid_label_columns: list[str] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=seed,
        )
        n = len(dataset)  # type: ignore[arg-type]
        if len(subjects) != n:
            raise ValueError(
                f"SubjectBatchSampler got {len(subjects)} subject labels for {n} pairs; they must be aligned."
            )
        _, self.codes = np.unique(np.asarray(subjects), return_inverse=True)
        self.n = n
        self.base_seed = seed
        self.stats: dict[str, float] = {}

    def batches(self, epoch: int) -> list[np.ndarray]:
        """The batches of one epoch (deterministic for a seed and epoch)."""
        rng = np.random.default_rng(self.base_seed + epoch)
        bs = self.batch_size
        perm = rng.permutation(self.n)
        order = perm[np.argsort(self.codes[perm], kind="stable")]  # shuffled within each subject
        counts = np.bincount(self.codes)
        ptr = np.r_[0, np.cumsum(counts)[:-1]]
        remaining = counts.copy()
        distinct: list[np.ndarray] = []
        # Take one pair from each of the `bs` subjects with the most pairs left (random tie-break), so subjects run
        # out together and as many batches as possible hold `bs` distinct subjects.
        while np.count_nonzero(remaining) >= bs:
            score = remaining + rng.random(len(remaining))
            chosen = np.argpartition(-score, bs - 1)[:bs]
            distinct.append(order[ptr[chosen]])
            ptr[chosen] += 1
            remaining[chosen] -= 1
        tail = (
            np.concatenate([order[p : p + r] for p, r in zip(ptr, remaining, strict=True) if r])
            if remaining.any()
            else np.empty(0, int)
        )
        tail = tail[rng.permutation(len(tail))]
        mixed = [tail[i : i + bs] for i in range(0, len(tail), bs)]
        if self.drop_last and mixed and len(mixed[-1]) < bs:
            mixed.pop()
        batches = distinct + mixed
        self.stats = {
            "batches": len(batches),
            "subject_unique_batches": len(distinct),
            "subject_unique_fraction": len(distinct) / max(len(batches), 1),
        }
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches(self.epoch):
            yield batch.tolist()

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

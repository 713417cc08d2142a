"""Batch samplers that keep false negatives out of the in-batch negatives.

With MultipleNegativesRankingLoss (InfoNCE) every other positive in a batch is a negative for an anchor. When pairs
are built from subject labels, two pairs of the same subject in one batch make a *false* negative: the loss pushes
apart papers it should pull together. :class:`SubjectBatchSampler` fills each batch with pairs of distinct primary
subjects while enough subjects have pairs left, and falls back to plain batches (no repeated paper) for the tail.

:class:`CategoryBatchSampler` shapes batches by field instead (``train.batch_sampler=category``): part of each batch
from one arXiv archive (``cs`` for ``cs.LG`` and ``cs.CV``), the hard negatives of related fields, the rest from
other archives, the soft negatives of distant ones; and it never puts two pairs that share a paper, a text or (for
same-subject pairs) a subject in one batch, so it has no false negatives by construction, tail included.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from sentence_transformers.base.sampler import DefaultBatchSampler


def _balanced_rounds(remaining: np.ndarray, width: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Rounds of ``width`` distinct labels, each round the labels with the most units left (random tie-break), so
    that labels run out together; ``remaining`` (units left per label) is decremented in place. Stops when fewer
    than ``width`` labels have units left."""
    while np.count_nonzero(remaining) >= width:
        score = remaining + rng.random(len(remaining))
        chosen = np.argpartition(-score, width - 1)[:width]
        yield chosen
        remaining[chosen] -= 1


def _shuffled_with_tail(
    shaped: list[np.ndarray], tail: np.ndarray, batch_size: int, drop_last: bool, rng: np.random.Generator
) -> list[np.ndarray]:
    """The shaped batches plus the ``tail`` rows, shuffled and cut into plain batches (the last one dropped when
    short and ``drop_last``), in a random order."""
    tail = tail[rng.permutation(len(tail))]
    mixed = [tail[i : i + batch_size] for i in range(0, len(tail), batch_size)]
    if drop_last and mixed and len(mixed[-1]) < batch_size:
        mixed.pop()
    batches = shaped + mixed
    return [batches[i] for i in rng.permutation(len(batches))]


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
        for chosen in _balanced_rounds(remaining, bs, rng):
            distinct.append(order[ptr[chosen]])
            ptr[chosen] += 1
        tail = (
            np.concatenate([order[p : p + r] for p, r in zip(ptr, remaining, strict=True) if r])
            if remaining.any()
            else np.empty(0, int)
        )
        batches = _shuffled_with_tail(distinct, tail, bs, self.drop_last, rng)
        self.stats = {
            "batches": len(batches),
            "subject_unique_batches": len(distinct),
            "subject_unique_fraction": len(distinct) / max(len(batches), 1),
        }
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches(self.epoch):
            yield batch.tolist()

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)


def archive_of(subject: str) -> str:
    """The arXiv archive of a subject: the part before the dot (``cs`` for ``cs.LG``, ``hep-ph`` for ``hep-ph``)."""
    return subject.split(".", 1)[0]


def conflict_keys(*groups: Sequence[Sequence[object] | np.ndarray]) -> np.ndarray:
    """Integer keys per pair for :class:`CategoryBatchSampler`: two pairs that share a key never share a batch.

    Each group is a list of aligned columns (one value per pair) whose values are compared with each other, e.g.
    ``[a_id, b_id, neg_id]`` (the same paper in any role) or ``[anchor, positive, negative]`` (identical texts).
    Missing values (``None``) are no key. Groups get disjoint codes. Returns ``(n_pairs, n_columns)`` int64, -1 for
    none.
    """
    import pandas as pd

    blocks, offset = [], 0
    for columns in groups:
        if not columns:
            continue
        n = len(columns[0])
        if any(len(c) != n for c in columns):
            raise ValueError("conflict_keys: the columns of a group must have one value per pair.")
        flat = np.concatenate([np.asarray(c, dtype=object) for c in columns])
        codes, uniques = pd.factorize(flat, use_na_sentinel=True)
        codes = codes.astype(np.int64).reshape(len(columns), n).T
        blocks.append(np.where(codes >= 0, codes + offset, -1))
        offset += len(uniques)
    if not blocks:
        raise ValueError("conflict_keys needs at least one group of columns.")
    return np.concatenate(blocks, axis=1)


class CategoryBatchSampler(DefaultBatchSampler):
    """Batches mixing related and distant fields, with no false negatives by construction.

    A batch is built around a *focus* archive, chosen in proportion to the pairs it has left: about
    ``hard_fraction`` of the batch comes from that archive, one pair per subject in turn (``cs.LG``, ``cs.CV``,
    ``cs.CL``, ...), so every anchor meets negatives of neighbouring fields; the rest comes from the other archives,
    again one pair per subject in turn (the subjects with the most pairs left first), the soft negatives.

    Two pairs that share any of their keys (:func:`conflict_keys`: paper ids, texts, and with
    ``distinct_subjects`` the primary subject) are never put in the same batch, in the shaped batches as in the
    tail: when no more shaped batch can be filled, the pairs left are packed greedily into batches under the same
    rule (a pair that conflicts with every open batch opens a new one), so a few tail batches may be smaller.

    Args:
        dataset: the pair dataset (only its length is used).
        batch_size: pairs per batch.
        drop_last: drop batches smaller than ``batch_size`` (only tail batches can be).
        subjects: primary subject of each pair (of its anchor), aligned with ``dataset``.
        keys: ``(n_pairs, m)`` integer keys (-1 = none), e.g. from :func:`conflict_keys`.
        hard_fraction: share of a batch taken from its focus archive, in [0, 1].
        distinct_subjects: also treat the primary subject as a key (pairs whose positive is another paper of the
            anchor's subject, where two same-subject pairs would make false negatives).
        seed: base seed; epoch ``e`` uses ``seed + e``.
    """

    #: How far down a subject's queue to look for a pair that fits the batch.
    LOOKAHEAD = 8

    def __init__(
        self,
        dataset: object,
        batch_size: int,
        drop_last: bool,
        subjects: np.ndarray,
        keys: np.ndarray,
        hard_fraction: float = 0.5,
        distinct_subjects: bool = False,
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
        keys = np.asarray(keys, dtype=np.int64)
        if keys.ndim != 2 or len(keys) != n or len(subjects) != n:
            raise ValueError(
                f"CategoryBatchSampler got {len(subjects)} subjects and keys of shape {keys.shape} for {n} pairs; "
                "both must have one row per pair."
            )
        if not 0.0 <= float(hard_fraction) <= 1.0:
            raise ValueError(f"hard_fraction={hard_fraction} must be in [0, 1].")
        names, self.subject_codes = np.unique(np.asarray(subjects).astype(str), return_inverse=True)
        archives, arch_of_subject = np.unique([archive_of(s) for s in names], return_inverse=True)
        self.archive_names = archives.tolist()
        self.archive_subjects = [np.flatnonzero(arch_of_subject == a).tolist() for a in range(len(archives))]
        self.arch_of_subject = arch_of_subject
        if distinct_subjects:
            top = int(keys.max(initial=-1)) + 1
            keys = np.concatenate([keys, (self.subject_codes + top)[:, None]], axis=1)
        self.keys = [frozenset(int(k) for k in row if k >= 0) for row in keys]
        self.n = n
        self.hard = round(float(hard_fraction) * batch_size)
        self.base_seed = seed
        self.stats: dict[str, float] = {}
        self._cache: tuple[int, list[list[int]]] | None = None

    def _fill(
        self,
        batch: list[int],
        used: set[int],
        subjects: list[int],
        limit: int,
        queues: list[list[int]],
        rng: np.random.Generator,
    ) -> None:
        """Add pairs of ``subjects`` to ``batch`` in rounds of one pair per subject (fullest queues first) until it
        holds ``limit`` pairs or no subject has a pair that fits."""
        while len(batch) < limit:
            live = [s for s in subjects if queues[s]]
            if not live:
                return
            order = sorted(live, key=lambda s: -(len(queues[s]) + rng.random()))
            added = False
            for s in order:
                if len(batch) >= limit:
                    return
                queue = queues[s]
                for j in range(1, min(len(queue), self.LOOKAHEAD) + 1):
                    pair = queue[-j]
                    if used.isdisjoint(self.keys[pair]):
                        queue.pop(-j)
                        batch.append(pair)
                        used.update(self.keys[pair])
                        added = True
                        break
            if not added:
                return

    def batches(self, epoch: int) -> list[list[int]]:
        """The batches of one epoch (deterministic for a seed and epoch)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng(self.base_seed + epoch)
        bs = self.batch_size
        perm = rng.permutation(self.n)
        order = perm[np.argsort(self.subject_codes[perm], kind="stable")]
        bounds = np.r_[0, np.cumsum(np.bincount(self.subject_codes, minlength=len(self.arch_of_subject)))]
        queues = [order[lo:hi].tolist() for lo, hi in itertools.pairwise(bounds)]
        n_arch = len(self.archive_subjects)
        shaped: list[list[int]] = []
        hard_pairs = 0
        while True:
            left = np.array([sum(len(queues[s]) for s in subs) for subs in self.archive_subjects], dtype=np.float64)
            if left.sum() < bs:
                break
            focus = int(rng.choice(n_arch, p=left / left.sum()))
            batch: list[int] = []
            used: set[int] = set()
            self._fill(batch, used, self.archive_subjects[focus], self.hard, queues, rng)
            n_hard = len(batch)
            others = [s for a in range(n_arch) if a != focus for s in self.archive_subjects[a]]
            self._fill(batch, used, others, bs, queues, rng)
            self._fill(batch, used, self.archive_subjects[focus], bs, queues, rng)  # too few distant pairs left
            if len(batch) < bs:  # no full batch fits any more: put the pairs back for the tail
                for pair in batch:
                    queues[self.subject_codes[pair]].append(pair)
                break
            shaped.append(batch)
            hard_pairs += n_hard
        rest = np.array([p for q in queues for p in q], dtype=np.int64)
        tail = self._pack(rest[rng.permutation(len(rest))].tolist())
        if self.drop_last:
            tail = [b for b in tail if len(b) == bs]
        batches = shaped + tail
        self.stats = {
            "batches": len(batches),
            "shaped_batches": len(shaped),
            "tail_batches": len(tail),
            "hard_share": hard_pairs / max(len(shaped) * bs, 1),
        }
        out = [batches[i] for i in rng.permutation(len(batches))]
        self._cache = (epoch, out)
        return out

    def _pack(self, pairs: list[int]) -> list[list[int]]:
        """Greedy packing: each pair goes into the first open batch it has no key in common with."""
        open_batches: list[tuple[list[int], set[int]]] = []
        done: list[list[int]] = []
        for pair in pairs:
            keys = self.keys[pair]
            for i, (batch, used) in enumerate(open_batches):
                if used.isdisjoint(keys):
                    batch.append(pair)
                    used.update(keys)
                    if len(batch) == self.batch_size:
                        done.append(batch)
                        open_batches.pop(i)
                    break
            else:
                open_batches.append(([pair], set(keys)))
                if self.batch_size == 1:
                    done.append(open_batches.pop()[0])
        return done + [b for b, _ in open_batches]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches(self.epoch)

    def __len__(self) -> int:
        return len(self.batches(self.epoch))


class LabelGroupBatchSampler(DefaultBatchSampler):
    """Batches of ``batch_size / per_label`` distinct labels with ``per_label`` rows each, for the label-aware losses
    (every same-label row of a batch is a positive): each label's rows are shuffled and cut into groups of
    ``per_label``; each batch takes one group from each of the labels with the most groups left (random tie-break),
    so labels run out together. Rows of groups that cannot fill a batch, and each label's remainder, go into plain
    batches at the end.

    Args:
        dataset: the labelled dataset (only its length is used).
        batch_size: rows per batch, a multiple of ``per_label``.
        drop_last: drop a last, incomplete batch.
        labels: the label of each row, aligned with ``dataset``.
        per_label: rows of one label in a batch (>= 2).
        seed: base seed; epoch ``e`` uses ``seed + e``.
    """

    def __init__(
        self,
        dataset: object,
        batch_size: int,
        drop_last: bool,
        labels: np.ndarray,
        per_label: int = 4,
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
        if len(labels) != n:
            raise ValueError(f"LabelGroupBatchSampler got {len(labels)} labels for {n} rows; they must be aligned.")
        if per_label < 2 or batch_size % per_label:
            raise ValueError(
                f"train.papers_per_subject={per_label} must be >= 2 and divide the batch size {batch_size} "
                "(trainer.per_device_train_batch_size)."
            )
        _, self.codes = np.unique(np.asarray(labels), return_inverse=True)
        self.n, self.per_label, self.base_seed = n, int(per_label), seed
        self.stats: dict[str, float] = {}
        self._cached: tuple[int, list[np.ndarray]] | None = None

    def batches(self, epoch: int) -> list[np.ndarray]:
        """The batches of one epoch (deterministic for a seed and epoch)."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        rng = np.random.default_rng(self.base_seed + epoch)
        k, groups_per_batch = self.per_label, self.batch_size // self.per_label
        queues: list[list[np.ndarray]] = []
        leftover: list[np.ndarray] = []
        for code in range(int(self.codes.max()) + 1 if self.n else 0):
            rows = rng.permutation(np.flatnonzero(self.codes == code))
            cut = len(rows) - len(rows) % k
            queues.append([rows[i : i + k] for i in range(0, cut, k)])
            leftover.append(rows[cut:])
        remaining = np.array([len(q) for q in queues], dtype=np.int64)
        taken = np.zeros(len(queues), dtype=np.int64)
        grouped: list[np.ndarray] = []
        for chosen in _balanced_rounds(remaining, groups_per_batch, rng):
            grouped.append(np.concatenate([queues[c][taken[c]] for c in chosen]))
            taken[chosen] += 1
        rest = [q[t:] for q, t in zip(queues, taken, strict=True)]
        tail_parts = [g for q in rest for g in q] + [r for r in leftover if len(r)]
        tail = np.concatenate(tail_parts) if tail_parts else np.empty(0, dtype=np.int64)
        batches = _shuffled_with_tail(grouped, tail, self.batch_size, self.drop_last, rng)
        self.stats = {"batches": len(batches), "grouped_batches": len(grouped)}
        self._cached = (epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches(self.epoch):
            yield batch.tolist()

    def __len__(self) -> int:
        return len(self.batches(self.epoch))

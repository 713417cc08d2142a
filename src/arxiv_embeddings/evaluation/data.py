"""What is scored: the test split, a seeded sample of the train split for the probe, the two slices of shipped fresh
papers (balanced, and in arXiv's own proportions; none in the sample; any paper found in the processed splits dropped
and counted), and the seeded pairs of papers of the graded score."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from loguru import logger
from omegaconf import DictConfig

from arxiv_embeddings.config import (
    ConfigError,
)
from arxiv_embeddings.evaluation.settings import FRESH_FILE, FRESH_NATURAL_FILE, FRESH_SLICES
from arxiv_embeddings.io import artifact_path, exists, file_sha256, read_parquet
from arxiv_embeddings.layout import processed_split, split_path
from arxiv_embeddings.papers import sample_rows


@dataclass
class EvalData:
    """The test papers scored and the train papers that fit the probe."""

    test: pa.Table
    train: pa.Table  # the (capped) train papers used for the classifier
    train_path: Path  # the whole train split (the TF-IDF baseline fits its vocabulary on it)
    info: dict[str, Any] = field(default_factory=dict)
    fresh: pa.Table | None = None  # the generalization check's papers (evaluate.fresh), or None when it is off
    fresh_natural: pa.Table | None = None  # the fresh papers in natural proportions (evaluate.fresh_natural), or None

    @property
    def test_labels(self) -> np.ndarray:
        return labels_of(self.test)

    @property
    def train_labels(self) -> np.ndarray:
        return np.asarray(self.train.column("primary_subject").to_pylist(), dtype=object).astype(str)

    @property
    def fresh_labels(self) -> np.ndarray:
        if self.fresh is None:
            raise ValueError("No fresh papers were loaded (evaluate.fresh.enabled=false).")
        return labels_of(self.fresh)


def labels_of(table: pa.Table) -> np.ndarray:
    """The primary subject of each paper of ``table``, as a NumPy array of str."""
    return np.asarray(table.column("primary_subject").to_pylist(), dtype=object).astype(str)


COLUMNS = ["arxiv_id", "title", "abstract", "primary_subject"]
#: The columns read of the test split: COLUMNS and the subject lists (the graded score's overlaps).
TEST_COLUMNS = [*COLUMNS, "subjects"]


def read_sample(
    path: Path, cap: int | None, seed: int, stream: str, columns: list[str] | None = None
) -> tuple[pa.Table, int]:
    """A seeded random choice of at most ``cap`` papers of a processed split (its ``columns``, default
    :data:`COLUMNS`), and the split's size."""
    table = read_parquet(path, columns=columns or COLUMNS)
    rows = sample_rows(table.num_rows, cap, seed, stream)
    return (table.take(pa.array(rows)) if len(rows) < table.num_rows else table), table.num_rows


def load_data(cfg: DictConfig) -> EvalData:
    """Read the processed test split and the classifier's train papers, with the seeded caps applied."""
    test_path, train_path = split_path(cfg, "test"), split_path(cfg, "train")
    e = cfg.evaluate
    test, n_test = read_sample(test_path, e.max_test_papers, int(cfg.seed), "test", TEST_COLUMNS)
    train, n_train = read_sample(train_path, e.classification.max_train_papers, int(cfg.seed), "train")
    if test.num_rows < 2:
        raise ConfigError(f"The test split at {test_path} has {test.num_rows} paper(s); evaluation needs at least 2.")
    info = {
        "test": {
            "path": str(test_path),
            "sha256": file_sha256(test_path),
            "papers": test.num_rows,
            "split_papers": n_test,
        },
        "train": {
            "path": str(train_path),
            "sha256": file_sha256(train_path),
            "papers": train.num_rows,
            "split_papers": n_train,
        },
    }
    slices: dict[str, pa.Table | None] = {}
    for key in FRESH_SLICES:
        slices[key] = None
        if _enabled(cfg, key):
            slices[key], info[key] = load_fresh(cfg, key)
    return EvalData(
        test=test,
        train=train,
        train_path=train_path,
        info=info,
        fresh=slices["fresh"],
        fresh_natural=slices["fresh_natural"],
    )


def _enabled(cfg: DictConfig, key: str) -> bool:
    node = cfg.evaluate.get(key)
    return node is not None and bool(node.enabled)


def _slice_key(key: str) -> str:
    if key not in FRESH_SLICES:
        raise ValueError(f"No fresh slice {key!r}; the slices are: {', '.join(FRESH_SLICES)}.")
    return key


def fresh_path(cfg: DictConfig, key: str = "fresh") -> Path:
    """The papers of a fresh slice (``key``: ``fresh`` or ``fresh_natural``): ``evaluate.<key>.path``, or the file
    shipped with the package."""
    from arxiv_embeddings.papers import SAMPLE_PATH

    path = cfg.evaluate[_slice_key(key)].path
    shipped = {"fresh": FRESH_FILE, "fresh_natural": FRESH_NATURAL_FILE}[key]
    return artifact_path(path) if path else SAMPLE_PATH.parent / shipped


def _read_papers(path: Path, key: str) -> pa.Table:
    """The papers of a fresh file: :data:`COLUMNS` as strings, and ``subjects`` (a list of strings) when it has one."""
    table = read_parquet(path)
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise ConfigError(
            f"evaluate.{key}.path: {path} has no column(s) {', '.join(missing)} (it has: "
            f"{', '.join(table.column_names)}); give a parquet in the data schema ({', '.join(COLUMNS)}, subjects)."
        )
    table = table.select([*COLUMNS, *(["subjects"] if "subjects" in table.column_names else [])])
    return table.cast(
        pa.schema([(f.name, pa.list_(pa.string()) if f.name == "subjects" else pa.string()) for f in table.schema])
    )


def load_fresh(cfg: DictConfig, key: str = "fresh") -> tuple[pa.Table, dict[str, Any]]:
    """The papers of a fresh slice (``key``: ``fresh``, the balanced one, or ``fresh_natural``), without any paper
    that a processed split holds (same arxiv_id or abstract), and without subjects left with fewer than
    ``evaluate.<key>.min_per_subject`` papers. Returns them and what was dropped."""
    import pyarrow.compute as pc

    node = cfg.evaluate[_slice_key(key)]
    path = fresh_path(cfg, key)
    if not exists(path):
        raise FileNotFoundError(
            f"evaluate.{key}.path={node.path}: no file at {path}; give a parquet of papers in the data schema, null "
            f"for the papers shipped with the package, or evaluate.{key}.enabled=false."
        )
    table = _read_papers(path, key)
    seen = pa.array(np.zeros(table.num_rows, dtype=bool))
    for split in ("train", "eval", "test"):  # one split at a time: at most one split's abstracts in memory
        part = read_parquet(split_path(cfg, split), columns=["arxiv_id", "abstract"])
        for column in ("arxiv_id", "abstract"):
            values = part.column(column).cast(pa.string()).combine_chunks()
            seen = pc.or_(seen, pc.is_in(table.column(column), value_set=values))
    unseen = table.filter(pc.invert(seen))
    counts = pc.value_counts(unseen.column("primary_subject"))
    minimum = int(node.min_per_subject)
    kept_subjects = [c["values"].as_py() for c in counts if c["counts"].as_py() >= minimum]
    fresh = unseen.filter(pc.is_in(unseen.column("primary_subject"), value_set=pa.array(kept_subjects, pa.string())))
    info = {
        "path": str(path),
        "sha256": file_sha256(path),
        "papers": fresh.num_rows,
        "file_papers": table.num_rows,
        "dropped_seen": table.num_rows - unseen.num_rows,
        "dropped_small_subjects": unseen.num_rows - fresh.num_rows,
        "subjects": len(kept_subjects),
        "has_subjects": "subjects" in fresh.column_names,
    }
    what = FRESH_SLICES[key]
    if fresh.num_rows < 2:
        logger.warning(
            f"Checks on the {what} skipped: {info['dropped_seen']:,} of the {table.num_rows:,} papers in {path} are "
            f"in the processed splits (the model may have trained on them) and {info['dropped_small_subjects']:,} in "
            f"subjects with fewer than {minimum} papers, so too few are left; give other papers with "
            f"evaluate.{key}.path."
        )
    else:
        logger.info(
            f"{what[0].upper()}{what[1:]}: {fresh.num_rows:,} in {len(kept_subjects)} subjects from {path} "
            f"({info['dropped_seen']:,} dropped: in the processed splits; {info['dropped_small_subjects']:,}: in "
            f"subjects with fewer than {minimum})."
        )
    return fresh, info


def fresh_inputs(cfg: DictConfig) -> list[Path]:
    """The files the checks on fresh papers read beyond the test and train splits (for the skip check)."""
    paths = [fresh_path(cfg, key) for key in FRESH_SLICES if _enabled(cfg, key)]
    return [*paths, processed_split(cfg, "eval")] if paths else []


# ---------------------------------------------------------------------------------------------- graded pairs
#: Seeded streams of the graded score's pairs, one per set of papers, so that one never shifts another.
GRADED_STREAMS = {"test": 0, "fresh": 1, "fresh_natural": 2}


def graded_pairs(
    table: pa.Table, pairs: int, same_subject_fraction: float, seed: int, stream: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A seeded set of distinct pairs ``(a[k], b[k])`` (``a[k] < b[k]``, row positions of ``table``) and the Jaccard
    overlap of their ``subjects`` lists: ``round(pairs * same_subject_fraction)`` of them two papers of one primary
    subject (a random paper of a subject with at least two, and another of its subject), then the rest two random
    papers. Fewer when the papers have fewer distinct pairs of a kind (a handful of papers per subject)."""
    from arxiv_embeddings.pair_format import jaccard

    n = table.num_rows
    empty = np.zeros(0, np.int64)
    if n < 2:
        return empty, empty, np.zeros(0, np.float32)
    rng = np.random.default_rng([int(seed), 1000 + GRADED_STREAMS[stream]])
    _, codes, counts = np.unique(labels_of(table), return_inverse=True, return_counts=True)
    eligible = np.flatnonzero(counts[codes] >= 2)
    n_same = round(pairs * same_subject_fraction) if len(eligible) else 0
    order = np.argsort(codes, kind="stable")
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    rank_of = np.empty(n, np.int64)
    rank_of[order] = np.arange(n) - np.repeat(starts, counts)

    def same_subject(size: int) -> tuple[np.ndarray, np.ndarray]:
        """A random eligible paper, then a random other paper of its subject."""
        first = rng.choice(eligible, size=size)
        c = codes[first]
        offset = rng.integers(0, counts[c] - 1)
        offset = offset + (offset >= rank_of[first])  # skip the paper itself
        return first, order[starts[c] + offset]

    def random_pairs(size: int) -> tuple[np.ndarray, np.ndarray]:
        """Two distinct random papers."""
        x = rng.integers(0, n, size=size)
        return x, (x + rng.integers(1, n, size=size)) % n

    chosen: list[np.ndarray] = []
    taken = np.zeros(0, np.int64)
    for draw, wanted in ((same_subject, n_same), (random_pairs, pairs - n_same)):
        if wanted <= 0:
            continue
        x, y = draw(4 * wanted + 16)  # oversampled: duplicates are dropped, the first distinct ones kept
        key = np.minimum(x, y) * n + np.maximum(x, y)
        _, first = np.unique(key, return_index=True)
        fresh = np.sort(first)
        fresh = fresh[~np.isin(key[fresh], taken)][:wanted]
        chosen.append(key[fresh])
        taken = np.concatenate([taken, key[fresh]])
    keys = np.concatenate(chosen) if chosen else empty
    a, b = keys // n, keys % n
    return a, b, jaccard(table.column("subjects"), a, b)

"""What is scored: the test split, a seeded sample of the train split for the probe, and the shipped fresh papers
(none in the sample; any paper found in the processed splits dropped and counted)."""

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
from arxiv_embeddings.data import sample_rows
from arxiv_embeddings.evaluation.settings import FRESH_FILE
from arxiv_embeddings.io import artifact_path, exists, file_sha256, read_parquet
from arxiv_embeddings.layout import split_path


@dataclass
class EvalData:
    """The test papers scored and the train papers that fit the probe."""

    test: pa.Table
    train: pa.Table  # the (capped) train papers used for the classifier
    train_path: Path  # the whole train split (the TF-IDF baseline fits its vocabulary on it)
    info: dict[str, Any] = field(default_factory=dict)
    fresh: pa.Table | None = None  # the generalization check's papers (evaluate.fresh), or None when it is off

    @property
    def test_labels(self) -> np.ndarray:
        return np.asarray(self.test.column("primary_subject").to_pylist(), dtype=object).astype(str)

    @property
    def train_labels(self) -> np.ndarray:
        return np.asarray(self.train.column("primary_subject").to_pylist(), dtype=object).astype(str)

    @property
    def fresh_labels(self) -> np.ndarray:
        if self.fresh is None:
            raise ValueError("No fresh papers were loaded (evaluate.fresh.enabled=false).")
        return np.asarray(self.fresh.column("primary_subject").to_pylist(), dtype=object).astype(str)


COLUMNS = ["arxiv_id", "title", "abstract", "primary_subject"]


def read_sample(path: Path, cap: int | None, seed: int, stream: str) -> tuple[pa.Table, int]:
    """A seeded random choice of at most ``cap`` papers of a processed split, and the split's size."""
    table = read_parquet(path, columns=COLUMNS)
    rows = sample_rows(table.num_rows, cap, seed, stream)
    return (table.take(pa.array(rows)) if len(rows) < table.num_rows else table), table.num_rows


def load_data(cfg: DictConfig) -> EvalData:
    """Read the processed test split and the classifier's train papers, with the seeded caps applied."""
    test_path, train_path = split_path(cfg, "test"), split_path(cfg, "train")
    e = cfg.evaluate
    test, n_test = read_sample(test_path, e.max_test_papers, int(cfg.seed), "test")
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
    fresh = None
    if e.get("fresh") is not None and e.fresh.enabled:
        fresh, info["fresh"] = load_fresh(cfg)
    return EvalData(test=test, train=train, train_path=train_path, info=info, fresh=fresh)


def fresh_path(cfg: DictConfig) -> Path:
    """The fresh papers of the generalization check: ``evaluate.fresh.path``, or the file shipped with the package."""
    from arxiv_embeddings.data import SAMPLE_PATH

    path = cfg.evaluate.fresh.path
    return artifact_path(path) if path else SAMPLE_PATH.parent / FRESH_FILE


def load_fresh(cfg: DictConfig) -> tuple[pa.Table, dict[str, Any]]:
    """The fresh papers, without any paper that a processed split holds (same arxiv_id or abstract), and without
    subjects left with fewer than ``evaluate.fresh.min_per_subject`` papers. Returns them and what was dropped."""
    import pyarrow.compute as pc

    path = fresh_path(cfg)
    if not exists(path):
        raise FileNotFoundError(
            f"evaluate.fresh.path={cfg.evaluate.fresh.path}: no file at {path}; give a parquet of papers in the data "
            "schema, null for the fresh papers shipped with the package, or evaluate.fresh.enabled=false."
        )
    table = read_parquet(path, columns=COLUMNS)
    table = table.cast(pa.schema([(f.name, pa.string()) for f in table.schema]))
    seen = pa.array(np.zeros(table.num_rows, dtype=bool))
    for split in ("train", "eval", "test"):  # one split at a time: at most one split's abstracts in memory
        part = read_parquet(split_path(cfg, split), columns=["arxiv_id", "abstract"])
        for column in ("arxiv_id", "abstract"):
            values = part.column(column).cast(pa.string()).combine_chunks()
            seen = pc.or_(seen, pc.is_in(table.column(column), value_set=values))
    unseen = table.filter(pc.invert(seen))
    counts = pc.value_counts(unseen.column("primary_subject"))
    minimum = int(cfg.evaluate.fresh.min_per_subject)
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
    }
    if fresh.num_rows < 2:
        logger.warning(
            f"Generalization check skipped: {info['dropped_seen']:,} of the {table.num_rows:,} fresh papers in {path} "
            "are in the processed splits (the model may have trained on them) and too few are left; give other "
            "papers with evaluate.fresh.path."
        )
    else:
        logger.info(
            f"Fresh papers: {fresh.num_rows:,} in {len(kept_subjects)} subjects from {path} "
            f"({info['dropped_seen']:,} dropped: in the processed splits)."
        )
    return fresh, info


def fresh_inputs(cfg: DictConfig) -> list[Path]:
    """The files the generalization check reads beyond the test and train splits (for the skip check)."""
    if cfg.evaluate.get("fresh") is None or not cfg.evaluate.fresh.enabled:
        return []
    return [fresh_path(cfg), artifact_path(cfg.paths.processed_dir) / "eval.parquet"]

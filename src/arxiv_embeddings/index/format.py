"""The index folder on disk: its file names and schema version, where ``${paths.indexes_dir}/<name>`` is, the
errors loading can raise, the check that the model asked for is the one that built the index, and the
embedding shards (:class:`Embeddings`) an index is built from."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from arxiv_embeddings.backends.loading import model_fingerprint, model_folder
from arxiv_embeddings.io import artifact_path
from arxiv_embeddings.layout import model_name

SCHEMA_VERSION = 1
INDEX_FILE = "index.faiss"
#: With a model whose tasks.json serves search with another output than its subject one (a subject head over an
#: encoder): the index of the papers' search vectors, that free-text queries are searched in.
SEARCH_INDEX_FILE = "search.faiss"
METADATA_FILE = "metadata.parquet"
METADATA_COLUMNS = ("arxiv_id", "title", "primary_subject")


class IndexNotFoundError(FileNotFoundError):
    """No index at the given folder."""


class IndexCorruptedError(ValueError):
    """An index file is missing, unreadable, or not the one its manifest records."""


class ModelMismatchError(ValueError):
    """The index was built with another model, or with vectors of another dimension."""


class UnknownPaperError(KeyError):
    """The arXiv id is not in the index."""

    def __init__(self, arxiv_id: str, index_path: Path | str | None = None) -> None:
        super().__init__(arxiv_id)
        self.arxiv_id = arxiv_id
        where = f" at {index_path}" if index_path else ""
        self.message = (
            f"arXiv id {arxiv_id!r} is not in the index{where}; check the id (without a version suffix, e.g. "
            "2401.01234), or rebuild the index over a corpus that holds it ('uv run inv index')."
        )

    def __str__(self) -> str:
        return self.message


def index_name(cfg: DictConfig) -> str:
    """``index.name``, else derived from ``index.model``: the run name for ``models/<run>/final`` or a run name,
    the last part of a folder or Hub name."""
    if cfg.index.get("name"):
        return str(cfg.index.name)
    return model_name(str(cfg.index.model)) or str(cfg.index.model)


def index_dir(cfg: DictConfig) -> Path:
    """Where the index of this config lives: ``${paths.indexes_dir}/<index name>`` (a bucket URL with ``paths=gcs``)."""
    return artifact_path(cfg.paths.indexes_dir) / index_name(cfg)


def check_model(manifest: dict[str, Any], expected_model: str, path: Path | str = "") -> None:
    """Fail with :class:`ModelMismatchError` unless ``expected_model`` is the model the index was built with."""
    built = manifest.get("model")
    folder = model_folder(str(expected_model))
    if folder is not None:
        same = model_fingerprint(folder) == manifest.get("model_fingerprint")
        got = f"{expected_model!r} (folder {folder})"
    else:
        same = str(expected_model) in {built, manifest.get("model_location")}
        got = repr(expected_model)
    if not same:
        raise ModelMismatchError(
            f"The index at {path} was built with model {built!r} (folder {manifest.get('model_location')}), not "
            f"with {got}: their weights differ, so their vectors are not comparable. Use that model, or rebuild the "
            f"index with 'uv run inv index --overrides index.model={expected_model}'."
        )


@dataclass
class Embeddings:
    """The corpus vectors as shard files (``shard-00000.npy``, ...) in ``folder``, read back memory-mapped."""

    folder: Path
    shards: list[Path]
    count: int
    dimension: int
    reused: int = 0
    #: Processes that embedded this run's shards (index.workers, fewer when fewer shards were left).
    workers: int = 1

    def iter_shards(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, vectors)`` per shard, memory-mapped (only the pages touched are read)."""
        start = 0
        for path in self.shards:
            vectors = np.load(path, mmap_mode="r")
            yield start, vectors
            start += vectors.shape[0]

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of sorted row numbers ``rows``, as a float32 array."""
        out = np.empty((len(rows), self.dimension), dtype=np.float32)
        for start, vectors in self.iter_shards():
            lo, hi = np.searchsorted(rows, [start, start + vectors.shape[0]])
            if hi > lo:
                out[lo:hi] = vectors[rows[lo:hi] - start]
        return out

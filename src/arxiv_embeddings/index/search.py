"""Searching a built index: :class:`PaperIndex` (load, verify, search by vectors, text or arXiv id) and
:func:`query_embedder`, the embedder that matches the model an index was built with (the search CLI and the API)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig

from arxiv_embeddings.ann import apply_search_params
from arxiv_embeddings.backends.tasks import MODEL
from arxiv_embeddings.index.format import (
    INDEX_FILE,
    METADATA_COLUMNS,
    METADATA_FILE,
    SEARCH_INDEX_FILE,
    IndexCorruptedError,
    IndexNotFoundError,
    ModelMismatchError,
    UnknownPaperError,
    check_model,
)
from arxiv_embeddings.io import file_sha256, read_json
from arxiv_embeddings.layout import MANIFEST_FILE
from arxiv_embeddings.vectors import normalize_rows

if TYPE_CHECKING:
    import faiss

    from arxiv_embeddings.backends import Embedder


@dataclass(frozen=True)
class Hit:
    """One search result: a paper and its cosine similarity to the query."""

    arxiv_id: str
    title: str
    primary_subject: str
    score: float


class PaperIndex:
    """A FAISS index over paper embeddings with the papers' metadata, row ``i`` = vector id ``i``."""

    def __init__(
        self,
        index: faiss.Index,
        metadata: pa.Table,
        manifest: dict[str, Any],
        path: Path | None = None,
        search_index: faiss.Index | None = None,
    ):
        for held in (index, search_index):
            if held is not None and held.ntotal != metadata.num_rows:
                raise IndexCorruptedError(
                    f"The index holds {held.ntotal} vectors but its metadata {metadata.num_rows} rows"
                    + (f" at {path}" if path else "")
                    + "; rebuild it with 'uv run inv index --force'."
                )
        self.index = index
        #: The papers in the search task's output (manifest ``search``), for free-text queries; None when the
        #: model serves search with its own output.
        self.search_index = search_index
        self.metadata = metadata.select(list(METADATA_COLUMNS)).combine_chunks()
        self.manifest = manifest
        self.path = path
        self.dimension = int(index.d)
        self._ids: tuple[pa.Array, np.ndarray] | None = None  # the ids sorted, and their rows
        self._ids_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | Path, expected_model: str | None = None, verify: bool = True) -> PaperIndex:
        """Load the index in folder ``path``.

        ``expected_model``: the model (folder, run folder, or Hub name) that will embed the queries; loading fails
        with :class:`ModelMismatchError` unless it is the model that built the index (same file fingerprint for a
        local folder, same name otherwise). ``verify`` checks the files' sha256 against the manifest (it reads
        every byte); sizes and counts are always checked.
        """
        import faiss

        path = Path(path)
        manifest_path = path / MANIFEST_FILE
        if not manifest_path.exists():
            raise IndexNotFoundError(
                f"No index at {path} (no {MANIFEST_FILE}); build one with 'uv run inv index' "
                "(or point to another folder with index.name=... / paths.root_dir=...)."
            )
        fix = "rebuild it with 'uv run inv index --force'."
        try:
            manifest = read_json(manifest_path)
            files = manifest["files"]
            count, dimension = int(manifest["count"]), int(manifest["dimension"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise IndexCorruptedError(f"Unreadable index manifest {manifest_path} ({err}); {fix}") from err
        search = manifest.get("search") or None
        for name in (INDEX_FILE, METADATA_FILE, *([SEARCH_INDEX_FILE] if search else [])):
            file = path / name
            info = files.get(name) or {}
            if not file.exists():
                raise IndexCorruptedError(f"Index file {file} is missing; {fix}")
            size = file.stat().st_size
            if size != info.get("bytes"):
                raise IndexCorruptedError(
                    f"Index file {file} has {size} bytes, its manifest records {info.get('bytes')}; {fix}"
                )
            if verify and file_sha256(file) != info.get("sha256"):
                raise IndexCorruptedError(f"Index file {file} does not match the sha256 its manifest records; {fix}")
        if expected_model is not None:
            check_model(manifest, expected_model, path)
        indexes = {}
        for name in (INDEX_FILE, *([SEARCH_INDEX_FILE] if search else [])):
            try:
                indexes[name] = faiss.read_index(str(path / name))
            except RuntimeError as err:
                raise IndexCorruptedError(f"FAISS cannot read {path / name} ({str(err).strip()}); {fix}") from err
        index, search_index = indexes[INDEX_FILE], indexes.get(SEARCH_INDEX_FILE)
        try:
            metadata = pq.read_table(path / METADATA_FILE, columns=list(METADATA_COLUMNS))
        except (OSError, pa.ArrowException) as err:
            raise IndexCorruptedError(f"Cannot read {path / METADATA_FILE} ({err}); {fix}") from err
        if index.ntotal != count or metadata.num_rows != count or index.d != dimension:
            raise IndexCorruptedError(
                f"Index at {path}: manifest says {count} vectors of dimension {dimension}, the FAISS file holds "
                f"{index.ntotal} of dimension {index.d} and the metadata {metadata.num_rows} rows; {fix}"
            )
        if search_index is not None and search_index.d != int((search or {}).get("dimension", -1)):
            raise IndexCorruptedError(
                f"Index at {path}: manifest says search vectors of dimension {(search or {}).get('dimension')}, "
                f"{SEARCH_INDEX_FILE} holds {search_index.d}; {fix}"
            )
        for held in indexes.values():
            apply_search_params(held, manifest.get("index_type", ""), manifest.get("index_params") or {})
        return cls(index, metadata, manifest, path, search_index)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def output(self) -> str:
        """The model output the papers of ``index.faiss`` were embedded with (one of
        :data:`arxiv_embeddings.backends.tasks.OUTPUTS`; the stage writes ``model``): a query searched there must be
        embedded with it too. ``model`` for an index whose manifest predates the field."""
        return str(self.manifest.get("output") or MODEL)

    @property
    def query_output(self) -> str:
        """The model output free-text queries are embedded with: the search task's own when the index holds the
        papers in it too (:attr:`search_index`), else :attr:`output`."""
        search = self.manifest.get("search") or {}
        return str(search.get("output") or self.output) if self.search_index is not None else self.output

    def _for(self, output: str | None) -> Any:
        """The FAISS index of the papers in ``output`` (None: :attr:`output`)."""
        if output is None or output == self.output:
            return self.index
        if self.search_index is not None and output == self.query_output:
            return self.search_index
        held = [self.output, *([self.query_output] if self.search_index is not None else [])]
        raise ModelMismatchError(
            f"The index at {self.path} holds the papers in the {' and '.join(map(repr, held))} output(s), not in "
            f"{output!r}; embed the queries with one of those, or rebuild the index ('uv run inv index --force')."
        )

    def __repr__(self) -> str:
        m = self.manifest
        return f"PaperIndex({m.get('index_type')}, {len(self)} papers, dim {self.dimension}, model {m.get('model')})"

    # ------------------------------------------------------------------------------------------- search
    def _check_dimension(self, dim: int, what: str, expected: int | None = None) -> None:
        expected = self.dimension if expected is None else expected
        if dim != expected:
            raise ModelMismatchError(
                f"{what} dimension {dim}, but the index at {self.path} holds {expected}-d vectors of model "
                f"{self.manifest.get('model')!r}; embed the queries with that model, or build an index for yours "
                "with 'uv run inv index --overrides index.model=...'."
            )

    def _hits(self, scores: np.ndarray, ids: np.ndarray) -> list[list[Hit]]:
        valid = ids >= 0
        rows = ids[valid]
        table = self.metadata.take(pa.array(rows, type=pa.int64())) if len(rows) else None
        columns = {c: table.column(c).to_pylist() for c in METADATA_COLUMNS} if table is not None else {}
        out: list[list[Hit]] = []
        pos = 0
        for q in range(ids.shape[0]):
            hits = []
            for j in range(ids.shape[1]):
                if not valid[q, j]:
                    continue
                hits.append(
                    Hit(
                        arxiv_id=columns["arxiv_id"][pos],
                        title=columns["title"][pos],
                        primary_subject=columns["primary_subject"][pos],
                        score=float(scores[q, j]),
                    )
                )
                pos += 1
            out.append(hits)
        return out

    def _raw_search(self, vectors: np.ndarray, k: int, output: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        index = self._for(output)
        vectors = np.asarray(vectors)
        if vectors.ndim == 1:
            vectors = vectors[None, :]
        if vectors.ndim != 2:
            raise ValueError(f"Query vectors must be a 2-D array (n, {self.dimension}); got shape {vectors.shape}.")
        self._check_dimension(vectors.shape[1], "Query vectors have", int(index.d))
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer; got {k!r}.")
        k = min(int(k), len(self))
        if vectors.shape[0] == 0 or k == 0:
            return np.zeros((vectors.shape[0], 0), np.float32), np.zeros((vectors.shape[0], 0), np.int64)
        scores, ids = index.search(normalize_rows(vectors), k)
        return scores, ids

    def search(self, vectors: np.ndarray, k: int = 10, output: str | None = None) -> list[list[Hit]]:
        """The ``k`` nearest papers of each query vector (rows of ``vectors``, normalized here), best first, among
        the papers' vectors in ``output`` (None: :attr:`output`; :attr:`query_output` for free-text queries)."""
        return self._hits(*self._raw_search(vectors, k, output))

    def search_text(self, embedder: Embedder, texts: list[str], k: int = 10) -> list[list[Hit]]:
        """Embed ``texts`` with ``embedder`` (see :mod:`arxiv_embeddings.backends`) in the output free-text queries
        are searched with (:attr:`query_output`), and :meth:`search` them among the papers in that output."""
        output = self.query_output
        if output == MODEL:
            self._check_dimension(int(embedder.dimension), f"The embedder {embedder.name!r} makes vectors of")
        if not texts:
            return []
        return self.search(embedder.encode(list(texts), normalize=True, output=output), k, output)

    def row_of(self, arxiv_id: str) -> int:
        """Vector id (metadata row) of a paper; :class:`UnknownPaperError` when it is not indexed. The ids are
        sorted once (Arrow only: the serving install has no pandas), then each lookup is a binary search."""
        import pyarrow.compute as pc

        with self._ids_lock:
            if self._ids is None:
                column = self.metadata.column("arxiv_id").combine_chunks()
                order = pc.sort_indices(column)  # stable: of duplicate ids, the first row comes first
                self._ids = (column.take(order), order.to_numpy())
        ids, order = self._ids
        # Arrow sorts strings by their UTF-8 bytes, the order Python's str comparison gives.
        lo, hi = 0, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if ids[mid].as_py() < arxiv_id:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(ids) and ids[lo].as_py() == arxiv_id:
            return int(order[lo])
        raise UnknownPaperError(arxiv_id, self.path)

    def paper(self, arxiv_id: str) -> dict[str, str]:
        """Metadata of an indexed paper: ``arxiv_id``, ``title``, ``primary_subject``."""
        row = self.metadata.slice(self.row_of(arxiv_id), 1).to_pylist()[0]
        return {c: str(row[c]) for c in METADATA_COLUMNS}

    def vector(self, row: int) -> np.ndarray:
        """The stored vector of a row (for IVF-PQ, its compressed approximation)."""
        return np.asarray(self.index.reconstruct(int(row)), dtype=np.float32)

    def search_id(self, arxiv_id: str, k: int = 10) -> list[Hit]:
        """Papers like paper ``arxiv_id``: the ``k`` nearest to its vector, itself (and copies of its id) excluded."""
        row = self.row_of(arxiv_id)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer; got {k!r}.")
        scores, ids = self._raw_search(self.vector(row)[None, :], int(k) + 1)
        hits = [h for i, h in zip(ids[0], self._hits(scores, ids)[0], strict=False) if i != row]
        return [h for h in hits if h.arxiv_id != arxiv_id][: int(k)]


def query_embedder(index: PaperIndex, cfg: DictConfig | None = None, device: str | None = None) -> Embedder:
    """The embedder of the model that built ``index`` (its folder as recorded, else its name resolved through
    ``cfg``'s paths), with the backend, variant and length it used; checked against the index's fingerprint."""
    from arxiv_embeddings.backends import load_embedder

    m = index.manifest
    location = str(m.get("model_location") or m.get("model"))
    if not Path(location).is_dir() and cfg is not None:
        from arxiv_embeddings.layout import model_location as locate

        location = locate(cfg, str(m.get("model")))
    check_model(m, location, index.path or "")
    return load_embedder(
        location,
        backend=str(m.get("backend", "auto")),
        variant=m.get("variant"),
        device=device,
        max_seq_length=m.get("max_seq_length"),
    )

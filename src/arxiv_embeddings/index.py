"""index: embed a corpus of papers and build a FAISS index over it, for nearest-paper search.

    uv run inv index                                                 # the model this run trained, all splits
    uv run inv index --overrides "index.model=sentence-transformers/all-MiniLM-L6-v2 index.type=flat"
    uv run inv index --overrides "index.type=ivf index.ivf.pq_m=48"    # IVF-PQ for a large corpus
    arxiv-embed search "graph neural networks for molecules" -k 5
    arxiv-embed search --id 2401.01234                               # papers like this one

Settings live in ``configs/base.yaml`` (section ``index:``). The stage writes ``${paths.indexes_dir}/<name>/``:

- ``index.faiss``: the FAISS index over L2-normalized embeddings, inner product (= cosine similarity);
- ``metadata.parquet``: ``arxiv_id``, ``title``, ``primary_subject``; row ``i`` is vector id ``i``;
- ``manifest.json``: the model (name, folder, fingerprint of its files), backend, variant, dimension, count,
  index type and parameters, the corpus files, the build report (recall@10 against exact search, queries/s) and
  the sha256 of the two files above.

Python API (used by the search CLI and the web service)::

    from arxiv_embeddings.index import PaperIndex, index_dir
    index = PaperIndex.load(index_dir(cfg), expected_model="models/my-run/final")   # or expected_model=None
    index.search(vectors, k=5)          # -> list[list[Hit]], one list per query vector (any float array, (n, dim))
    index.search_text(embedder, ["a title\\nan abstract"], k=5)                     # -> list[list[Hit]]
    index.search_id("2401.01234", k=5)  # -> list[Hit], the paper itself excluded; UnknownPaperError if not indexed
    index.manifest                      # dict: model, model_location, model_fingerprint, backend, variant,
                                        #   dimension, count, index_type, index_params, text, build, files, ...
    len(index)                          # number of papers

``Hit`` is a frozen dataclass ``(arxiv_id, title, primary_subject, score)``, ``score`` the cosine similarity.
Loading fails with :class:`IndexNotFoundError` (no index there), :class:`IndexCorruptedError` (a file is missing,
changed or unreadable) or :class:`ModelMismatchError` (``expected_model`` is not the model that built it; also
raised by ``search``/``search_text`` for vectors or an embedder of another dimension). A loaded index is only read
by ``search*``, so one instance can serve concurrent requests. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig

from arxiv_embeddings.io import file_sha256, read_json

if TYPE_CHECKING:
    import faiss

    from arxiv_embeddings.embedder import Embedder

SCHEMA_VERSION = 1
INDEX_FILE = "index.faiss"
METADATA_FILE = "metadata.parquet"
MANIFEST_FILE = "manifest.json"
METADATA_COLUMNS = ("arxiv_id", "title", "primary_subject")
#: Files of a model folder left out of its fingerprint: what exporting or documenting the model adds beside the
#: weights without changing the embeddings it makes.
FINGERPRINT_SKIP = ("onnx", "export_report.json", "README.md")


# ------------------------------------------------------------------------------------------------ errors
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


# ----------------------------------------------------------------------------------------------- helpers
@dataclass(frozen=True)
class Hit:
    """One search result: a paper and its cosine similarity to the query."""

    arxiv_id: str
    title: str
    primary_subject: str
    score: float


def index_name(cfg: DictConfig) -> str:
    """``index.name``, else derived from ``index.model``: the run name for ``models/<run>/final`` or a run name,
    the last part of a folder or Hub name."""
    if cfg.index.get("name"):
        return str(cfg.index.name)
    parts = Path(str(cfg.index.model).rstrip("/")).parts
    if not parts:
        return str(cfg.index.model)
    return parts[-2] if parts[-1] == "final" and len(parts) >= 2 else parts[-1]


def index_dir(cfg: DictConfig) -> Path:
    """Where the index of this config lives: ``${paths.indexes_dir}/<index name>``."""
    return Path(cfg.paths.indexes_dir) / index_name(cfg)


def model_fingerprint(path: str | Path) -> str:
    """sha256 over the files of a model folder (relative names and bytes), leaving out hidden files and what
    :data:`FINGERPRINT_SKIP` names (ONNX exports, reports, the model card), so a model keeps its fingerprint when it
    is exported or documented, wherever the folder is."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"Model folder not found: {root}.")
    digest = hashlib.sha256()
    for child in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = child.relative_to(root)
        if rel.parts[0] in FINGERPRINT_SKIP or any(part.startswith(".") for part in rel.parts):
            continue
        digest.update(rel.as_posix().encode())
        digest.update(file_sha256(child).encode())
    return digest.hexdigest()


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """Float32 copy of ``vectors`` with unit L2 norm per row (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def _model_folder(name_or_path: str) -> Path | None:
    """The local folder a model name or path resolves to (a run's folder, a path, a bundled package), else None."""
    from arxiv_embeddings.models import ModelNotFoundError, resolve_model

    try:
        source = Path(resolve_model(name_or_path))
    except ModelNotFoundError:
        return None
    return source if source.is_dir() else None


# ------------------------------------------------------------------------------------------------ the index
class PaperIndex:
    """A FAISS index over paper embeddings with the papers' metadata, row ``i`` = vector id ``i``."""

    def __init__(self, index: faiss.Index, metadata: pa.Table, manifest: dict[str, Any], path: Path | None = None):
        if index.ntotal != metadata.num_rows:
            raise IndexCorruptedError(
                f"The index holds {index.ntotal} vectors but its metadata {metadata.num_rows} rows"
                + (f" at {path}" if path else "")
                + "; rebuild it with 'uv run inv index --force'."
            )
        self.index = index
        self.metadata = metadata.select(list(METADATA_COLUMNS)).combine_chunks()
        self.manifest = manifest
        self.path = path
        self.dimension = int(index.d)
        self._ids: tuple[np.ndarray, np.ndarray] | None = None
        self._ids_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | Path, expected_model: str | None = None, verify: bool = True) -> PaperIndex:
        """Load the index in folder ``path``.

        ``expected_model``: the model (folder, run folder, or Hub name) that will embed the queries; loading fails
        with :class:`ModelMismatchError` unless it is the model that built the index (same file fingerprint for a
        local folder, same name otherwise). ``verify`` checks the files' sha256 against the manifest (about 1 s
        per GB); sizes and counts are always checked.
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
        for name in (INDEX_FILE, METADATA_FILE):
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
        try:
            index = faiss.read_index(str(path / INDEX_FILE))
        except RuntimeError as err:
            raise IndexCorruptedError(f"FAISS cannot read {path / INDEX_FILE} ({str(err).strip()}); {fix}") from err
        try:
            metadata = pq.read_table(path / METADATA_FILE, columns=list(METADATA_COLUMNS))
        except (OSError, pa.ArrowException) as err:
            raise IndexCorruptedError(f"Cannot read {path / METADATA_FILE} ({err}); {fix}") from err
        if index.ntotal != count or metadata.num_rows != count or index.d != dimension:
            raise IndexCorruptedError(
                f"Index at {path}: manifest says {count} vectors of dimension {dimension}, the FAISS file holds "
                f"{index.ntotal} of dimension {index.d} and the metadata {metadata.num_rows} rows; {fix}"
            )
        apply_search_params(index, manifest.get("index_type", ""), manifest.get("index_params") or {})
        return cls(index, metadata, manifest, path)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def __repr__(self) -> str:
        m = self.manifest
        return f"PaperIndex({m.get('index_type')}, {len(self)} papers, dim {self.dimension}, model {m.get('model')})"

    # ------------------------------------------------------------------------------------------- search
    def _check_dimension(self, dim: int, what: str) -> None:
        if dim != self.dimension:
            raise ModelMismatchError(
                f"{what} dimension {dim}, but the index at {self.path} holds {self.dimension}-d vectors of model "
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

    def _raw_search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        vectors = np.asarray(vectors)
        if vectors.ndim == 1:
            vectors = vectors[None, :]
        if vectors.ndim != 2:
            raise ValueError(f"Query vectors must be a 2-D array (n, {self.dimension}); got shape {vectors.shape}.")
        self._check_dimension(vectors.shape[1], "Query vectors have")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer; got {k!r}.")
        k = min(int(k), len(self))
        if vectors.shape[0] == 0 or k == 0:
            return np.zeros((vectors.shape[0], 0), np.float32), np.zeros((vectors.shape[0], 0), np.int64)
        scores, ids = self.index.search(normalize_rows(vectors), k)
        return scores, ids

    def search(self, vectors: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """The ``k`` nearest papers of each query vector (rows of ``vectors``, normalized here), best first."""
        return self._hits(*self._raw_search(vectors, k))

    def search_text(self, embedder: Embedder, texts: list[str], k: int = 10) -> list[list[Hit]]:
        """Embed ``texts`` with ``embedder`` (see :mod:`arxiv_embeddings.embedder`) and :meth:`search` them."""
        self._check_dimension(int(embedder.dimension), f"The embedder {embedder.name!r} makes vectors of")
        if not texts:
            return []
        return self.search(embedder.encode(list(texts), normalize=True), k)

    def row_of(self, arxiv_id: str) -> int:
        """Vector id (metadata row) of a paper; :class:`UnknownPaperError` when it is not indexed."""
        from arxiv_embeddings.data import hash_strings

        with self._ids_lock:
            if self._ids is None:
                keys = hash_strings(self.metadata.column("arxiv_id"))
                order = np.argsort(keys, kind="stable")
                self._ids = (keys[order], order)
        keys, order = self._ids
        key = hash_strings(pa.array([str(arxiv_id)]))[0]
        column = self.metadata.column("arxiv_id")
        start, stop = np.searchsorted(keys, key, side="left"), np.searchsorted(keys, key, side="right")
        for row in order[start:stop]:
            if column[int(row)].as_py() == arxiv_id:
                return int(row)
        raise UnknownPaperError(arxiv_id, self.path)

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


def check_model(manifest: dict[str, Any], expected_model: str, path: Path | str = "") -> None:
    """Fail with :class:`ModelMismatchError` unless ``expected_model`` is the model the index was built with."""
    built = manifest.get("model")
    folder = _model_folder(str(expected_model))
    if folder is not None:
        same = model_fingerprint(folder) == manifest.get("model_fingerprint")
        got = f"{expected_model!r} (folder {folder})"
    else:
        same = str(expected_model) in {built, manifest.get("model_location")}
        got = repr(expected_model)
    if not same:
        raise ModelMismatchError(
            f"The index at {path} was built with model {built!r} (folder {manifest.get('model_location')}), not "
            f"with {got}: their files differ, so their vectors are not comparable. Use that model, or rebuild the "
            f"index with 'uv run inv index --overrides index.model={expected_model}'."
        )


# ---------------------------------------------------------------------------------------------- index types
def apply_search_params(index: faiss.Index, index_type: str, params: dict[str, Any]) -> None:
    """Set the search-time parameters recorded in the manifest (``ef_search``, ``nprobe``) on a loaded index."""
    import faiss

    if index_type == "hnsw" and params.get("ef_search"):
        faiss.downcast_index(index).hnsw.efSearch = int(params["ef_search"])
    if index_type == "ivf":
        ivf = faiss.extract_index_ivf(index)
        if params.get("nprobe"):
            ivf.nprobe = int(params["nprobe"])
        ivf.make_direct_map()  # reconstruct(i) for search by id

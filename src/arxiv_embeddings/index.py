"""index: embed a corpus of papers and build a FAISS index over it, for nearest-paper search.

    uv run inv index                                                 # the model this run trained, all splits
    uv run inv index --overrides "index.model=sentence-transformers/all-MiniLM-L6-v2 index.type=flat"
    uv run inv index --overrides "index.type=ivf index.ivf.pq_m=48"    # IVF-PQ for a large corpus
    arxiv-embed search "graph neural networks for molecules" -k 5
    arxiv-embed search --id 2401.01234                               # papers like this one

Settings live in ``configs/base.yaml`` (section ``index:``). The stage writes ``${paths.indexes_dir}/<name>/``:

- ``index.faiss``: the FAISS index over L2-normalized embeddings, inner product (= cosine similarity);
- ``metadata.parquet``: ``arxiv_id``, ``title``, ``primary_subject``; row ``i`` is vector id ``i``;
- ``manifest.json``: the model (name, folder, fingerprint of its weights), backend, variant, dimension, count,
  index type and parameters, the corpus files, the build report (recall@10 against exact search, queries/s,
  index bytes, RSS) and the sha256 of the two files above.

The corpus is embedded in shards of ``index.shard_size`` papers written to ``${paths.indexes_dir}/.embeddings/<key>``
as they finish (one shard in memory at a time, with a progress bar); the key covers the model's weights, the
backend, variant, length, text and the corpus bytes, so a build that crashed resumes from its last shard, and
another index type over the same vectors re-uses them all. The index is built in a temporary folder that replaces
the previous one only when everything succeeded.

With ``paths=gcs`` the corpus is read from the bucket, a model in the bucket is copied to ``${paths.cache_dir}``
(once per content) to be loaded, and the index folder is published to the bucket; the embedding shards stay on local
disk (see :func:`embeddings_dir`).

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
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from loguru import logger
from omegaconf import DictConfig, OmegaConf

from arxiv_embeddings.config import CONFIG_DIR, ConfigError, check_missing, choose, require, require_in, to_plain
from arxiv_embeddings.io import artifact_path, atomic_dir, file_sha256, is_remote, parquet_file, read_json, read_parquet
from arxiv_embeddings.stage import StageSpec
from arxiv_embeddings.vectors import normalize_rows

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
_BUFFERS = ("position_ids", "token_type_ids")


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
    """Where the index of this config lives: ``${paths.indexes_dir}/<index name>`` (a bucket URL with ``paths=gcs``)."""
    return artifact_path(cfg.paths.indexes_dir) / index_name(cfg)


def model_fingerprint(path: str | Path) -> str:
    """sha256 of a model's weights: every tensor (module folder, name, dtype, shape, bytes) of the folder's
    ``*.safetensors`` files, so the same weights saved again, copied or moved keep their fingerprint, and the
    ONNX files and reports an export adds beside them (:data:`FINGERPRINT_SKIP`) do not change it. A folder without
    safetensors falls back to the bytes of all its files (names included), hidden files and
    :data:`FINGERPRINT_SKIP` left out."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"Model folder not found: {root}.")

    def kept(p: Path) -> bool:
        rel = p.relative_to(root)
        return p.is_file() and rel.parts[0] not in FINGERPRINT_SKIP and not any(x.startswith(".") for x in rel.parts)

    digest = hashlib.sha256()
    weights = sorted(p for p in root.rglob("*.safetensors") if kept(p))
    if weights:
        digest.update(b"safetensors-v1")
        for file in weights:
            digest.update(file.parent.relative_to(root).as_posix().encode())
            for name, dtype, shape, sha in _safetensors_tensors(file):
                digest.update(f"{name}|{dtype}|{shape}|{sha}".encode())
        return digest.hexdigest()
    for child in sorted(p for p in root.rglob("*") if kept(p)):
        digest.update(child.relative_to(root).as_posix().encode())
        digest.update(file_sha256(child).encode())
    return digest.hexdigest()


def _safetensors_tensors(file: Path) -> list[tuple[str, str, list[int], str]]:
    """(name, dtype, shape, sha256 of the bytes) of each tensor of a safetensors file, by name."""
    with open(file, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
        base = 8 + size
        out = []
        # position_ids / token_type_ids are constant buffers that some versions save and others do not.
        names = [k for k in header if k != "__metadata__" and not k.endswith(_BUFFERS)]
        for name in sorted(names):
            info = header[name]
            lo, hi = info["data_offsets"]
            fh.seek(base + lo)
            out.append((name, info["dtype"], list(info["shape"]), hashlib.sha256(fh.read(hi - lo)).hexdigest()))
    return out


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
            f"with {got}: their weights differ, so their vectors are not comparable. Use that model, or rebuild the "
            f"index with 'uv run inv index --overrides index.model={expected_model}'."
        )


def query_embedder(index: PaperIndex, cfg: DictConfig | None = None, device: str | None = None) -> Embedder:
    """The embedder of the model that built ``index`` (its folder as recorded, else its name resolved through
    ``cfg``'s paths), with the backend, variant and length it used; checked against the index's fingerprint."""
    from arxiv_embeddings.embedder import load_embedder

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


# ---------------------------------------------------------------------------------------------- index types
def apply_search_params(index: faiss.Index, index_type: str, params: dict[str, Any]) -> None:
    """Set the search-time parameters recorded in the manifest (``ef_search``, ``nprobe``) on a loaded index."""
    import faiss

    if index_type == "hnsw" and params.get("ef_search"):
        hnsw: Any = faiss.downcast_index(index)
        hnsw.hnsw.efSearch = int(params["ef_search"])
    if index_type == "ivf":
        ivf = faiss.extract_index_ivf(index)
        if params.get("nprobe"):
            ivf.nprobe = int(params["nprobe"])
        ivf.make_direct_map()  # reconstruct(i) for search by id


# ================================================================================================ building
# --------------------------------------------------------------------------------------------- validation
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(value: Any, key: str, minimum: int = 1, optional: bool = False) -> None:
    if optional and value is None:
        return
    allowed = f"an integer >= {minimum}" + (", or null" if optional else "")
    require(_is_int(value) and value >= minimum, key, f"got {value!r}; expected {allowed}.")


def validate(cfg: DictConfig) -> None:
    """Check the ``index`` settings before any work, naming the offending key and the fix."""
    from arxiv_embeddings.data import TEXT_FIELDS
    from arxiv_embeddings.embedder import BACKENDS
    from arxiv_embeddings.layout import SPLITS

    check_missing(cfg)
    ix = cfg.index
    require(
        bool(str(ix.model or "").strip()), "index.model", "is empty; pass a run name, a model folder or a Hub name."
    )
    require_in("index.backend", ix.backend, BACKENDS)
    choose("index.type", str(ix.type), INDEX_TYPES)
    require_in("index.text", ix.text, TEXT_FIELDS)
    if ix.corpus.path is None:
        splits = ix.corpus.splits
        require(
            OmegaConf.is_list(splits) and len(splits) > 0,
            "index.corpus.splits",
            f"got {splits!r}; list the processed splits to index, e.g. [train, eval, test], or set index.corpus.path.",
        )
        for split in splits:
            require_in("index.corpus.splits", split, SPLITS)
        require(len(set(splits)) == len(splits), "index.corpus.splits", f"got {list(splits)}; name each split once.")
    else:
        require(bool(str(ix.corpus.path).strip()), "index.corpus.path", "is empty; give a file or a glob, or null.")
    _check_int(ix.encode.batch_size, "index.encode.batch_size")
    _check_int(ix.encode.max_seq_length, "index.encode.max_seq_length", optional=True)
    _check_int(ix.shard_size, "index.shard_size")
    _check_int(ix.hnsw.m, "index.hnsw.m", minimum=2)
    _check_int(ix.hnsw.ef_construction, "index.hnsw.ef_construction")
    _check_int(ix.hnsw.ef_search, "index.hnsw.ef_search")
    _check_int(ix.ivf.nlist, "index.ivf.nlist", optional=True)
    _check_int(ix.ivf.nprobe, "index.ivf.nprobe")
    _check_int(ix.ivf.pq_m, "index.ivf.pq_m", minimum=0)
    _check_int(ix.ivf.pq_nbits, "index.ivf.pq_nbits")
    require(ix.ivf.pq_nbits <= 16, "index.ivf.pq_nbits", f"got {ix.ivf.pq_nbits}; expected 1 to 16 (8 is usual).")
    _check_int(ix.ivf.refine_k_factor, "index.ivf.refine_k_factor", minimum=0)
    _check_int(ix.ivf.train_size, "index.ivf.train_size", optional=True)
    _check_int(ix.ivf.kmeans_iterations, "index.ivf.kmeans_iterations")
    _check_int(ix.eval.queries, "index.eval.queries", minimum=0)
    _check_int(ix.eval.k, "index.eval.k")
    r = ix.eval.min_recall
    require(
        r is None or (isinstance(r, (int, float)) and not isinstance(r, bool) and 0 <= r <= 1),
        "index.eval.min_recall",
        f"got {r!r}; expected a number from 0 to 1, or null.",
    )
    _check_int(ix.threads, "index.threads", optional=True)
    name = index_name(cfg)
    require(
        bool(name) and name not in {".", ".."} and "/" not in name and "\\" not in name and not name.startswith("."),
        "index.name",
        f"got {name!r}; an index name is one folder name (no '/', not starting with '.').",
    )


# ---------------------------------------------------------------------------------------------- index types
@dataclass(frozen=True)
class IndexType:
    """How to make an empty index of one type: ``make(dimension, papers, cfg.index) -> (index, params)``, with
    ``params`` the resolved settings recorded in the manifest (and re-applied at load)."""

    make: Callable[[int, int, DictConfig], tuple[faiss.Index, dict[str, Any]]]
    description: str


def _make_flat(dim: int, n: int, ix: DictConfig) -> tuple[faiss.Index, dict[str, Any]]:
    import faiss

    return faiss.IndexFlatIP(dim), {}


def _make_hnsw(dim: int, n: int, ix: DictConfig) -> tuple[faiss.Index, dict[str, Any]]:
    import faiss

    index = faiss.IndexHNSWFlat(dim, int(ix.hnsw.m), faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = int(ix.hnsw.ef_construction)
    index.hnsw.efSearch = int(ix.hnsw.ef_search)
    return index, {
        "m": int(ix.hnsw.m),
        "ef_construction": int(ix.hnsw.ef_construction),
        "ef_search": int(ix.hnsw.ef_search),
    }


def auto_nlist(n: int) -> int:
    """4 * sqrt(n) inverted lists, at most n / 39 (FAISS asks for 39 training points per list), at least 1."""
    return max(1, min(round(4 * n**0.5), n // 39))


def _make_ivf(dim: int, n: int, ix: DictConfig) -> tuple[faiss.Index, dict[str, Any]]:
    import faiss

    v = ix.ivf
    nlist = int(v.nlist) if v.nlist else auto_nlist(n)
    m, nbits, refine = int(v.pq_m), int(v.pq_nbits), int(v.refine_k_factor)
    if nlist > n:
        raise ConfigError(f"index.ivf.nlist={nlist} exceeds the {n} papers of the corpus; use null (auto) or <= {n}.")
    if m:
        if dim % m:
            divisors = [d for d in range(1, dim + 1) if dim % d == 0]
            raise ConfigError(
                f"index.ivf.pq_m={m} does not divide the model's dimension {dim}; use one of {divisors}, "
                "or 0 for IVF-Flat."
            )
        if n < 2**nbits:
            raise ConfigError(
                f"index.ivf.pq_m={m} with pq_nbits={nbits} needs at least {2**nbits} papers to train its "
                f"{2**nbits} centroids per sub-vector; the corpus has {n}. Use index.ivf.pq_m=0 (IVF-Flat) or a "
                "smaller index.ivf.pq_nbits."
            )
    key = f"IVF{nlist}," + (f"PQ{m}x{nbits}" if m else "Flat") + (",RFlat" if m and refine else "")
    index = faiss.index_factory(dim, key, faiss.METRIC_INNER_PRODUCT)
    if m and refine:
        refined: Any = faiss.downcast_index(index)
        refined.k_factor = float(refine)
    ivf: Any = faiss.downcast_index(faiss.extract_index_ivf(index))
    ivf.nprobe = min(int(v.nprobe), nlist)
    ivf.cp.niter = int(v.kmeans_iterations)
    if m:
        ivf.do_polysemous_training = False  # Hamming-filter codes, unused here; slow to train
        ivf.pq.cp.niter = int(v.kmeans_iterations)
    train = min(n, int(v.train_size) if v.train_size else max(10_000, 64 * nlist))
    params = {
        "nlist": nlist,
        "nprobe": min(int(v.nprobe), nlist),
        "pq_m": m,
        "pq_nbits": nbits if m else None,
        "refine_k_factor": refine if m else 0,
        "train_size": train,
        "kmeans_iterations": int(v.kmeans_iterations),
        "factory": key,
    }
    return index, params


#: Index types by name (``index.type``).
INDEX_TYPES: dict[str, IndexType] = {
    "flat": IndexType(_make_flat, "exact inner-product search over all vectors"),
    "hnsw": IndexType(_make_hnsw, "HNSW graph over the full vectors"),
    "ivf": IndexType(_make_ivf, "inverted lists over k-means cells: IVF-Flat, or IVF-PQ with ivf.pq_m > 0"),
}


def make_index(index_type: str, dim: int, n: int, ix: DictConfig) -> tuple[faiss.Index, dict[str, Any]]:
    """An empty (untrained) index of ``index_type`` for ``n`` vectors of ``dim``, and its resolved parameters."""
    return choose("index.type", index_type, INDEX_TYPES).make(dim, n, ix)


# -------------------------------------------------------------------------------------------------- corpus
@dataclass
class Corpus:
    """The papers to index: their metadata (row i = vector id i), where they come from, and their text."""

    metadata: pa.Table
    sources: list[dict[str, Any]]
    #: The whole normalized table for a file corpus; None for processed splits (read in batches instead).
    table: pa.Table | None = None

    def __len__(self) -> int:
        return int(self.metadata.num_rows)

    def text_shards(self, size: int) -> Iterator[pa.Table]:
        """``title`` / ``abstract`` columns of consecutive shards of ``size`` papers (the last one shorter)."""
        if self.table is not None:
            text = self.table.select(["title", "abstract"])
            for start in range(0, text.num_rows, size):
                yield text.slice(start, size)
            return
        pending: list[pa.Table] = []
        held = 0
        for source in self.sources:
            with parquet_file(source["path"]) as f:
                for batch in f.iter_batches(batch_size=min(size, 65_536), columns=["title", "abstract"]):
                    pending.append(pa.Table.from_batches([batch]))
                    held += batch.num_rows
                    while held >= size:
                        joined = pa.concat_tables(pending)
                        yield joined.slice(0, size)
                        rest = joined.slice(size)
                        pending, held = ([rest] if rest.num_rows else []), rest.num_rows
        if held:
            yield pa.concat_tables(pending)


def load_corpus(cfg: DictConfig) -> Corpus:
    """The processed splits named in ``index.corpus.splits``, or the file(s) at ``index.corpus.path``."""
    import glob

    from arxiv_embeddings.data import load_raw, normalize
    from arxiv_embeddings.layout import split_path

    c = cfg.index.corpus
    if c.path is None:
        sources, tables = [], []
        for split in c.splits:
            path = split_path(cfg, str(split))
            table = read_parquet(path, columns=list(METADATA_COLUMNS))
            sources.append(
                {"split": str(split), "path": str(path), "sha256": file_sha256(path), "rows": table.num_rows}
            )
            tables.append(table)
        metadata = pa.concat_tables(tables) if tables else pa.table({c: [] for c in METADATA_COLUMNS})
        corpus = Corpus(metadata=metadata.combine_chunks(), sources=sources)
        where = f"the processed split(s) {', '.join(map(str, c.splits))} at {cfg.paths.processed_dir}"
    else:
        data = OmegaConf.create({"source": "files", "path": str(c.path), "format": c.format, "columns": c.columns})
        table, dropped = normalize(load_raw(data))
        if dropped:
            logger.warning(f"index: dropped {dropped:,} row(s) of {c.path} whose primary subject is not an arXiv code.")
        paths = sorted(glob.glob(str(c.path))) if any(ch in str(c.path) for ch in "*?[") else [str(c.path)]
        sources = [{"path": p, "sha256": file_sha256(p)} for p in paths]
        sources[-1]["rows"] = table.num_rows
        corpus = Corpus(metadata=table.select(list(METADATA_COLUMNS)).combine_chunks(), sources=sources, table=table)
        where = f"index.corpus.path={c.path}"
    if len(corpus) == 0:
        raise ConfigError(
            f"The corpus is empty: {where} hold(s) no papers, so there is nothing to index. Point index.corpus at "
            "papers (run 'uv run inv preprocess', or set index.corpus.path to a file in the data schema)."
        )
    return corpus


# ------------------------------------------------------------------------------------------------ embedding
@dataclass
class Embeddings:
    """The corpus vectors as shard files (``shard-00000.npy``, ...) in ``folder``, read back memory-mapped."""

    folder: Path
    shards: list[Path]
    count: int
    dimension: int
    reused: int = 0

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


def embedding_key(fingerprint: str, embedder: Embedder, corpus: Corpus, text: str, shard_size: int) -> dict[str, Any]:
    """What the vectors depend on; shards are reused only when all of it matches."""
    return {
        "model_fingerprint": fingerprint,
        "backend": embedder.backend,
        "variant": embedder.variant,
        "max_seq_length": int(embedder.max_seq_length),
        "dimension": int(embedder.dimension),
        "text": text,
        "corpus": [s["sha256"] for s in corpus.sources],
        "count": len(corpus),
        "shard_size": int(shard_size),
    }


def _valid_shard(path: Path, rows: int, dim: int) -> bool:
    if not path.exists():
        return False
    try:
        vectors = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as err:
        logger.warning(f"index: embedding shard {path} is unreadable ({err}); embedding it again.")
        return False
    if vectors.shape != (rows, dim) or vectors.dtype != np.float32:
        logger.warning(f"index: embedding shard {path} has shape {vectors.shape}, expected {(rows, dim)}; redoing it.")
        return False
    return True


def _save_npy(path: Path, vectors: np.ndarray) -> None:
    """``np.save`` through a temporary file and a rename: a shard file is complete or absent."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.save(fh, vectors)
    os.replace(tmp, path)


def embed_corpus(
    embedder: Embedder, corpus: Corpus, cache_dir: Path, text: str, shard_size: int, batch_size: int, key: dict
) -> Embeddings:
    """Embed the corpus shard by shard into ``cache_dir`` (normalized float32), reusing the shards already there.

    Memory holds one shard's text and vectors at a time. A shard is written with a rename once it is complete, so
    after a crash the next call with the same ``key`` (recorded in ``cache_dir/key.json``) embeds only the rest.
    """
    from tqdm import tqdm

    from arxiv_embeddings.data import paper_text_array
    from arxiv_embeddings.io import write_json

    cache_dir.mkdir(parents=True, exist_ok=True)
    key_file = cache_dir / "key.json"
    if key_file.exists() and read_json(key_file) != key:
        logger.warning(f"index: embedding cache {cache_dir} was made for other settings; starting it afresh.")
        shutil.rmtree(cache_dir)
        cache_dir.mkdir(parents=True)
    write_json(key_file, key)
    n, dim = len(corpus), int(embedder.dimension)
    bounds = [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]
    paths = [cache_dir / f"shard-{i:05d}.npy" for i in range(len(bounds))]
    done = [_valid_shard(p, hi - lo, dim) for p, (lo, hi) in zip(paths, bounds, strict=True)]
    reused = sum(hi - lo for (lo, hi), ok in zip(bounds, done, strict=True) if ok)
    if reused:
        logger.info(f"index: reusing {sum(done)} embedding shard(s) ({reused:,} papers) from {cache_dir}.")
    chunk = batch_size * 16
    with tqdm(total=n, initial=reused, unit="paper", desc="embedding", dynamic_ncols=True) as bar:
        for i, shard in enumerate(corpus.text_shards(shard_size)):
            if done[i]:
                continue
            texts = paper_text_array(shard, text).to_pylist()
            vectors = np.empty((len(texts), dim), dtype=np.float32)
            for start in range(0, len(texts), chunk):
                part = embedder.encode(texts[start : start + chunk], batch_size=batch_size, normalize=True)
                if part.shape != (len(texts[start : start + chunk]), dim):
                    raise ModelMismatchError(
                        f"The embedder {embedder.name!r} returned vectors of shape {part.shape}, but declares "
                        f"dimension {dim}; check the model folder (its pooling and dense layers)."
                    )
                vectors[start : start + len(part)] = part
                bar.update(len(part))
            _save_npy(paths[i], normalize_rows(vectors))
    return Embeddings(folder=cache_dir, shards=paths, count=n, dimension=dim, reused=reused)


# ------------------------------------------------------------------------------------------------ evaluation
def exact_neighbours(embeddings: Embeddings, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner-product neighbours of ``queries`` over all shards: ``(scores, ids)``, best first."""
    nq = queries.shape[0]
    best_s = np.full((nq, 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((nq, 0), dtype=np.int64)
    for start, vectors in embeddings.iter_shards():
        for lo in range(0, vectors.shape[0], 65_536):
            block = np.asarray(vectors[lo : lo + 65_536])
            scores = queries @ block.T
            ids = np.broadcast_to(np.arange(start + lo, start + lo + block.shape[0]), scores.shape)
            all_s = np.concatenate([best_s, scores], axis=1)
            all_i = np.concatenate([best_i, ids], axis=1)
            keep = min(k, all_s.shape[1])
            top = np.argpartition(-all_s, keep - 1, axis=1)[:, :keep]
            best_s = np.take_along_axis(all_s, top, axis=1)
            best_i = np.take_along_axis(all_i, top, axis=1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_s, order, axis=1), np.take_along_axis(best_i, order, axis=1)


def recall_at_k(
    found: np.ndarray,
    exact: np.ndarray,
    rows: np.ndarray,
    k: int,
    *,
    found_scores: np.ndarray | None = None,
    exact_scores: np.ndarray | None = None,
    tie: float = 1e-5,
) -> float:
    """Mean share of each query's exact ``k`` nearest (its own row left out) that ``found`` also returns.

    With ``found_scores`` (the true inner products of the ``found`` ids) and ``exact_scores``, a found paper that
    ties the exact ``k``-th score (within ``tie``) counts too: duplicate or equally near papers may come back in
    any order, and neither order is a miss.
    """
    total = 0.0
    for q in range(found.shape[0]):
        keep = [j for j, i in enumerate(exact[q]) if i != rows[q] and i >= 0][:k]
        truth = {int(exact[q][j]) for j in keep}
        got = [(j, int(i)) for j, i in enumerate(found[q]) if i != rows[q] and i >= 0][:k]
        hits = sum(i in truth for _, i in got)
        if found_scores is not None and exact_scores is not None and keep:
            kth = float(exact_scores[q][keep[-1]])
            hits += sum(i not in truth and float(found_scores[q][j]) >= kth - tie for j, i in got)
        total += min(hits, len(truth)) / len(truth) if truth else 1.0
    return total / max(1, found.shape[0])


def true_scores(embeddings: Embeddings, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Exact inner products of each query with the vectors of its ``ids`` (``-inf`` where an id is ``-1``)."""
    flat = ids.reshape(-1)
    wanted = np.unique(flat[flat >= 0])
    vectors = embeddings.rows(wanted)
    out = np.full(ids.shape, -np.inf, dtype=np.float32)
    for q in range(ids.shape[0]):
        ok = ids[q] >= 0
        out[q, ok] = vectors[np.searchsorted(wanted, ids[q, ok])] @ queries[q]
    return out


def evaluate_index(index: faiss.Index, embeddings: Embeddings, queries: int, k: int, seed: int) -> dict[str, Any]:
    """recall@k against exact search for a seeded choice of ``queries`` papers, and queries/s.

    Each query is a paper's own vector; its own row is left out of both result lists, so the figure is that of
    a query held out of the index (and of search by id). A returned paper that ties the exact ``k``-th score
    counts as found (duplicates come back in any order).
    """
    n = embeddings.count
    nq = min(int(queries), n)
    if nq == 0 or n < 2:
        return {"queries": 0, "k": k}
    rng = np.random.default_rng([int(seed), 7])
    rows = np.sort(rng.choice(n, size=nq, replace=False))
    q = embeddings.rows(rows)
    exact_s, exact = exact_neighbours(embeddings, q, k + 1)
    t0 = time.perf_counter()
    _, found = index.search(q, min(k + 1, n))
    batch_s = time.perf_counter() - t0
    found_s = true_scores(embeddings, q, found)
    single = []
    for i in range(min(nq, 100)):
        t0 = time.perf_counter()
        index.search(q[i : i + 1], min(k + 1, n))
        single.append(time.perf_counter() - t0)
    return {
        "queries": nq,
        "k": k,
        f"recall_at_{k}": round(recall_at_k(found, exact, rows, k, found_scores=found_s, exact_scores=exact_s), 4),
        "queries_per_s": round(nq / max(batch_s, 1e-9), 1),
        "ms_per_query_single": round(float(np.median(single)) * 1000, 3),
    }


# ---------------------------------------------------------------------------------------------- the stage
def embeddings_dir(cfg: DictConfig, key: dict[str, Any]) -> Path:
    """Shard folder for one embedding key: ``${paths.indexes_dir}/.embeddings/<hash of the key>``.

    With the indexes in a bucket, the shards go to ``${paths.cache_dir}/embeddings/<hash>`` on local disk instead:
    they are written one at a time as the embedding goes, and read back memory-mapped (several passes for
    training, adding and measuring the index), which a bucket cannot do. The cost is that a build interrupted on one
    machine resumes only on the same machine; on another one it embeds the corpus again.
    """
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    if is_remote(cfg.paths.indexes_dir):
        return Path(cfg.paths.cache_dir) / "embeddings" / digest
    return Path(cfg.paths.indexes_dir) / ".embeddings" / digest


def model_location(cfg: DictConfig) -> str:
    """The folder (or Hub name) ``index.model`` names: ``${paths.models_dir}/<run>/final`` for a run name (a
    ``gs://`` URL with ``paths=gcs``)."""
    from arxiv_embeddings.layout import model_location as locate

    return locate(cfg, str(cfg.index.model))


def build_index(
    index_type: str, embeddings: Embeddings, ix: DictConfig, seed: int
) -> tuple[faiss.Index, dict[str, Any]]:
    """Train (IVF) and fill an index of ``index_type`` from the shards, one shard in memory at a time."""
    from tqdm import tqdm

    index, params = make_index(index_type, embeddings.dimension, embeddings.count, ix)
    if not index.is_trained:
        size = int(params.get("train_size") or embeddings.count)
        rng = np.random.default_rng([int(seed), 11])
        rows = np.sort(rng.choice(embeddings.count, size=min(size, embeddings.count), replace=False))
        logger.info(f"index: training {params.get('factory', index_type)} on {len(rows):,} vectors.")
        index.train(embeddings.rows(rows))
    with tqdm(total=embeddings.count, unit="vector", desc=f"adding ({index_type})", dynamic_ncols=True) as bar:
        for _, vectors in embeddings.iter_shards():
            for lo in range(0, vectors.shape[0], 65_536):
                block = np.ascontiguousarray(vectors[lo : lo + 65_536], dtype=np.float32)
                index.add(block)
                bar.update(block.shape[0])
    return index, params


def run(cfg: DictConfig) -> dict[str, Any]:
    """Embed the corpus, build the index, measure it, and write it (all files at once, or none)."""
    import faiss
    import psutil

    from arxiv_embeddings.embedder import load_embedder
    from arxiv_embeddings.io import write_json, write_parquet

    validate(cfg)
    started = time.perf_counter()
    ix = cfg.index
    if ix.threads:
        faiss.omp_set_num_threads(int(ix.threads))
    from arxiv_embeddings.models import fetch_model

    location = model_location(cfg)  # fails on a missing run or folder before any work
    local = fetch_model(location, cfg.paths.cache_dir)  # a model in a bucket: its local copy
    corpus = load_corpus(cfg)
    embedder = load_embedder(
        local,
        backend=str(ix.backend),
        variant=ix.variant,
        device=ix.encode.device,
        max_seq_length=ix.encode.max_seq_length,
    )
    folder = _model_folder(local)
    fingerprint = model_fingerprint(folder) if folder is not None else f"name:{location}"
    key = embedding_key(fingerprint, embedder, corpus, str(ix.text), int(ix.shard_size))
    cache = embeddings_dir(cfg, key)
    t0 = time.perf_counter()
    embeddings = embed_corpus(embedder, corpus, cache, str(ix.text), int(ix.shard_size), int(ix.encode.batch_size), key)
    embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index, params = build_index(str(ix.type), embeddings, ix, int(cfg.seed))
    build_s = time.perf_counter() - t0
    report = evaluate_index(index, embeddings, int(ix.eval.queries), int(ix.eval.k), int(cfg.seed))
    recall = report.get(f"recall_at_{ix.eval.k}")
    if recall is not None and ix.eval.min_recall is not None and recall < float(ix.eval.min_recall):
        knob = {"hnsw": "index.hnsw.ef_search", "ivf": "index.ivf.nprobe (or refine_k_factor for IVF-PQ)"}
        logger.warning(
            f"index: recall@{ix.eval.k} {recall:.3f} is below index.eval.min_recall={ix.eval.min_recall}; raise "
            f"{knob.get(str(ix.type), 'the search parameters')} and rebuild."
        )
    out_dir = index_dir(cfg)
    with atomic_dir(out_dir) as tmp:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        write_parquet(corpus.metadata, tmp / METADATA_FILE)
        files = {
            n: {"sha256": file_sha256(tmp / n), "bytes": (tmp / n).stat().st_size} for n in (INDEX_FILE, METADATA_FILE)
        }
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "name": out_dir.name,
            "model": str(ix.model),
            "model_location": location if is_remote(location) or folder is None else str(Path(folder).resolve()),
            "model_fingerprint": fingerprint,
            "backend": embedder.backend,
            "variant": embedder.variant,
            "max_seq_length": int(embedder.max_seq_length),
            "dimension": embeddings.dimension,
            "count": len(corpus),
            "metric": "inner_product (cosine of L2-normalized vectors)",
            "index_type": str(ix.type),
            "index_params": params,
            "text": str(ix.text),
            "corpus": corpus.sources,
            "build": {
                **report,
                "embed_s": round(embed_s, 2),
                "reused_papers": embeddings.reused,
                "build_s": round(build_s, 2),
                "index_bytes": files[INDEX_FILE]["bytes"],
                "rss_bytes": psutil.Process().memory_info().rss,
                "faiss_threads": faiss.omp_get_max_threads(),
            },
            "files": files,
            "config": to_plain(ix),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        write_json(tmp / MANIFEST_FILE, manifest)
    if not ix.keep_embeddings:
        shutil.rmtree(cache, ignore_errors=True)
    rec = f"recall@{ix.eval.k} {recall:.3f} vs exact, " if recall is not None else ""
    qps = report.get("queries_per_s")
    logger.success(
        f"index: {ix.type} over {len(corpus):,} papers (dim {embeddings.dimension}, {embedder.backend}/"
        f"{embedder.variant}), {rec}{qps if qps is not None else '-'} queries/s; wrote {out_dir} in "
        f"{time.perf_counter() - started:.1f}s."
    )
    return {"dir": out_dir, "manifest": manifest, "embeddings": cache}


def _inputs(cfg: DictConfig) -> list[Path]:
    import glob

    c = cfg.index.corpus
    if c.path is None:
        files = [artifact_path(cfg.paths.processed_dir) / f"{s}.parquet" for s in c.splits]
    else:
        files = [Path(p) for p in sorted(glob.glob(str(c.path)))] or [Path(str(c.path))]
    try:
        location = model_location(cfg)
    except FileNotFoundError:
        return files
    folder = artifact_path(location) if is_remote(location) else _model_folder(location)
    return [*([folder] if folder is not None else []), *files]


SPEC = StageSpec(
    name="index",
    run=run,
    inputs=_inputs,
    outputs=lambda cfg: [index_dir(cfg) / n for n in (INDEX_FILE, METADATA_FILE, MANIFEST_FILE)],
    stamp_dir=index_dir,
    validate=validate,
    config_keys=("index", "seed"),
)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="index")
def main(cfg: DictConfig) -> None:
    from arxiv_embeddings.stage import cli_main

    cli_main(SPEC, cfg)


if __name__ == "__main__":
    main()

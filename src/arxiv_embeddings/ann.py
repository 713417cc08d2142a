"""FAISS index types: how to make an empty index of each type (flat, HNSW, IVF-Flat / IVF-PQ) from the
``index:`` settings, and how the search settings recorded in a manifest are applied again at load. Used by the index
stage and by the evaluation's title -> abstract retrieval; imports faiss only when an index is made."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from arxiv_embeddings.config import ConfigError, choose

if TYPE_CHECKING:
    import faiss


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

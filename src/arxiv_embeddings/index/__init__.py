"""index: embed a corpus of papers and build a FAISS index over it, for nearest-paper search.

    uv run inv index                                                 # the model this run trained, all splits
    uv run inv index --overrides "index.model=sentence-transformers/all-MiniLM-L6-v2 index.type=flat"
    uv run inv index --overrides "index.type=ivf index.ivf.pq_m=48"    # IVF-PQ for a large corpus
    arxiv-embed search "graph neural networks for molecules" -k 5
    arxiv-embed search --id 2401.01234                               # papers like this one

Settings live in ``configs/base.yaml`` (section ``index:``). The stage writes ``${paths.indexes_dir}/<name>/``:

- ``index.faiss``: the FAISS index over L2-normalized embeddings, inner product (= cosine similarity);
- ``metadata.parquet``: ``arxiv_id``, ``title``, ``primary_subject``; row ``i`` is vector id ``i``;
- ``manifest.json``: the model (name, folder, fingerprint of its weights), backend, variant, the model output the
  papers were embedded with (``output``: ``model``, every module of the folder), dimension, count,
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
    index.search_text(embedder, ["a title\nan abstract"], k=5)                     # -> list[list[Hit]]
    index.search_id("2401.01234", k=5)  # -> list[Hit], the paper itself excluded; UnknownPaperError if not indexed
    index.manifest                      # dict: model, model_location, model_fingerprint, backend, variant,
                                        #   output, dimension, count, index_type, index_params, text, build, ...
    index.output                        # the model output its papers were embedded with ("model" if unrecorded)
    len(index)                          # number of papers

``Hit`` is a frozen dataclass ``(arxiv_id, title, primary_subject, score)``, ``score`` the cosine similarity.
Loading fails with :class:`IndexNotFoundError` (no index there), :class:`IndexCorruptedError` (a file is missing,
changed or unreadable) or :class:`ModelMismatchError` (``expected_model`` is not the model that built it; also
raised by ``search``/``search_text`` for vectors or an embedder of another dimension). A loaded index is only read
by ``search*``, so one instance can serve concurrent requests. Nothing here imports torch.

The package's modules: :mod:`~arxiv_embeddings.index.format` (the folder on disk, its errors, the embedding
shards), :mod:`~arxiv_embeddings.index.search` (:class:`PaperIndex`, :func:`query_embedder`),
:mod:`~arxiv_embeddings.index.quality` (recall@k against exact search), :mod:`~arxiv_embeddings.index.build`
(corpus, resumable embedding, building) and :mod:`~arxiv_embeddings.index.stage` (``validate``, ``run``, ``SPEC``,
``main``); the FAISS index types are in :mod:`arxiv_embeddings.ann`. The names above are importable from here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from arxiv_embeddings.ann import INDEX_TYPES as INDEX_TYPES
    from arxiv_embeddings.ann import IndexType as IndexType
    from arxiv_embeddings.ann import apply_search_params as apply_search_params
    from arxiv_embeddings.ann import auto_nlist as auto_nlist
    from arxiv_embeddings.ann import make_index as make_index
    from arxiv_embeddings.index.build import Corpus as Corpus
    from arxiv_embeddings.index.build import build_index as build_index
    from arxiv_embeddings.index.build import embed_corpus as embed_corpus
    from arxiv_embeddings.index.build import embedding_key as embedding_key
    from arxiv_embeddings.index.build import embeddings_dir as embeddings_dir
    from arxiv_embeddings.index.build import load_corpus as load_corpus
    from arxiv_embeddings.index.build import model_location as model_location
    from arxiv_embeddings.index.format import INDEX_FILE as INDEX_FILE
    from arxiv_embeddings.index.format import MANIFEST_FILE as MANIFEST_FILE
    from arxiv_embeddings.index.format import METADATA_COLUMNS as METADATA_COLUMNS
    from arxiv_embeddings.index.format import METADATA_FILE as METADATA_FILE
    from arxiv_embeddings.index.format import SCHEMA_VERSION as SCHEMA_VERSION
    from arxiv_embeddings.index.format import Embeddings as Embeddings
    from arxiv_embeddings.index.format import IndexCorruptedError as IndexCorruptedError
    from arxiv_embeddings.index.format import IndexNotFoundError as IndexNotFoundError
    from arxiv_embeddings.index.format import ModelMismatchError as ModelMismatchError
    from arxiv_embeddings.index.format import UnknownPaperError as UnknownPaperError
    from arxiv_embeddings.index.format import check_model as check_model
    from arxiv_embeddings.index.format import index_dir as index_dir
    from arxiv_embeddings.index.format import index_name as index_name
    from arxiv_embeddings.index.quality import evaluate_index as evaluate_index
    from arxiv_embeddings.index.quality import exact_neighbours as exact_neighbours
    from arxiv_embeddings.index.quality import recall_at_k as recall_at_k
    from arxiv_embeddings.index.quality import true_scores as true_scores
    from arxiv_embeddings.index.search import Hit as Hit
    from arxiv_embeddings.index.search import PaperIndex as PaperIndex
    from arxiv_embeddings.index.search import query_embedder as query_embedder
    from arxiv_embeddings.index.stage import SPEC as SPEC
    from arxiv_embeddings.index.stage import main as main
    from arxiv_embeddings.index.stage import run as run
    from arxiv_embeddings.index.stage import validate as validate

#: Where each name above lives. They are imported on first use, so that reading ``index_dir`` (the API's
#: settings) or the folder's names does not load what building or searching needs (pyarrow, FAISS).
_HOMES: dict[str, str] = {
    "INDEX_TYPES": "arxiv_embeddings.ann",
    "IndexType": "arxiv_embeddings.ann",
    "apply_search_params": "arxiv_embeddings.ann",
    "auto_nlist": "arxiv_embeddings.ann",
    "make_index": "arxiv_embeddings.ann",
    "Corpus": "arxiv_embeddings.index.build",
    "build_index": "arxiv_embeddings.index.build",
    "embed_corpus": "arxiv_embeddings.index.build",
    "embedding_key": "arxiv_embeddings.index.build",
    "embeddings_dir": "arxiv_embeddings.index.build",
    "load_corpus": "arxiv_embeddings.index.build",
    "model_location": "arxiv_embeddings.index.build",
    "INDEX_FILE": "arxiv_embeddings.index.format",
    "MANIFEST_FILE": "arxiv_embeddings.index.format",
    "METADATA_COLUMNS": "arxiv_embeddings.index.format",
    "METADATA_FILE": "arxiv_embeddings.index.format",
    "SCHEMA_VERSION": "arxiv_embeddings.index.format",
    "Embeddings": "arxiv_embeddings.index.format",
    "IndexCorruptedError": "arxiv_embeddings.index.format",
    "IndexNotFoundError": "arxiv_embeddings.index.format",
    "ModelMismatchError": "arxiv_embeddings.index.format",
    "UnknownPaperError": "arxiv_embeddings.index.format",
    "check_model": "arxiv_embeddings.index.format",
    "index_dir": "arxiv_embeddings.index.format",
    "index_name": "arxiv_embeddings.index.format",
    "evaluate_index": "arxiv_embeddings.index.quality",
    "exact_neighbours": "arxiv_embeddings.index.quality",
    "recall_at_k": "arxiv_embeddings.index.quality",
    "true_scores": "arxiv_embeddings.index.quality",
    "Hit": "arxiv_embeddings.index.search",
    "PaperIndex": "arxiv_embeddings.index.search",
    "query_embedder": "arxiv_embeddings.index.search",
    "SPEC": "arxiv_embeddings.index.stage",
    "main": "arxiv_embeddings.index.stage",
    "run": "arxiv_embeddings.index.stage",
    "validate": "arxiv_embeddings.index.stage",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})

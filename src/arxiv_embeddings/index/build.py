"""Building an index: the corpus (the processed splits), its embeddings in resumable shards under
``${paths.indexes_dir}/.embeddings/<key>``, and the FAISS index over them with its build report."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from loguru import logger
from omegaconf import DictConfig, OmegaConf

from arxiv_embeddings.ann import make_index
from arxiv_embeddings.backends.tasks import MODEL
from arxiv_embeddings.config import ConfigError
from arxiv_embeddings.index.format import METADATA_COLUMNS, Embeddings, ModelMismatchError
from arxiv_embeddings.io import file_sha256, is_remote, parquet_file, read_json, read_parquet
from arxiv_embeddings.vectors import normalize_rows

if TYPE_CHECKING:
    import faiss

    from arxiv_embeddings.backends import Embedder


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

    from arxiv_embeddings.layout import split_path
    from arxiv_embeddings.sources import load_raw, normalize

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


@dataclass(frozen=True)
class Encoding:
    """How the index embeds its corpus: :func:`index_encoding` of the ``index`` settings."""

    backend: str
    variant: str | None
    device: str | None
    batch_size: int
    max_batch_tokens: int | None


def index_encoding(ix: DictConfig) -> Encoding:
    """The backend, variant, device, batch size and token cap the index embeds with: the settings as given, except on
    a GPU (``index.encode.device`` cuda, or null on a machine with one), where the batches hold
    ``index.encode.gpu_batch_size`` papers with no token cap, and ``index.backend=auto`` with no ``index.variant``
    means torch in bf16 (fp16 where the GPU lacks bf16): an ONNX export's serving default is a CPU variant, and small
    batches leave most of a GPU idle."""
    backend, variant, device = str(ix.backend), ix.variant, ix.encode.device
    as_given = Encoding(backend, variant, device, int(ix.encode.batch_size), ix.encode.get("max_batch_tokens"))
    if device is not None and not str(device).startswith("cuda"):
        return as_given
    try:
        from arxiv_embeddings.backends.loading import best_precision, default_device

        resolved = str(device or default_device())
    except ImportError:  # the serving install: no torch, so no GPU to use
        return as_given
    if not resolved.startswith("cuda"):
        return as_given
    batch = int(ix.encode.get("gpu_batch_size") or ix.encode.batch_size)
    if backend != "auto" or variant is not None:  # asked for: kept
        return Encoding(backend, variant, resolved, batch, None)
    return Encoding("torch", best_precision(resolved), resolved, batch, None)


def load_index_embedder(ix: DictConfig, location: str, threads: int | None = None) -> Embedder:
    """The embedder the ``index`` settings ask for (:func:`index_encoding`), of the model at ``location``
    (``threads``: onnxruntime's intra-op threads, None = the usable cores; torch's are the process's own)."""
    from arxiv_embeddings.backends import load_embedder

    how = index_encoding(ix)
    return load_embedder(
        location,
        backend=how.backend,
        variant=how.variant,
        device=how.device,
        max_seq_length=ix.encode.max_seq_length,
        threads=threads,
        max_batch_tokens=how.max_batch_tokens,
    )


def embedding_key(
    fingerprint: str, embedder: Embedder, corpus: Corpus, text: str, shard_size: int, output: str = MODEL
) -> dict[str, Any]:
    """What the vectors depend on; shards are reused only when all of it matches."""
    key = {
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
    if output != MODEL:  # the model output's key is unchanged, so its shards of earlier builds are reused
        key["output"] = output
    return key


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


def derive_embeddings(source: Embeddings, folder: Path, transform: Callable[[np.ndarray], np.ndarray]) -> Embeddings:
    """The vectors ``transform`` (rows in, rows out) makes of ``source``'s, shard by shard, as shard files in
    ``folder`` (each complete or absent, :func:`_save_npy`)."""
    folder.mkdir(parents=True, exist_ok=True)
    shards, dimension = [], source.dimension
    for i, (_, vectors) in enumerate(source.iter_shards()):
        out = np.ascontiguousarray(transform(np.asarray(vectors, dtype=np.float32)), dtype=np.float32)
        shards.append(folder / f"shard-{i:05d}.npy")
        _save_npy(shards[-1], out)
        dimension = int(out.shape[1])
    return Embeddings(folder=folder, shards=shards, count=source.count, dimension=dimension)


def embed_corpus(
    embedder: Embedder,
    corpus: Corpus,
    cache_dir: Path,
    text: str,
    shard_size: int,
    batch_size: int,
    key: dict,
    output: str = MODEL,
    only: Collection[int] | None = None,
    label: str = "",
    on_shard: Callable[[Path], None] | None = None,
) -> Embeddings:
    """Embed the corpus shard by shard into ``cache_dir`` (normalized float32, the model's ``output``), reusing the
    shards already there. With ``only``, just those shard numbers (one worker's share; the returned
    :class:`Embeddings` then lists those alone); ``label`` names the worker on the progress bar; ``on_shard`` is
    called with each shard file written (e.g. to copy it to a bucket).

    Memory holds one shard's text and vectors at a time. A shard is written with a rename once it is complete, so
    after a crash the next call with the same ``key`` (recorded in ``cache_dir/key.json``) embeds only the rest.
    """
    from tqdm import tqdm

    from arxiv_embeddings.papers import paper_text_array

    open_cache(cache_dir, key)
    n = len(corpus)
    dim = int(embedder.dimension) if output == MODEL else int(embedder.encode(["x"], output=output).shape[1])
    bounds = shard_bounds(n, shard_size)
    paths = [cache_dir / f"shard-{i:05d}.npy" for i in range(len(bounds))]
    wanted = set(only) if only is not None else None
    mine = [wanted is None or i in wanted for i in range(len(bounds))]
    done = [_valid_shard(p, hi - lo, dim) for p, (lo, hi) in zip(paths, bounds, strict=True)]
    reused = sum(hi - lo for (lo, hi), ok, m in zip(bounds, done, mine, strict=True) if ok and m)
    if reused:
        reused_shards = sum(ok and m for ok, m in zip(done, mine, strict=True))
        logger.info(f"index: reusing {reused_shards} embedding shard(s) ({reused:,} papers) from {cache_dir}.")
    chunk = batch_size * 16
    which = {} if output == MODEL else {"output": output}  # an embedder with one output need not take the argument
    desc = ("embedding" if output == MODEL else f"embedding ({output})") + (f" [{label}]" if label else "")
    total = sum(hi - lo for (lo, hi), m in zip(bounds, mine, strict=True) if m)
    with tqdm(total=total, initial=reused, unit="paper", desc=desc, dynamic_ncols=True) as bar:
        for i, shard in enumerate(corpus.text_shards(shard_size)):
            if done[i] or not mine[i]:
                continue
            texts = paper_text_array(shard, text).to_pylist()
            vectors = np.empty((len(texts), dim), dtype=np.float32)
            for start in range(0, len(texts), chunk):
                part = embedder.encode(texts[start : start + chunk], batch_size=batch_size, normalize=True, **which)
                if part.shape != (len(texts[start : start + chunk]), dim):
                    raise ModelMismatchError(
                        f"The embedder {embedder.name!r} returned vectors of shape {part.shape}, but declares "
                        f"dimension {dim}; check the model folder (its pooling and dense layers)."
                    )
                vectors[start : start + len(part)] = part
                bar.update(len(part))
            _save_npy(paths[i], normalize_rows(vectors))
            if on_shard is not None:
                on_shard(paths[i])
    if only is not None:
        kept = [p for p, m in zip(paths, mine, strict=True) if m]
        return Embeddings(folder=cache_dir, shards=kept, count=total, dimension=dim, reused=reused)
    return Embeddings(folder=cache_dir, shards=paths, count=n, dimension=dim, reused=reused)


def shard_bounds(count: int, shard_size: int) -> list[tuple[int, int]]:
    """``(first row, end row)`` of each embedding shard of a corpus of ``count`` papers."""
    return [(s, min(s + shard_size, count)) for s in range(0, count, shard_size)]


def open_cache(cache_dir: Path, key: dict) -> None:
    """Create the shard folder of ``key`` (recorded in its ``key.json``); a folder made for another key is emptied
    first. Called before workers start, so that they all find the same key."""
    from arxiv_embeddings.io import write_json

    cache_dir.mkdir(parents=True, exist_ok=True)
    key_file = cache_dir / "key.json"
    if key_file.exists() and read_json(key_file) != key:
        logger.warning(f"index: embedding cache {cache_dir} was made for other settings; starting it afresh.")
        shutil.rmtree(cache_dir)
        cache_dir.mkdir(parents=True)
    if not key_file.exists():
        write_json(key_file, key)


def shared_embeddings_dir(cfg: DictConfig, key: dict[str, Any]) -> Path | None:
    """Where the machines of one job share the shards of ``key`` when the indexes are in a bucket:
    ``${paths.indexes_dir}/.embeddings/<hash of the key>`` there (each machine embeds into its local
    :func:`embeddings_dir` and copies its shards up; the build copies the others' down). None on local disk, where
    :func:`embeddings_dir` is itself the shared folder."""
    from arxiv_embeddings.io import artifact_path

    if not is_remote(cfg.paths.indexes_dir):
        return None
    return artifact_path(cfg.paths.indexes_dir) / ".embeddings" / _key_digest(key)


def push_shard(path: Path, shared: Path, key: dict[str, Any]) -> None:
    """Copy one finished shard file (and the key, once) to the shared folder of a bucket."""
    from arxiv_embeddings.io import write_json

    if not (shared / "key.json").exists():
        write_json(shared / "key.json", key)
    (shared / path.name).write_bytes(path.read_bytes())


def pull_shards(shared: Path, cache_dir: Path, key: dict[str, Any]) -> int:
    """Copy the shards of the shared folder that ``cache_dir`` lacks (same key only); returns how many."""
    if not (shared / "key.json").exists() or read_json(shared / "key.json") != key:
        return 0
    open_cache(cache_dir, key)
    copied = 0
    for remote in sorted(shared.glob("shard-*.npy"), key=lambda p: p.name):
        local = cache_dir / remote.name
        if not local.exists():
            tmp = local.with_name(f".{local.name}.tmp-{os.getpid()}")
            tmp.write_bytes(remote.read_bytes())
            os.replace(tmp, local)
            copied += 1
    if copied:
        logger.info(f"index: {copied} embedding shard(s) copied from {shared}.")
    return copied


def _key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def embeddings_dir(cfg: DictConfig, key: dict[str, Any]) -> Path:
    """Shard folder for one embedding key: ``${paths.indexes_dir}/.embeddings/<hash of the key>``.

    With the indexes in a bucket, the shards go to ``${paths.cache_dir}/embeddings/<hash>`` on local disk instead:
    they are written one at a time as the embedding goes, and read back memory-mapped (several passes for
    training, adding and measuring the index), which a bucket cannot do. A part run (``index.part``) also copies
    its shards to :func:`shared_embeddings_dir`, where the build finds them; otherwise a build interrupted on one
    machine resumes only on the same machine.
    """
    digest = _key_digest(key)
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

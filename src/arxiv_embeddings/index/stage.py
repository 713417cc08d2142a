"""The index stage: ``validate(cfg)``, ``run(cfg)``, its :class:`~arxiv_embeddings.runner.StageSpec` and the
``@hydra.main`` entry point of ``python -m arxiv_embeddings.index``."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

import hydra
from loguru import logger
from omegaconf import DictConfig, OmegaConf

from arxiv_embeddings.ann import INDEX_TYPES
from arxiv_embeddings.backends.loading import model_fingerprint, model_folder
from arxiv_embeddings.backends.tasks import ENCODER, MODEL, tasks_of
from arxiv_embeddings.config import (
    CONFIG_DIR,
    ConfigError,
    check_int,
    check_missing,
    choose,
    require,
    require_in,
    require_model_name,
    to_plain,
)
from arxiv_embeddings.index.build import (
    build_index,
    derive_embeddings,
    embed_corpus,
    embedding_key,
    embeddings_dir,
    index_encoding,
    load_corpus,
    load_index_embedder,
    model_location,
    pull_shards,
    push_shard,
    shard_bounds,
    shared_embeddings_dir,
)
from arxiv_embeddings.index.format import (
    INDEX_FILE,
    METADATA_FILE,
    SCHEMA_VERSION,
    SEARCH_INDEX_FILE,
    Embeddings,
    index_dir,
    index_name,
)
from arxiv_embeddings.index.quality import evaluate_index
from arxiv_embeddings.index.workers import embed_in_workers
from arxiv_embeddings.io import artifact_path, atomic_dir, file_sha256, is_remote
from arxiv_embeddings.layout import MANIFEST_FILE, processed_split
from arxiv_embeddings.runner import StageSpec
from arxiv_embeddings.vectors import normalize_rows


def validate(cfg: DictConfig) -> None:
    """Check the ``index`` settings before any work, naming the offending key and the fix."""
    from arxiv_embeddings.backends import BACKENDS
    from arxiv_embeddings.layout import SPLITS
    from arxiv_embeddings.texts import TEXT_FIELDS

    check_missing(cfg)
    ix = cfg.index
    require_model_name(ix.model, "index.model")
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
    check_int(ix.encode.batch_size, "index.encode.batch_size")
    check_int(ix.encode.get("gpu_batch_size"), "index.encode.gpu_batch_size", optional=True)
    check_int(ix.encode.max_seq_length, "index.encode.max_seq_length", optional=True)
    check_int(ix.encode.get("max_batch_tokens"), "index.encode.max_batch_tokens", optional=True)
    check_int(ix.shard_size, "index.shard_size")
    check_int(ix.hnsw.m, "index.hnsw.m", minimum=2)
    check_int(ix.hnsw.ef_construction, "index.hnsw.ef_construction")
    check_int(ix.hnsw.ef_search, "index.hnsw.ef_search")
    check_int(ix.ivf.nlist, "index.ivf.nlist", optional=True)
    check_int(ix.ivf.nprobe, "index.ivf.nprobe")
    check_int(ix.ivf.pq_m, "index.ivf.pq_m", minimum=0)
    check_int(ix.ivf.pq_nbits, "index.ivf.pq_nbits")
    require(ix.ivf.pq_nbits <= 16, "index.ivf.pq_nbits", f"got {ix.ivf.pq_nbits}; expected 1 to 16 (8 is usual).")
    check_int(ix.ivf.refine_k_factor, "index.ivf.refine_k_factor", minimum=0)
    check_int(ix.ivf.train_size, "index.ivf.train_size", optional=True)
    check_int(ix.ivf.kmeans_iterations, "index.ivf.kmeans_iterations")
    check_int(ix.eval.queries, "index.eval.queries", minimum=0)
    check_int(ix.eval.k, "index.eval.k")
    r = ix.eval.min_recall
    require(
        r is None or (isinstance(r, (int, float)) and not isinstance(r, bool) and 0 <= r <= 1),
        "index.eval.min_recall",
        f"got {r!r}; expected a number from 0 to 1, or null.",
    )
    check_int(ix.threads, "index.threads", optional=True)
    check_int(ix.get("workers", 1), "index.workers")
    parse_part(ix.get("part"))
    name = index_name(cfg)
    require(
        bool(name) and name not in {".", ".."} and "/" not in name and "\\" not in name and not name.startswith("."),
        "index.name",
        f"got {name!r}; an index name is one folder name (no '/', not starting with '.').",
    )


def run(cfg: DictConfig) -> dict[str, Any]:
    """Embed the corpus, build the index, measure it, and write it (all files at once, or none)."""
    import faiss
    import psutil

    from arxiv_embeddings.io import write_json, write_parquet

    validate(cfg)
    started = time.perf_counter()
    ix = cfg.index
    if ix.threads:
        faiss.omp_set_num_threads(int(ix.threads))
    from arxiv_embeddings.backends.loading import fetch_model

    location = model_location(cfg)  # fails on a missing run or folder before any work
    local = fetch_model(location, cfg.paths.cache_dir)  # a model in a bucket: its local copy
    corpus = load_corpus(cfg)
    embedder = load_index_embedder(ix, local, int(ix.threads) if ix.threads else None)
    folder = model_folder(local)
    fingerprint = model_fingerprint(folder) if folder is not None else f"name:{location}"
    # The search task's output, when the model serves it with another one than its own (a subject head over an
    # encoder, tasks.json): the papers get a second index in that output for free-text queries.
    query_output = tasks_of(local).tasks.get("search", MODEL)
    t0 = time.perf_counter()
    part = parse_part(ix.get("part"))
    if part is not None:  # one share of the embedding (a job of several machines); a last run builds the index
        return _embed_part(cfg, embedder, corpus, fingerprint, local, query_output, part)
    embeddings, search_embeddings, caches = _embed(cfg, embedder, corpus, fingerprint, folder, query_output, local)
    embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index, params = build_index(str(ix.type), embeddings, ix, int(cfg.seed))
    search_index = None
    if search_embeddings is not None:
        search_index, _ = build_index(str(ix.type), search_embeddings, ix, int(cfg.seed))
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
        names = [INDEX_FILE, METADATA_FILE]
        search: dict[str, Any] | None = None
        if search_index is not None and search_embeddings is not None:
            faiss.write_index(search_index, str(tmp / SEARCH_INDEX_FILE))
            names.append(SEARCH_INDEX_FILE)
            search = {
                "output": query_output,
                "file": SEARCH_INDEX_FILE,
                "dimension": search_embeddings.dimension,
                "build": evaluate_index(
                    search_index, search_embeddings, int(ix.eval.queries), int(ix.eval.k), int(cfg.seed)
                ),
            }
        files = {n: {"sha256": file_sha256(tmp / n), "bytes": (tmp / n).stat().st_size} for n in names}
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "name": out_dir.name,
            "model": str(ix.model),
            "model_location": location if is_remote(location) or folder is None else str(Path(folder).resolve()),
            "model_fingerprint": fingerprint,
            "backend": embedder.backend,
            "variant": embedder.variant,
            # The model output the papers were embedded with (the whole model): "papers like this one" searches here.
            "output": MODEL,
            # With a search output of its own: the second index, that free-text queries are embedded for and
            # searched in (null: they are embedded with the model output and searched in the first).
            "search": search,
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
                "embed_workers": embeddings.workers,
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
        for cache in caches:
            shutil.rmtree(cache, ignore_errors=True)
    rec = f"recall@{ix.eval.k} {recall:.3f} vs exact, " if recall is not None else ""
    qps = report.get("queries_per_s")
    logger.success(
        f"index: {ix.type} over {len(corpus):,} papers (dim {embeddings.dimension}, {embedder.backend}/"
        f"{embedder.variant}), {rec}{qps if qps is not None else '-'} queries/s; wrote {out_dir} in "
        f"{time.perf_counter() - started:.1f}s."
    )
    return {"dir": out_dir, "manifest": manifest, "embeddings": caches[0]}


def parse_part(value: Any) -> tuple[int, int] | None:
    """``index.part`` (``"k/N"``: shards ``k, k + N, ...``, k counted from 0) as ``(k, N)``; None for null."""
    if value is None:
        return None
    text = str(value).strip()
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and int(n) >= 1 and int(k) < int(n)):
        raise ConfigError(
            f"index.part: got {value!r}; expected 'k/N' with 0 <= k < N (e.g. 0/4 for the first of 4 workers), or "
            "null to embed the whole corpus."
        )
    return int(k), int(n)


def _outputs_to_embed(query_output: str, folder: Path | None) -> list[str]:
    """The outputs the corpus is embedded in: the model's, and the search task's when it is another one (a head
    over the encoder is applied to the encoder's vectors instead of embedding the model output)."""
    if query_output == MODEL:
        return [MODEL]
    if query_output == ENCODER and _head_over_encoder(folder) is not None:
        return [ENCODER]
    return [query_output, MODEL]


def _embed_part(
    cfg: DictConfig, embedder: Any, corpus: Any, fingerprint: str, local: str, query_output: str, part: tuple[int, int]
) -> dict[str, Any]:
    """``index.part=k/N``: embed this worker's shards of every output the index needs into the shared embedding
    folders, and stop: the run without ``index.part`` finds every shard there and builds the index."""
    ix = cfg.index
    text, shard, batch = str(ix.text), int(ix.shard_size), index_encoding(ix).batch_size
    folder = model_folder(local)
    caches, shared_dirs, papers = [], [], 0
    count = len(shard_bounds(len(corpus), shard))
    for output in _outputs_to_embed(query_output, folder):
        key = embedding_key(fingerprint, embedder, corpus, text, shard, output)
        cache = embeddings_dir(cfg, key)
        shared = shared_embeddings_dir(cfg, key)  # with the indexes in a bucket: where the other machines look

        def push(path: Path, shared: Path | None = shared, key: dict[str, Any] = key) -> None:
            if shared is not None:
                push_shard(path, shared, key)

        label = f"part {part[0]}/{part[1]}"
        mine = range(part[0], count, part[1])
        if int(ix.get("workers", 1)) > 1:  # this machine's share, split among its worker processes
            embed_in_workers(cfg, local, corpus, output, key, cache, int(ix.workers), only=mine)
        done = embed_corpus(
            embedder, corpus, cache, text, shard, batch, key, output, only=mine, label=label, on_shard=push
        )
        for path in done.shards:  # shards this machine had already (a resumed part) reach the bucket too
            if shared is not None and not (shared / path.name).exists():
                push(path)
        caches.append(cache)
        shared_dirs.append(shared if shared is not None else cache)
        papers += done.count
    logger.success(
        f"index: part {part[0]}/{part[1]} embedded {papers:,} paper vectors ({len(caches)} output(s)) into "
        f"{', '.join(map(str, shared_dirs))}; run the index stage without index.part to build the index from every part."
    )
    return {
        "part": f"{part[0]}/{part[1]}",
        "embeddings": caches,
        "shared": [str(d) for d in shared_dirs],
        "shards": count,
        "papers": papers,
    }


def _embed(
    cfg: DictConfig,
    embedder: Any,
    corpus: Any,
    fingerprint: str,
    folder: Path | None,
    query_output: str,
    local: str,
) -> tuple[Embeddings, Embeddings | None, list[Path]]:
    """The papers' vectors in the model output and, when the search task has another output, in that one too, with
    the cache folders they are in. A head that starts from the encoder's normalized vectors (Normalize -> Dense ->
    Normalize, as train.head fits it) is applied to them here, so the corpus is embedded once; any other model is
    embedded once per output. With ``index.workers > 1``, worker processes embed the shards first
    (:func:`embed_in_workers`)."""
    ix = cfg.index
    text, shard, batch = str(ix.text), int(ix.shard_size), index_encoding(ix).batch_size
    workers = int(ix.get("workers", 1))

    def embed(output: str) -> tuple[Embeddings, Path]:
        key = embedding_key(fingerprint, embedder, corpus, text, shard, output)
        cache = embeddings_dir(cfg, key)
        shared = shared_embeddings_dir(cfg, key)
        if shared is not None:  # the shards other machines embedded (index.part) for this key
            pull_shards(shared, cache, key)
        if workers > 1:
            before, started = embed_in_workers(cfg, local, corpus, output, key, cache, workers)
            done = embed_corpus(embedder, corpus, cache, text, shard, batch, key, output)  # what is left, if any
            return dataclasses.replace(done, reused=before, workers=max(started, 1)), cache
        return embed_corpus(embedder, corpus, cache, text, shard, batch, key, output), cache

    if query_output == MODEL:
        embeddings, cache = embed(MODEL)
        return embeddings, None, [cache]
    head = _head_over_encoder(folder) if query_output == ENCODER else None
    search, search_cache = embed(query_output)
    if head is None:
        embeddings, cache = embed(MODEL)
    else:
        cache = embeddings_dir(cfg, embedding_key(fingerprint, embedder, corpus, text, shard))
        embeddings = dataclasses.replace(derive_embeddings(search, cache, head), workers=search.workers)
    return embeddings, search, [cache, search_cache]


def _head_over_encoder(folder: Path | None) -> Any:
    """The model's modules after its Pooling as a function of the encoder output, when they begin with a Normalize
    (so they see exactly the encoder's L2-normalized vectors); None otherwise."""
    from arxiv_embeddings.backends.onnx_embedder import read_pipeline

    if folder is None:
        return None
    try:
        pipeline = read_pipeline(Path(folder))
    except (ValueError, OSError) as err:
        logger.info(f"index: the model output is embedded on its own ({err}).")
        return None
    if not pipeline.post or pipeline.post[0][0] != "normalize":
        return None
    return lambda vectors: normalize_rows(pipeline.apply_post(vectors))


def _inputs(cfg: DictConfig) -> list[Path]:
    import glob

    c = cfg.index.corpus
    if c.path is None:
        files = [processed_split(cfg, s) for s in c.splits]
    else:
        files = [Path(p) for p in sorted(glob.glob(str(c.path)))] or [Path(str(c.path))]
    try:
        location = model_location(cfg)
    except FileNotFoundError:
        return files
    folder = artifact_path(location) if is_remote(location) else model_folder(location)
    return [*([folder] if folder is not None else []), *files]


def _stamp_dir(cfg: DictConfig) -> Path:
    """The index folder; for a part run (``index.part``) a folder of its own beside it, so that no part replaces the
    build's stamp or another part's."""
    part = parse_part(cfg.index.get("part"))
    if part is None:
        return index_dir(cfg)
    return index_dir(cfg).with_name(f".{index_dir(cfg).name}.part-{part[0]}-of-{part[1]}")


SPEC = StageSpec(
    name="index",
    run=run,
    inputs=_inputs,
    # a part run (index.part) writes embedding shards only
    outputs=lambda cfg: (
        []
        if cfg.index.get("part") is not None
        else [index_dir(cfg) / n for n in (INDEX_FILE, METADATA_FILE, MANIFEST_FILE)]
    ),
    # a part run's stamp beside the index folder, one per part: the build's own stamp is never replaced by one
    stamp_dir=lambda cfg: _stamp_dir(cfg),
    validate=validate,
    config_keys=("index", "seed"),
)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="index")
def main(cfg: DictConfig) -> None:
    from arxiv_embeddings.runner import cli_main

    cli_main(SPEC, cfg)

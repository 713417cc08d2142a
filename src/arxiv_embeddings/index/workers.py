"""Embedding a corpus in worker processes on one machine (``index.workers``): each worker loads the model with its
share of the threads and embeds every ``workers``-th missing shard into the shared embedding folder; the index
stage then reads every shard back and builds the index as usual. A worker that fails leaves the shards it finished,
so the next run resumes from them.

Why processes with a thread or two each rather than one process with every thread: the threads of one model call
wait for each other after every operation, so on a few cores separate calls on separate cores go further (the API
serves the same way; bench/README.md#index has the measurement)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger
from omegaconf import DictConfig, OmegaConf


def _shard_rows(path: Path) -> int | None:
    """Rows of a shard file that can be read, else None."""
    if not path.exists():
        return None
    try:
        return int(np.load(path, mmap_mode="r").shape[0])
    except (OSError, ValueError):
        return None


def missing_shards(
    cache: Path, count: int, shard_size: int, only: Collection[int] | None = None
) -> tuple[list[int], int]:
    """The shard numbers of ``cache`` still to embed (of ``only``, when given), and the papers of the shards
    already there."""
    from arxiv_embeddings.index.build import shard_bounds

    wanted = set(only) if only is not None else None
    missing, done = [], 0
    for i, (lo, hi) in enumerate(shard_bounds(count, shard_size)):
        if wanted is not None and i not in wanted:
            continue
        if _shard_rows(cache / f"shard-{i:05d}.npy") == hi - lo:
            done += hi - lo
        else:
            missing.append(i)
    return missing, done


def embed_in_workers(
    cfg: DictConfig,
    location: str,
    corpus: Any,
    output: str,
    key: dict[str, Any],
    cache: Path,
    workers: int,
    only: Collection[int] | None = None,
) -> tuple[int, int]:
    """Embed the missing shards of ``output`` in ``min(workers, missing shards)`` processes; returns the papers of
    the shards that were there before and the processes started (0 when one process is enough: the caller embeds
    what is left). ``only``: these shard numbers alone (a machine's share of a job, ``index.part``). Raises
    :class:`RuntimeError` naming a worker that failed."""
    from arxiv_embeddings.backends.onnx_embedder import usable_cpus
    from arxiv_embeddings.index.build import open_cache

    ix = cfg.index
    open_cache(cache, key)
    missing, before = missing_shards(cache, len(corpus), int(ix.shard_size), only)
    n = min(int(workers), len(missing))
    if n <= 1:
        if missing:
            logger.info(
                f"index: {len(missing)} shard(s) of {int(ix.shard_size):,} papers left to embed, so one process "
                f"embeds them (lower index.shard_size to split the corpus among index.workers={workers})."
            )
        return before, 0
    threads = max(1, int(ix.threads or usable_cpus()) // n)
    logger.info(
        f"index: {len(missing)} shard(s) to embed ({output}) in {n} worker processes, {threads} thread(s) each."
    )
    plain = OmegaConf.to_container(cfg, resolve=True)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch or faiss threads inherited
    processes = [
        context.Process(
            target=_work,
            args=(plain, location, output, key, str(cache), missing[rank::n], threads),
            name=f"index-embed-{rank}",
        )
        for rank in range(n)
    ]
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.join()
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join()
    failed = [(p.name, p.exitcode) for p in processes if p.exitcode != 0]
    if failed:
        raise RuntimeError(
            f"index: embedding worker(s) {', '.join(f'{name} (exit code {code})' for name, code in failed)} failed; "
            f"their log is above. The shards finished so far are kept in {cache}: run the stage again to resume, "
            "or set index.workers=1."
        )
    return before, n


def _work(
    plain: dict[str, Any], location: str, output: str, key: dict[str, Any], cache: str, shards: list[int], threads: int
) -> None:
    """One worker: load the model with ``threads`` threads and embed ``shards`` of the corpus into ``cache``."""
    from arxiv_embeddings.index.build import embed_corpus, index_encoding, load_corpus, load_index_embedder
    from arxiv_embeddings.logging_utils import setup_logging

    setup_logging()
    cfg = OmegaConf.create(plain)
    ix = cfg.index
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # the serving install: ONNX Runtime only
        pass
    embedder = load_index_embedder(ix, location, threads)
    if (embedder.backend, embedder.variant) != (key["backend"], key["variant"]):
        raise RuntimeError(
            f"the worker loaded {embedder.backend}/{embedder.variant} where the index stage has "
            f"{key['backend']}/{key['variant']}; pass index.backend and index.variant explicitly."
        )
    text, shard, batch = str(ix.text), int(ix.shard_size), index_encoding(ix).batch_size
    label = f"worker {multiprocessing.current_process().name}"
    embed_corpus(embedder, load_corpus(cfg), Path(cache), text, shard, batch, key, output, only=shards, label=label)

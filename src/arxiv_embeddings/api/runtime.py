"""What the server needs from the machine it runs on: the CPU layout of its model workers, the model to serve and a
local copy of a bucket folder, token counts for ``usage``, a quiet tqdm and a malloc trimmer."""

from __future__ import annotations

import copy
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from loguru import logger

from arxiv_embeddings.api.settings import Settings
from arxiv_embeddings.backends.onnx_embedder import usable_cpus
from arxiv_embeddings.layout import latest_trained_model

if TYPE_CHECKING:
    from arxiv_embeddings.backends import Embedder


def cpu_layout(threads: int | None, workers: int | None, cores: int | None = None) -> tuple[int, int]:
    """(intra-op threads per worker, workers) on a CPU of ``cores`` usable cores (default: this process's).

    Neither set: one thread per worker, one worker per core. One set: the other fills the cores. Both: as given.
    """
    cores = cores or usable_cpus()
    if threads and workers:
        return threads, workers
    if threads:
        return threads, max(1, cores // threads)
    if workers:
        return max(1, cores // workers), workers
    return 1, cores


def choose_model(settings: Settings) -> str:
    """``model_path`` if set; else the last trained model under ``models_dir``; else ``base_model``."""
    if settings.model_path:
        return settings.model_path
    latest = latest_trained_model(settings.models_dir)
    if latest is not None:
        logger.info(f"Serving the most recently trained model {latest} (set MODEL_PATH or serve.model_path to choose).")
        return str(latest)
    logger.info(f"No trained model under {settings.models_dir}; serving the base model {settings.base_model}.")
    return settings.base_model


def no_progress_monitor() -> None:
    """Keep tqdm from starting its monitor thread in the server: tqdm starts one on the first bar it makes, even a
    disabled one, and sentence-transformers' ``encode`` makes one per call (with ``show_progress_bar=False``), so a
    torch server would carry a thread that wakes every 10 s to watch bars nobody sees."""
    from tqdm import tqdm

    tqdm.monitor_interval = 0


class BucketCopyError(RuntimeError):
    """A model or index folder in a bucket could not be copied to the local cache."""


def local_copy_of(location: str, cache_dir: Path, what: str, setting: str) -> str:
    """``location`` itself, or for a bucket folder (``gs://...``) its local copy under ``cache_dir``, downloaded once
    per content (:func:`arxiv_embeddings.io.local_copy`): a restart with the same files downloads nothing."""
    from arxiv_embeddings.io import is_remote

    if not is_remote(location):
        return location
    from arxiv_embeddings.io import local_copy

    started = time.perf_counter()
    logger.info(f"Copying the {what} {location} to {cache_dir} (skipped when a copy of the same files is there).")
    try:
        folder = local_copy(location, cache_dir)
    except Exception as err:  # no such folder, no access, no network, a full disk: all end the start-up the same way
        raise BucketCopyError(
            f"could not copy the {what} {location} to {cache_dir}: {type(err).__name__}: {err}. Check {setting} "
            "(a folder such as gs://bucket/models/<run>/final) and that this service's account may read it."
        ) from err
    logger.info(f"The {what} {location} is read from {folder} ({time.perf_counter() - started:.1f}s).")
    return str(folder)


class MemoryTrimmer:
    """Calls glibc's ``malloc_trim(0)`` at most every ``interval`` seconds (a no-op without glibc).

    Tensors of many sizes (batches padded to different lengths) leave free chunks all over the heap; glibc keeps
    them, so RSS creeps up for minutes under load. Trimming returns the free pages to the OS; it takes a few
    milliseconds, run in the model's worker thread between batches.
    """

    def __init__(self, interval: float | None) -> None:
        self.interval = interval
        self._last = time.monotonic()
        self._trim: Callable[[int], int] | None = None
        if interval and sys.platform.startswith("linux"):
            import ctypes
            import ctypes.util

            try:
                self._trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
            except (OSError, AttributeError):  # not glibc (e.g. musl)
                self._trim = None

    def maybe_trim(self) -> bool:
        if self._trim is None or self.interval is None or time.monotonic() - self._last < self.interval:
            return False
        self._trim(0)
        self._last = time.monotonic()
        return True


def token_counter(embedder: Embedder) -> Callable[[list[str]], int] | None:
    """Tokens the model reads for some texts (truncated as it truncates), for OpenAI-style ``usage``; None when
    the embedder exposes no tokenizer."""
    # Counting runs in its own threads while the model thread encodes. A Rust tokenizer must not be used from two
    # threads at once (it fails with "Already borrowed"), so counting uses a private copy, one call at a time.
    lock = threading.Lock()
    # An embedder that counts tokens itself (both backends) counts with a replica: its own tokenizer, the same
    # weights (the torch one's tokenizer changes its settings on every call).
    replica = getattr(embedder, "replica", None)
    counts = getattr(replica() if callable(replica) else embedder, "token_counts", None)
    if callable(counts):

        def count_own(texts: list[str]) -> int:
            with lock:
                return int(np.sum(counts(texts)))

        return count_own
    limit = int(embedder.max_seq_length)
    model = getattr(embedder, "model", None)
    hf = getattr(model, "tokenizer", None)  # sentence-transformers' Hugging Face tokenizer (torch backend)
    if hf is not None:
        own = copy.deepcopy(hf)

        def count_hf(texts: list[str]) -> int:
            with lock:
                ids = own(texts, truncation=True, max_length=limit, add_special_tokens=True)["input_ids"]
            return int(sum(len(row) for row in ids))

        return count_hf
    return None

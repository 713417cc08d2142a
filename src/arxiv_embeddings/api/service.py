"""What the API holds while it runs: the embedder, the tasks it serves (the model folder's ``tasks.json``), the
micro-batcher, the optional search index and their state.

:meth:`Service.start` loads everything in a background thread, so the server answers ``/health`` (503) while the
model loads and ``/health`` turns 200 once it is ready (or stays 503 with the reason when loading failed).
"""

from __future__ import annotations

import copy
import sys
import threading
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from arxiv_embeddings.api.batching import MicroBatcher
from arxiv_embeddings.api.settings import Settings
from arxiv_embeddings.backends.onnx_embedder import usable_cpus
from arxiv_embeddings.backends.tasks import MODEL, TaskMap, tasks_of
from arxiv_embeddings.layout import FINAL_DIR, TRAIN_SUMMARY_FILE
from arxiv_embeddings.vectors import normalize_rows

if TYPE_CHECKING:
    from arxiv_embeddings.backends import Embedder
    from arxiv_embeddings.index.search import PaperIndex

#: Signature of :func:`arxiv_embeddings.backends.load_embedder`.
LoadEmbedder = Callable[..., "Embedder"]

try:
    VERSION = version("arxiv-embeddings")
except PackageNotFoundError:  # a source tree that was never installed
    VERSION = "0+unknown"


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


def latest_trained_model(models_dir: Path) -> Path | None:
    """The most recently written ``<models_dir>/*/final`` that the train stage finished (it writes
    ``train_summary.json`` last). A base model that ``inv export`` saved there from the Hub is not a trained one."""
    if not models_dir.is_dir():
        return None
    finals = [p for p in models_dir.glob(f"*/{FINAL_DIR}") if (p / TRAIN_SUMMARY_FILE).exists()]
    return max(finals, key=lambda p: p.stat().st_mtime, default=None)


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


class Metrics:
    """The API's own Prometheus metrics (HTTP counts and latencies come from prometheus-fastapi-instrumentator)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.batch_size = Histogram(
            "embedding_batch_size",
            "Texts per model call of the micro-batcher.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "embedding_batch_seconds",
            "Seconds per model call of the micro-batcher.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.texts = Counter("embedding_texts", "Texts embedded.", registry=registry)
        self.queue = Gauge("embedding_queue_texts", "Texts waiting for the model.", registry=registry)
        self.rejected = Counter(
            "embedding_rejected_requests", "Requests refused with 429 (queue full).", registry=registry
        )

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        self.texts.inc(size)


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


class Service:
    """Loads the model (and index) once and serves them to the routes."""

    def __init__(self, settings: Settings, load_embedder: LoadEmbedder, metrics: Metrics) -> None:
        self.settings = settings
        self._load_embedder = load_embedder
        self.metrics = metrics
        self.status = "loading"  # loading | ready | failed | stopping
        self.error: str | None = None
        self.model_name: str | None = None  # as configured: a folder, a Hub name or a gs:// URL
        self.model_folder: str | None = None  # what is loaded: the same, or the local copy of a bucket folder
        self.embedder: Embedder | None = None
        self.batcher: MicroBatcher | None = None
        self.index: PaperIndex | None = None
        self.count_tokens: Callable[[list[str]], int] | None = None
        self.tasks: TaskMap | None = None  # the tasks served and their outputs, from the model folder's tasks.json
        self.dimensions: dict[str, int] = {}  # length of each output's vectors (from the warm-up)
        self.search_output = MODEL  # what /search embeds a query text with: the index's own output
        self.workers = 0  # model worker threads, once loaded
        self.threads = 0  # intra-op threads of each
        self._thread: threading.Thread | None = None
        metrics.queue.set_function(lambda: self.batcher.queued_texts if self.batcher else 0)

    # ------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Load in the background; :attr:`status` turns ``ready`` or ``failed``."""
        self.status, self.error = "loading", None
        no_progress_monitor()
        self._thread = threading.Thread(target=self._load_safely, name="model-loader", daemon=True)
        self._thread.start()

    def wait_loaded(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.status == "ready"

    def _load_safely(self) -> None:
        started = time.perf_counter()
        try:
            self._load()
        except Exception as err:
            self.status, self.error = "failed", f"{type(err).__name__}: {err}"
            logger.opt(exception=err).error(f"Loading the model failed; /health answers 503. {self.error}")
            return
        if self.status == "loading":
            self.status = "ready"
            index = f", index of {len(self.index):,} papers" if self.index is not None else ", no search index"
            e = self.embedder
            assert e is not None
            logger.info(
                f"Ready in {time.perf_counter() - started:.1f}s: {self.model_name} ({e.backend}/{e.variant}, "
                f"{e.dimension}-d, {e.device}, {self.workers} worker(s) x {self.threads} thread(s)){index}."
            )

    def _load(self) -> None:
        s = self.settings
        self.model_name = choose_model(s)
        self.model_folder = local_copy_of(self.model_name, s.cache_dir, "model", "MODEL_PATH / serve.model_path")
        tasks = tasks_of(self.model_folder)  # a malformed tasks.json fails the start-up, naming the file
        threads, workers = cpu_layout(s.threads, s.workers)
        embedder = self._load_embedder(
            self.model_folder,
            backend=s.backend,
            variant=s.variant,
            device=s.device,
            max_seq_length=s.max_seq_length,
            threads=threads,  # onnxruntime's intra-op threads; torch's are set in each worker thread below
        )

        def warm_up(output: str) -> int:
            """The first call of an output allocates (kept out of the first request) and gives its dimension; an
            output the backend cannot compute fails the start-up here rather than a request."""
            return int(embedder.encode(["warm-up"], batch_size=1, output=output).shape[1])

        dimensions = {output: warm_up(output) for output in tasks.outputs}
        if str(embedder.device) != "cpu" and s.workers is None:
            workers = 1  # one GPU: one worker keeps it busy with whole batches
        # Each worker encodes with its own copy of the tokenizer and modules around the same weights.
        encoders = [embedder]
        for _ in range(workers - 1):
            replica = getattr(embedder, "replica", None)
            if replica is None:
                logger.warning(f"{type(embedder).__name__} cannot be shared between threads; serving with 1 worker.")
                break
            encoders.append(replica())
        self.workers, self.threads = len(encoders), threads
        self.embedder = embedder
        self.count_tokens = token_counter(embedder)
        self.index = self._load_index()
        self.search_output = self._search_output(tasks)
        if self.search_output not in dimensions:
            dimensions[self.search_output] = warm_up(self.search_output)
        self.tasks, self.dimensions = tasks, dimensions
        logger.info(
            f"Tasks ({tasks.origin}): "
            + ", ".join(f"{t} -> {tasks.tasks[t]} ({dimensions[tasks.tasks[t]]}-d)" for t in tasks.names)
            + f"; default {tasks.default}."
        )

        def worker_setup() -> None:
            if embedder.backend == "torch":
                import torch

                torch.set_num_threads(threads)  # applies to the calling thread: each worker, not the whole process

        trimmer = MemoryTrimmer(s.trim_interval_s)

        def after_batch(size: int, seconds: float) -> None:
            self.metrics.observe_batch(size, seconds)
            trimmer.maybe_trim()

        def encoder(e: Embedder) -> Callable[[list[str], str], np.ndarray]:
            # The batcher's group is the output: a batch holds the texts of one output only.
            return lambda texts, output: e.encode(texts, batch_size=s.encode_batch_size, normalize=False, output=output)

        self.batcher = MicroBatcher(
            [encoder(e) for e in encoders],
            max_batch_size=s.batch_size,
            max_wait_s=s.batch_wait_ms / 1000,
            max_queue=s.queue_size,
            on_batch=after_batch,
            on_start=worker_setup,
        )

    def _load_index(self) -> PaperIndex | None:
        s = self.settings
        if not s.search:
            logger.info("Search is off (serve.search=false).")
            return None
        from arxiv_embeddings.index.search import PaperIndex

        if s.index_path is not None:  # asked for explicitly: failing to load it fails the start-up
            folder = local_copy_of(s.index_path, s.cache_dir, "index", "INDEX_PATH / serve.index_path")
            return PaperIndex.load(folder, expected_model=self.model_folder)
        default = s.default_index_path
        if default is None or not (default / "manifest.json").exists():
            logger.info(f"No search index at {default}; /search answers 404 (build one with 'uv run inv index').")
            return None
        try:
            return PaperIndex.load(default, expected_model=self.model_folder)
        except (ValueError, OSError) as err:
            logger.warning(f"Not using the index at {default}: {err}")
            return None

    def _search_output(self, tasks: TaskMap) -> str:
        """The output /search embeds a query text with: the index's own (its vectors and the query's must live in
        one space), which the ``search`` task's output should be; a warning when they differ."""
        if self.index is None:
            return tasks.tasks.get("search", tasks.output_of(None))
        built = self.index.output
        wanted = tasks.tasks.get("search")
        if wanted is not None and wanted != built:
            logger.warning(
                f"The index at {self.index.path} was built with the {built!r} output but {tasks.origin} serves the "
                f"search task with {wanted!r}: /search embeds query texts with {built!r}, the index's space. Rebuild "
                f"the index with the {wanted!r} output to search with it."
            )
        return built

    def stop(self) -> None:
        """Finish the queued texts and stop the worker (within ``shutdown_timeout_s``)."""
        self.status = "stopping"
        if self.batcher is not None and not self.batcher.close(timeout=self.settings.shutdown_timeout_s):
            logger.warning(f"The model worker did not finish within {self.settings.shutdown_timeout_s}s.")

    # ------------------------------------------------------------------------------------------- info
    def health(self) -> dict[str, Any]:
        e = self.embedder
        if e is None:
            raise RuntimeError("health() called before the model loaded")
        tasks = self.tasks
        assert tasks is not None
        return {
            "status": "ok",
            "model": self.model_name,
            "dimension": self.dimensions[tasks.output_of(None)],
            "default_task": tasks.default,
            "tasks": dict(tasks.as_dict()["tasks"]),
            "search_output": self.search_output if self.index is not None else None,
            "backend": e.backend,
            "variant": e.variant,
            "device": str(e.device),
            "max_seq_length": int(e.max_seq_length),
            "workers": self.workers,
            "threads": self.threads,
            "version": VERSION,
            "index_size": len(self.index) if self.index is not None else None,
        }


def token_counter(embedder: Embedder) -> Callable[[list[str]], int] | None:
    """Tokens the model reads for some texts (truncated as it truncates), for OpenAI-style ``usage``; None when
    the embedder exposes no tokenizer."""
    # Counting runs in its own threads while the model thread encodes. A Rust tokenizer must not be used from two
    # threads at once (it fails with "Already borrowed"), so counting uses a private copy, one call at a time.
    lock = threading.Lock()
    counts = getattr(embedder, "token_counts", None)  # the ONNX backend counts as it tokenizes
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


def postprocess(vectors: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """Matryoshka truncation to ``dimensions``, then L2-normalization; a new array (shared rows stay untouched)."""
    out = np.array(vectors[:, :dimensions] if dimensions else vectors, dtype=np.float32, copy=True)
    return normalize_rows(out) if normalize else out

"""What the API holds while it runs and what a request means: the embedder, the tasks it serves (the model folder's
``tasks.json``), the micro-batcher, the optional search index, their state, and :meth:`Service.embed` and
:meth:`Service.search`, which own a request's semantics (readiness, limits, the task, the 429 of a full queue, token
counts, truncation and normalization) so that each route is a few lines.

:meth:`Service.start` loads everything in a background thread, so the server answers ``/health`` (503) while the
model loads and ``/health`` turns 200 once it is ready (or stays 503 with the reason when loading failed).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import numpy as np
from loguru import logger

from arxiv_embeddings.api.batching import BatcherClosedError, MicroBatcher, QueueFullError
from arxiv_embeddings.api.errors import ApiError
from arxiv_embeddings.api.metrics import Metrics
from arxiv_embeddings.api.runtime import (
    MemoryTrimmer,
    choose_model,
    cpu_layout,
    local_copy_of,
    no_progress_monitor,
    token_counter,
)
from arxiv_embeddings.api.settings import Settings
from arxiv_embeddings.backends.tasks import MODEL, TaskMap, UnknownTaskError, tasks_of
from arxiv_embeddings.layout import MANIFEST_FILE, model_name
from arxiv_embeddings.vectors import truncate_rows

if TYPE_CHECKING:
    from arxiv_embeddings.backends import Embedder
    from arxiv_embeddings.index.search import Hit, PaperIndex

#: Signature of :func:`arxiv_embeddings.backends.load_embedder`.
LoadEmbedder = Callable[..., "Embedder"]

try:
    VERSION = version("arxiv-embeddings")
except PackageNotFoundError:  # a source tree that was never installed
    VERSION = "0+unknown"


@dataclass(frozen=True)
class Embedding:
    """What :meth:`Service.embed` answers: the vectors, the tokens the model read (0 when not counted or without a
    tokenizer), and the task and the output that computed them."""

    vectors: np.ndarray
    tokens: int
    task: str
    output: str


@dataclass(frozen=True)
class SearchResult:
    """What :meth:`Service.search` answers: the query as read, the nearest papers, the index's size."""

    query: str
    hits: list[Hit]
    index_size: int


class Service:
    """Loads the model (and index) once, and answers the routes' requests with them."""

    def __init__(self, settings: Settings, load_embedder: LoadEmbedder, metrics: Metrics) -> None:
        self.settings = settings
        self._load_embedder = load_embedder
        self.metrics = metrics
        self.status = "loading"  # loading | ready | failed | stopping
        self.error: str | None = None
        self.model_name: str | None = None  # as configured: a folder, a Hub name or a gs:// URL
        self.served_name: str | None = None  # the name the API answers as (serve.served_name, else the run name)
        self.started = 0  # when the model started loading (Unix seconds): /v1/models' `created`
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
        self.served_name = s.served_name or model_name(self.model_name) or self.model_name
        self.started = int(time.time())
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
            max_batch_tokens=s.max_batch_tokens,
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
        if default is None or not (default / MANIFEST_FILE).exists():
            logger.info(f"No search index at {default}; /search answers 404 (build one with 'uv run inv index').")
            return None
        try:
            return PaperIndex.load(default, expected_model=self.model_folder)
        except (ValueError, OSError) as err:
            logger.warning(f"Not using the index at {default}: {err}")
            return None

    def _search_output(self, tasks: TaskMap) -> str:
        """The output /search embeds a query text with: the one the index holds the papers in for free-text queries
        (its search vectors, or its only ones; the query's and the papers' must live in one space), which the
        ``search`` task's output should be; a warning when they differ."""
        if self.index is None:
            return tasks.tasks.get("search", tasks.output_of(None))
        built = self.index.query_output
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

    # ------------------------------------------------------------------------------------------- requests
    def ready(self) -> None:
        """Nothing when the model is loaded; otherwise the 503 that says why (loading, failed, shutting down)."""
        if self.status == "ready":
            return
        retry = {"Retry-After": str(self.settings.retry_after_s)}
        if self.status == "loading":
            raise ApiError(503, "not_ready", "The model is still loading; retry in a few seconds.", retry)
        if self.status == "failed":
            raise ApiError(
                503,
                "model_load_failed",
                f"The model or its index failed to load ({self.error}); fix serve.model_path / MODEL_PATH (or "
                "serve.index_path / INDEX_PATH, as the reason says) and restart.",
            )
        raise ApiError(503, "shutting_down", "The server is shutting down; retry on another instance.", retry)

    async def embed(
        self,
        texts: Sequence[str],
        *,
        task: str | None = None,
        model: str | None = None,
        dimensions: int | None = None,
        normalize: bool = True,
        count_tokens: bool = False,
    ) -> Embedding:
        """Embed ``texts`` (the request's ``input``) for ``task`` (None: the default task), or for the task that an
        OpenAI-style ``model`` names (:func:`task_of_model`); truncated to ``dimensions`` (Matryoshka), then
        normalized. ``count_tokens``: also count the tokens the model reads, while it encodes."""
        self.ready()
        assert self.tasks is not None and self.served_name is not None
        if model is not None:
            example = self.tasks.names[-1]
            fix = f' Send model="{example}" or model="{self.served_name}:{example}".'
            task, output = self._resolve(task_of_model(model, self.served_name, self.tasks), "model: ", fix)
        else:
            task, output = self._resolve(task)
        texts = self._check_texts(texts, "input")
        full = self.dimensions[output]
        if dimensions is not None and dimensions > full:
            raise ApiError(
                422,
                "invalid_dimensions",
                f"dimensions={dimensions} is larger than the model's {full}; choose 1 to {full}.",
            )
        # Tokens are counted in a thread while the batcher encodes (usage is informational: 0 without a tokenizer).
        counter = self.count_tokens if count_tokens else None
        counting = asyncio.create_task(asyncio.to_thread(counter, texts)) if counter is not None else None
        try:
            vectors = await self._encode(texts, output)
        except BaseException:
            if counting is not None:
                counting.cancel()
            raise
        tokens = int(await counting) if counting is not None else 0
        return Embedding(truncate_rows(vectors, dimensions, normalize), tokens, task, output)

    async def search(self, *, k: int, text: str | None = None, arxiv_id: str | None = None) -> SearchResult:
        """The ``k`` nearest papers to ``text`` (embedded with the search task's output, among the papers in that
        output) or to the indexed paper ``arxiv_id`` (its vector in the model's own output, the subject task's);
        404 without an index or for an id it does not hold."""
        from arxiv_embeddings.index.format import UnknownPaperError

        self.ready()
        index = self.index
        if index is None:
            raise ApiError(
                404,
                "search_unavailable",
                "No search index is loaded on this server: build one with 'uv run inv index' (for the served "
                "model), or point INDEX_PATH / serve.index_path at one, and restart.",
            )
        if k > self.settings.max_k:
            raise ApiError(422, "invalid_k", f"k={k} is over the limit of {self.settings.max_k} (serve.max_k).")
        if arxiv_id is not None:
            query = arxiv_id.strip()
            check_encodable(query, "arxiv_id")
            try:
                hits = await asyncio.to_thread(index.search_id, query, k)
            except UnknownPaperError as err:
                raise ApiError(404, "unknown_paper", err.message) from None
        else:
            query = self._check_texts([text or ""], "text")[0]
            vector = await self._encode([query], self.search_output)  # the output the index holds for texts
            hits = (await asyncio.to_thread(index.search, vector, k, self.search_output))[0]
        return SearchResult(query, list(hits), len(index))

    def _resolve(self, task: str | None, where: str = "", fix: str = "") -> tuple[str, str]:
        """``(task, output)`` of a request's task (None = the default task); 422 ``unknown_task`` otherwise."""
        assert self.tasks is not None
        try:
            return self.tasks.resolve(task)
        except UnknownTaskError as err:
            raise ApiError(422, "unknown_task", f"{where}{err.message}{fix}") from None

    def _check_texts(self, texts: Sequence[str], field: str) -> list[str]:
        s = self.settings
        if len(texts) > s.max_batch:
            raise ApiError(
                422,
                "too_many_texts",
                f"{field} has {len(texts)} texts, over the limit of {s.max_batch} per request (serve.max_batch); "
                "split it into several requests.",
            )
        for i, text in enumerate(texts):
            where = f"{field}.{i}" if len(texts) > 1 or field == "input" else field
            if not text.strip():
                raise ApiError(422, "empty_text", f"{where} is empty or only whitespace; send some text.")
            if len(text) > s.max_chars:
                raise ApiError(
                    422,
                    "text_too_long",
                    f"{where} has {len(text):,} characters, over the limit of {s.max_chars:,} (serve.max_chars); "
                    "shorten it (the model reads only its first few hundred tokens anyway).",
                )
            check_encodable(text, where)
        return list(texts)

    async def _encode(self, texts: list[str], output: str) -> np.ndarray:
        """``texts`` through the micro-batcher (batched only with texts of the same ``output``)."""
        if self.batcher is None:
            raise ApiError(503, "not_ready", "The model is not loaded.")
        retry = {"Retry-After": str(self.settings.retry_after_s)}
        try:
            return await self.batcher.embed(texts, output)
        except QueueFullError as err:
            self.metrics.rejected.inc()
            raise ApiError(429, "queue_full", f"The server is busy: {err}", retry) from None
        except BatcherClosedError as err:
            raise ApiError(503, "shutting_down", str(err), retry) from None

    # ------------------------------------------------------------------------------------------- info
    def models(self) -> dict[str, Any]:
        """``GET /v1/models`` in OpenAI's shape: the served name, then ``<served name>:<task>`` for each task (the
        names /v1/embeddings takes as ``model``)."""
        self.ready()
        assert self.tasks is not None and self.served_name is not None
        ids = [self.served_name, *(f"{self.served_name}:{t}" for t in self.tasks.names)]
        entry = {"object": "model", "created": self.started, "owned_by": "arxiv-embeddings"}
        return {"object": "list", "data": [{"id": i, **entry} for i in ids]}

    def info(self) -> dict[str, Any]:
        """``GET /info`` (as text-embeddings-inference names it): what is served, by what, with which limits."""
        self.ready()
        e, tasks = self.embedder, self.tasks
        assert e is not None and tasks is not None
        return {
            "model_id": self.served_name,
            "model_path": self.model_name,
            "model_dtype": e.variant,
            "dimension": self.dimensions[tasks.output_of(None)],
            "max_input_length": int(e.max_seq_length),
            "max_client_batch_size": self.settings.max_batch,
            "backend": e.backend,
            "variant": e.variant,
            "version": VERSION,
            "default_task": tasks.default,
            "tasks": {t: {"output": tasks.tasks[t], "dimension": self.dimensions[tasks.tasks[t]]} for t in tasks.names},
            "search_output": self.search_output if self.index is not None else None,
        }

    def health(self) -> dict[str, Any]:
        e = self.embedder
        if e is None:
            raise RuntimeError("health() called before the model loaded")
        tasks = self.tasks
        assert tasks is not None
        return {
            "status": "ok",
            "model": self.served_name,
            "model_path": self.model_name,
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


def task_of_model(model: str, served: str, tasks: TaskMap) -> str | None:
    """The task a /v1/embeddings ``model`` names: ``<task>`` itself, or ``<served>:<task>`` (``served`` = the model
    /health reports); None (the default task) for any other name, so that clients which send a fixed model name
    (``text-embedding-3-small``) keep working. ``<served>:<anything>`` returns ``<anything>``, which the caller
    refuses when it is not a task."""
    name = model.strip()
    if name in tasks.tasks:
        return name
    prefix, colon, task = name.rpartition(":")
    if colon and prefix == served:
        return task
    return None


def check_encodable(text: str, where: str) -> None:
    """422 ``invalid_text`` for text that is not valid Unicode (an unpaired UTF-16 surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(
            422, "invalid_text", f"{where} holds an unpaired UTF-16 surrogate (e.g. '\\ud800'); send valid Unicode."
        ) from None

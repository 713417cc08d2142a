"""Dynamic micro-batching: texts from concurrent requests are encoded together, off the event loop.

Worker threads own the model (one by default on a GPU; on a CPU one per core, each with its own copy of the
tokenizer and one intra-op thread, sharing the weights). A request's texts join a queue as one job. One idle worker
at a time gathers a batch: it takes the first waiting job, waits at most ``max_wait_s`` for more (less when earlier
jobs have already waited, none when enough is waiting), takes its share of what waits (up to ``max_batch_size``
texts: the waiting texts divided among the idle workers), encodes them in one model call and hands each job its
own rows. While workers run the model, new jobs queue up, so under load every call is a full share and nobody
waits for a timer.

Each job has a ``group`` (the API's: the model output its task needs, ``model``, ``encoder`` or ``base``); a batch
holds the jobs of one group only, the group of the oldest waiting job, and the worker's encoder is called with it.
Jobs of other groups keep their place in the queue for the next batch.

Why several workers with one thread each rather than one worker with every core: the threads of one model call
meet at a barrier after every operation, so when anything else on the machine (the event loop, a sidecar, a load
generator) takes a core for a moment, all of them wait. Separate calls on separate cores do not wait for each
other. bench/README.md (section API) has the measurements.

The queue is bounded (``max_queue`` texts): :meth:`MicroBatcher.submit` raises :class:`QueueFullError` instead of
letting latency grow without limit, and the API turns it into ``429 Too Many Requests``.

Workers are plain threads fed through a lock, not asyncio tasks, so callers on any event loop (or none) can
submit: :meth:`MicroBatcher.embed` wraps the job's :class:`concurrent.futures.Future` for the caller's loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
from loguru import logger

#: What a worker calls: (texts, group) -> float32 (len(texts), dim), every text of one group. Each worker has its
#: own; one caller at a time each.
EncodeFn = Callable[[list[str], str], np.ndarray]
#: The group of a job submitted without one.
DEFAULT_GROUP = ""
#: Called after each model call with the number of texts and the seconds it took (e.g. to feed metrics).
BatchHook = Callable[[int, float], None]


class QueueFullError(RuntimeError):
    """The queue holds ``max_queue`` texts already; the caller should retry later."""


class BatcherClosedError(RuntimeError):
    """The batcher is shutting down and takes no new work."""


@dataclass
class _Job:
    texts: list[str]
    future: Future[np.ndarray]
    group: str = DEFAULT_GROUP
    enqueued: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """Gathers texts of concurrent callers into model calls of at most ``max_batch_size`` texts.

    ``encode`` is one encoder, or one per worker thread (each called from its own thread only), called with the
    texts of one group and that group. A job larger than ``max_batch_size`` is encoded alone (in one call).
    ``max_queue`` bounds the texts waiting (not counting the batches being encoded). ``on_start`` runs once in each
    worker thread before its first batch.
    """

    def __init__(
        self,
        encode: EncodeFn | Sequence[EncodeFn],
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        on_batch: BatchHook | None = None,
        name: str = "embed-batcher",
        on_start: Callable[[], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError(
                f"max_batch_size ({max_batch_size}) and max_queue ({max_queue}) must be >= 1 and max_wait_s "
                f"({max_wait_s}) >= 0."
            )
        encoders = [encode] if callable(encode) else list(encode)
        if not encoders:
            raise ValueError("MicroBatcher needs at least one encoder (one per worker thread).")
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._on_start = on_start
        self._jobs: deque[_Job] = deque()
        self._queued = 0  # texts in self._jobs
        self._idle = len(encoders)  # workers not encoding (gathering or waiting to gather)
        self._cond = threading.Condition()
        self._gathering = threading.Lock()  # one worker gathers a batch at a time
        self._closed = False
        self._threads = [
            threading.Thread(
                target=self._run, args=(enc,), name=name if len(encoders) == 1 else f"{name}-{i}", daemon=True
            )
            for i, enc in enumerate(encoders)
        ]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------------------------------------- callers
    @property
    def workers(self) -> int:
        """Worker threads, each with its own encoder."""
        return len(self._threads)

    @property
    def queued_texts(self) -> int:
        """Texts waiting for the model (not counting the batches being encoded)."""
        return self._queued

    def submit(self, texts: list[str], group: str = DEFAULT_GROUP) -> Future[np.ndarray]:
        """Queue ``texts`` of ``group`` (batched only with texts of the same group); the future resolves to their
        float32 rows, in order."""
        future: Future[np.ndarray] = Future()
        if not texts:
            future.set_result(np.zeros((0, 0), dtype=np.float32))
            return future
        with self._cond:
            if self._closed:
                raise BatcherClosedError("The server is shutting down and takes no new work.")
            if self._queued + len(texts) > self.max_queue:
                raise QueueFullError(
                    f"{self._queued} texts are already waiting (limit {self.max_queue}); retry shortly."
                )
            self._jobs.append(_Job(list(texts), future, group))
            self._queued += len(texts)
            self._cond.notify()
        return future

    async def embed(self, texts: list[str], group: str = DEFAULT_GROUP) -> np.ndarray:
        """:meth:`submit` for async callers. Cancelling the caller drops its job if it has not started."""
        return await asyncio.wrap_future(self.submit(texts, group))

    def close(self, timeout: float | None = None) -> bool:
        """Take no new jobs, finish the queued ones, stop the workers. True when they stopped within ``timeout``."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    # -------------------------------------------------------------------------------------------- workers
    def _next_batch(self) -> list[_Job] | None:
        """Block until a batch is due; None once closed and drained. Called by one worker at a time."""
        with self._cond:
            while not self._jobs:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._jobs[0].enqueued + self.max_wait_s
            # Enough waiting for every idle worker to take a full batch: no reason to wait longer.
            while self._queued < self.max_batch_size * self._idle and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            # This worker's share: the waiting texts divided among the idle workers (this one included), so under
            # load every core gets work instead of one worker taking everything while the others wait.
            share = min(self.max_batch_size, -(-self._queued // max(1, self._idle)))
            batch = [self._jobs.popleft()]
            size, group = len(batch[0].texts), batch[0].group
            # The oldest job's group: its next jobs in order while they fit; the other groups' jobs stay queued.
            kept: list[_Job] = []
            while self._jobs and size < share:
                job = self._jobs[0]
                if job.group != group:
                    kept.append(self._jobs.popleft())
                    continue
                if size + len(job.texts) > share:
                    break
                batch.append(self._jobs.popleft())
                size += len(job.texts)
            self._jobs.extendleft(reversed(kept))
            self._queued -= size
            self._idle -= 1
        return batch

    def _run(self, encode: EncodeFn) -> None:
        if self._on_start is not None:  # per-thread set-up, e.g. the model's thread count
            try:
                self._on_start()
            except Exception as err:
                logger.warning(f"Worker set-up failed: {err}")
        while True:
            with self._gathering:
                batch = self._next_batch()
            if batch is None:
                return
            try:
                self._encode_batch(encode, batch)
            finally:
                with self._cond:
                    self._idle += 1

    def _encode_batch(self, encode: EncodeFn, batch: list[_Job]) -> None:
        # A caller that went away (cancelled future) is skipped before its texts reach the model.
        live = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not live:
            return
        texts = [t for job in live for t in job.texts]
        started = time.perf_counter()
        try:
            vectors = encode(texts, live[0].group)
            if vectors.shape[0] != len(texts):
                raise RuntimeError(f"The model returned {vectors.shape[0]} rows for {len(texts)} texts.")
        except Exception as err:  # every waiting caller gets the error; the worker keeps running
            logger.exception(f"Encoding a batch of {len(texts)} texts failed: {err}")
            for job in live:
                job.future.set_exception(err)
            return
        if self._on_batch is not None:
            try:
                self._on_batch(len(texts), time.perf_counter() - started)
            except Exception as err:
                logger.warning(f"Batch hook failed: {err}")
        start = 0
        for job in live:
            stop = start + len(job.texts)
            job.future.set_result(vectors[start:stop])
            start = stop

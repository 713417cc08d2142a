"""Dynamic micro-batching: texts from concurrent requests are encoded together, off the event loop.

One worker thread owns the model. A request's texts join a queue as one job; the worker takes the first waiting
job, waits at most ``max_wait_s`` for more (less when earlier jobs have already waited, none when a full batch is
waiting), encodes up to ``max_batch_size`` texts in one model call, and hands each job its own rows. While the
model runs, new jobs queue up, so under load every call is a full batch and nobody waits for a timer.

The queue is bounded (``max_queue`` texts): :meth:`MicroBatcher.submit` raises :class:`QueueFullError` instead of
letting latency grow without limit, and the API turns it into ``429 Too Many Requests``.

The worker is a plain thread fed through a lock, not an asyncio task, so callers on any event loop (or none) can
submit: :meth:`MicroBatcher.embed` wraps the job's :class:`concurrent.futures.Future` for the caller's loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
from loguru import logger

#: What the worker calls: texts -> float32 (len(texts), dim). Must be thread-safe for one caller at a time.
EncodeFn = Callable[[list[str]], np.ndarray]
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
    enqueued: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """Gathers texts of concurrent callers into model calls of at most ``max_batch_size`` texts.

    A job larger than ``max_batch_size`` is encoded alone (in one call). ``max_queue`` bounds the texts waiting
    (not counting the batch being encoded). ``on_start`` runs once in the worker thread before any batch.
    """

    def __init__(
        self,
        encode: EncodeFn,
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
        self._encode = encode
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._on_start = on_start
        self._jobs: deque[_Job] = deque()
        self._queued = 0  # texts in self._jobs
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------- callers
    @property
    def queued_texts(self) -> int:
        """Texts waiting for the model (not counting the batch being encoded)."""
        return self._queued

    def submit(self, texts: list[str]) -> Future[np.ndarray]:
        """Queue ``texts``; the future resolves to their float32 rows, in order."""
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
            self._jobs.append(_Job(list(texts), future))
            self._queued += len(texts)
            self._cond.notify()
        return future

    async def embed(self, texts: list[str]) -> np.ndarray:
        """:meth:`submit` for async callers. Cancelling the caller drops its job if it has not started."""
        return await asyncio.wrap_future(self.submit(texts))

    def close(self, timeout: float | None = None) -> bool:
        """Take no new jobs, finish the queued ones, stop the worker. True when it stopped within ``timeout``."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -------------------------------------------------------------------------------------------- worker
    def _next_batch(self) -> list[_Job] | None:
        """Block until a batch is due; None once closed and drained."""
        with self._cond:
            while not self._jobs:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._jobs[0].enqueued + self.max_wait_s
            while self._queued < self.max_batch_size and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch = [self._jobs.popleft()]
            size = len(batch[0].texts)
            while self._jobs and size + len(self._jobs[0].texts) <= self.max_batch_size:
                job = self._jobs.popleft()
                batch.append(job)
                size += len(job.texts)
            self._queued -= size
        return batch

    def _run(self) -> None:
        if self._on_start is not None:  # per-thread set-up, e.g. the model's thread count
            try:
                self._on_start()
            except Exception as err:
                logger.warning(f"Worker set-up failed: {err}")
        while (batch := self._next_batch()) is not None:
            # A caller that went away (cancelled future) is skipped before its texts reach the model.
            live = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if not live:
                continue
            texts = [t for job in live for t in job.texts]
            started = time.perf_counter()
            try:
                vectors = self._encode(texts)
                if vectors.shape[0] != len(texts):
                    raise RuntimeError(f"The model returned {vectors.shape[0]} rows for {len(texts)} texts.")
            except Exception as err:  # every waiting caller gets the error; the worker keeps running
                logger.exception(f"Encoding a batch of {len(texts)} texts failed: {err}")
                for job in live:
                    job.future.set_exception(err)
                continue
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

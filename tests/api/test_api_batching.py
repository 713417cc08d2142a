"""The micro-batcher on its own, with a deterministic encoder (a text's vector is a function of its text)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from arxiv_embeddings.api.batching import BatcherClosedError, MicroBatcher, QueueFullError


class Encoder:
    """Vector of a text = [len(text), first char code]; records batches and their groups; can be held at a gate."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.groups: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, texts: list[str], group: str) -> np.ndarray:
        self.entered.set()
        self.gate.wait(30)
        self.batches.append(list(texts))
        self.groups.append(group)
        if any(t == "boom" for t in texts):
            raise ValueError("cannot encode 'boom'")
        return np.array([[len(t), ord(t[0])] for t in texts], dtype=np.float32)


def expected(texts: list[str]) -> np.ndarray:
    return np.array([[len(t), ord(t[0])] for t in texts], dtype=np.float32)


def test_concurrent_jobs_share_batches_and_get_their_own_rows() -> None:
    enc = Encoder()
    batcher = MicroBatcher(enc, max_batch_size=16, max_wait_s=0.05, max_queue=100)
    jobs = [[f"{chr(97 + i)}" * (i + 1)] if i % 3 else [f"x{i}", f"y{i}y"] for i in range(12)]

    async def run() -> list[np.ndarray]:
        return await asyncio.gather(*(batcher.embed(job) for job in jobs))

    results = asyncio.run(run())
    for job, rows in zip(jobs, results, strict=True):
        np.testing.assert_array_equal(rows, expected(job))
    assert sum(len(b) for b in enc.batches) == sum(len(j) for j in jobs)
    assert len(enc.batches) < len(jobs) and all(len(b) <= 16 for b in enc.batches)
    assert batcher.close(5)


def test_batches_fill_while_the_model_is_busy_and_respect_the_size_limit() -> None:
    enc = Encoder()
    batcher = MicroBatcher(enc, max_batch_size=4, max_wait_s=0, max_queue=100)
    enc.gate.clear()
    first = batcher.submit(["held"])
    assert enc.entered.wait(5)
    waiting = [batcher.submit([f"t{i}"]) for i in range(6)]
    big = batcher.submit([f"b{i}" for i in range(6)])  # larger than a batch: encoded alone, in one call
    assert batcher.queued_texts == 12
    enc.gate.set()
    for future in [first, *waiting, big]:
        future.result(5)
    assert [len(b) for b in enc.batches] == [1, 4, 2, 6]
    assert batcher.close(5)


def test_max_wait_gathers_requests_that_arrive_close_together() -> None:
    enc = Encoder()
    batcher = MicroBatcher(enc, max_batch_size=64, max_wait_s=1.0, max_queue=100)
    futures = []
    for i in range(5):
        futures.append(batcher.submit([f"t{i}"]))
        time.sleep(0.01)
    for f in futures:
        f.result(5)
    assert [len(b) for b in enc.batches] == [5]
    assert batcher.close(5)


def test_queue_limit_raises_queue_full() -> None:
    enc = Encoder()
    batcher = MicroBatcher(enc, max_batch_size=2, max_wait_s=0, max_queue=3)
    enc.gate.clear()
    held = batcher.submit(["a", "b"])
    assert enc.entered.wait(5)
    queued = batcher.submit(["c", "d", "e"])
    with pytest.raises(QueueFullError, match="3 texts are already waiting"):
        batcher.submit(["f"])
    enc.gate.set()
    held.result(5), queued.result(5)
    batcher.submit(["f"]).result(5)  # room again
    assert batcher.close(5)


def test_an_error_reaches_every_caller_of_the_batch_and_the_worker_survives() -> None:
    enc = Encoder()
    batcher = MicroBatcher(enc, max_batch_size=8, max_wait_s=0.2, max_queue=100)
    together = [batcher.submit(["fine"]), batcher.submit(["boom"])]
    for future in together:
        with pytest.raises(ValueError, match="boom"):
            future.result(5)
    np.testing.assert_array_equal(batcher.submit(["later"]).result(5), expected(["later"]))
    assert batcher.close(5)


def test_cancelled_jobs_are_not_encoded() -> None:
    enc = Encoder()
    batcher = MicroBatcher(enc, max_batch_size=8, max_wait_s=0, max_queue=100)
    enc.gate.clear()
    batcher.submit(["held"])
    assert enc.entered.wait(5)
    gone = batcher.submit(["client went away"])
    kept = batcher.submit(["kept"])
    assert gone.cancel()
    enc.gate.set()
    kept.result(5)
    assert ["client went away"] not in enc.batches and all("client went away" not in b for b in enc.batches)
    assert batcher.close(5)


def test_close_drains_the_queue_then_refuses_new_work() -> None:
    enc = Encoder()
    batcher = MicroBatcher(enc, max_batch_size=1, max_wait_s=0, max_queue=100)
    enc.gate.clear()
    futures = [batcher.submit([f"t{i}"]) for i in range(3)]
    closer = threading.Thread(target=batcher.close, args=(10,))
    closer.start()
    time.sleep(0.05)
    with pytest.raises(BatcherClosedError):
        batcher.submit(["late"])
    enc.gate.set()
    closer.join(10)
    assert [f.result(0).tolist() for f in futures] == [expected([f"t{i}"]).tolist() for i in range(3)]


def test_invalid_limits() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(Encoder(), max_batch_size=0, max_wait_s=0, max_queue=1)


def test_idle_workers_share_what_is_waiting() -> None:
    a, b = Encoder(), Encoder()
    a.gate.clear(), b.gate.clear()  # calls block until the test opens them
    batcher = MicroBatcher([a, b], max_batch_size=32, max_wait_s=0.3, max_queue=100)
    assert batcher.workers == 2
    futures = [batcher.submit([f"t{i}"]) for i in range(16)]  # all within the wait: one queue of 16 texts
    assert a.entered.wait(5) and b.entered.wait(5)  # both workers took work ...
    assert batcher.queued_texts == 0  # ... and nothing is left waiting
    a.gate.set(), b.gate.set()
    for i, future in enumerate(futures):
        np.testing.assert_array_equal(future.result(5), expected([f"t{i}"]))
    # Two idle workers: the first takes half of what waits, the second the rest; one worker alone would take 16.
    assert sorted(len(batch) for batch in a.batches + b.batches) == [8, 8]
    assert batcher.close(5)


def test_workers_encode_at_the_same_time() -> None:
    a, b = Encoder(), Encoder()
    a.gate.clear(), b.gate.clear()
    batcher = MicroBatcher([a, b], max_batch_size=8, max_wait_s=0, max_queue=100)
    first = batcher.submit(["first"])
    deadline = time.monotonic() + 5
    while not (a.entered.is_set() or b.entered.is_set()) and time.monotonic() < deadline:
        time.sleep(0.005)
    busy, free = (a, b) if a.entered.is_set() else (b, a)
    second = batcher.submit(["second"])
    assert free.entered.wait(5)  # the other worker took it while the first call is still running
    free.gate.set()
    np.testing.assert_array_equal(second.result(5), expected(["second"]))
    assert not first.done()  # still held in the busy worker
    busy.gate.set()
    np.testing.assert_array_equal(first.result(5), expected(["first"]))
    assert batcher.close(5)


def test_needs_an_encoder() -> None:
    with pytest.raises(ValueError, match="at least one encoder"):
        MicroBatcher([], max_batch_size=1, max_wait_s=0, max_queue=1)


def test_a_batch_holds_one_group_and_the_others_keep_their_place() -> None:
    """The API's groups are model outputs: texts of two outputs never share a model call, each call gets its group,
    and a job of another group waits for the next batch without losing its turn."""
    enc = Encoder()
    batcher = MicroBatcher(enc, max_batch_size=16, max_wait_s=0, max_queue=100)
    enc.gate.clear()
    first = batcher.submit(["held"], "model")
    assert enc.entered.wait(5)
    jobs = [(f"m{i}", "model") if i % 3 else (f"e{i}", "encoder") for i in range(9)]
    futures = [batcher.submit([text], group) for text, group in jobs]
    enc.gate.set()
    np.testing.assert_array_equal(first.result(5), expected(["held"]))
    for (text, _), future in zip(jobs, futures, strict=True):
        np.testing.assert_array_equal(future.result(5), expected([text]))
    assert batcher.close(5)
    by_group = {group: [b for b, g in zip(enc.batches, enc.groups, strict=True) if g == group] for group in enc.groups}
    assert all(t[0] in "hm" for batch in by_group["model"] for t in batch)
    assert all(t[0] == "e" for batch in by_group["encoder"] for t in batch)
    # Once the held call ends: the oldest waiting job (an encoder one) goes first with every encoder job, then the
    # model jobs in one call, in their order.
    assert enc.groups == ["model", "encoder", "model"]
    assert enc.batches[1:] == [["e0", "e3", "e6"], ["m1", "m2", "m4", "m5", "m7", "m8"]]

"""Length-aware batches: the texts of one encode call grouped by token length, each batch capped by a count and,
optionally, by padded tokens. A batch is padded to its longest text, so texts of similar length waste little on
padding, and a cap on tokens keeps a batch of long texts as small as its memory and latency need while short ones
travel in larger batches. Used by every embedder (torch and ONNX), so the API, the index and evaluate batch alike."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def check_max_batch_tokens(value: int | None, key: str = "max_batch_tokens") -> int | None:
    """``value`` as an int (None = no cap); a :class:`ValueError` naming ``key`` for anything but None or a
    positive integer."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ValueError(f"{key} must be a positive number of tokens (e.g. 8192) or null for no cap, got {value!r}.")
    return int(value)


def token_batches(
    lengths: Sequence[int] | np.ndarray, batch_size: int, max_tokens: int | None = None
) -> list[np.ndarray]:
    """Row indices of each batch: rows sorted by ``lengths`` (tokens per text, longest first; ties keep their
    order), at most ``batch_size`` rows a batch and, with ``max_tokens``, at most that many padded tokens (the
    batch's longest text times its rows). A text longer than ``max_tokens`` is a batch of its own."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    counts = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-counts, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        size = batch_size
        if max_tokens is not None:
            size = max(1, min(batch_size, int(max_tokens) // max(int(counts[order[start]]), 1)))
        batches.append(order[start : start + size])
        start += size
    return batches

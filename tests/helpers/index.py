"""Settings shared by the tests that build an index of the tiny model."""

from __future__ import annotations

from pathlib import Path


def index_overrides(processed_root: Path, model: Path, *extra: str) -> list[str]:
    """Read the shared processed splits and the tiny model; write indexes under the test's own root. ``extra``
    overrides come last, so they win."""
    return [
        f"paths.processed_dir={processed_root / 'data' / 'processed'}",
        f"index.model={model}",
        "index.backend=torch",
        "index.encode.device=cpu",
        "index.shard_size=256",
        "index.eval.queries=200",
        "index.threads=1",
        *extra,
    ]

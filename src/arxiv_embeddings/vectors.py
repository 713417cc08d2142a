"""Vector helpers shared by the embedding backends, the index and the API: NumPy only (the ONNX serving path
imports this, and must not import torch)."""

from __future__ import annotations

import numpy as np


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """Float32 copy of ``vectors`` with unit L2 norm per row (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def truncate_rows(vectors: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """Matryoshka truncation to the first ``dimensions`` columns, then (``normalize``) unit L2 norm per row; a new
    float32 array (shared rows stay untouched)."""
    out = np.array(vectors[:, :dimensions] if dimensions else vectors, dtype=np.float32, copy=True)
    return normalize_rows(out) if normalize else out

"""One interface over the ways this project turns texts into embeddings: torch (sentence-transformers) or ONNX.

    from arxiv_embeddings.embedder import load_embedder
    emb = load_embedder("models/minilm-sample/final", backend="torch")
    vectors = emb.encode(["A title\\nAn abstract ..."])          # float32, (n, dim), L2-normalized

The index, the search CLI and the API only use this module, so they work with either backend. This module must
stay importable without torch: the torch backend imports it lazily, inside :class:`TorchEmbedder`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from arxiv_embeddings.vectors import normalize_rows as normalize_rows

#: Backends :func:`load_embedder` knows. ``auto`` = the serving default recorded by the export (ONNX variant or torch
#: precision), else torch fp32.
BACKENDS = ("auto", "torch", "onnx")


@runtime_checkable
class Embedder(Protocol):
    """What every backend offers."""

    #: The model's name or folder, as given.
    name: str
    #: ``torch`` or ``onnx``.
    backend: str
    #: ``fp32`` / ``bf16`` for torch; the ONNX variant name (e.g. ``int8-avx2``) for onnx.
    variant: str
    #: Embedding dimension.
    dimension: int
    #: Device the model runs on (``cpu``, ``cuda``, ...).
    device: str
    #: Most tokens per text.
    max_seq_length: int

    def encode(self, texts: list[str], batch_size: int = 32, normalize: bool = True) -> np.ndarray:
        """Embeddings of ``texts`` as float32 ``(len(texts), dimension)``; L2-normalized when ``normalize``."""
        ...


class TorchEmbedder:
    """A sentence-transformers model in torch, fp32 or bf16."""

    backend = "torch"

    def __init__(
        self,
        name_or_path: str | os.PathLike[str],
        device: str | None = None,
        precision: str = "fp32",
        max_seq_length: int | None = None,
    ) -> None:
        import torch

        from arxiv_embeddings.models import default_device, load_model

        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"Unknown torch precision {precision!r}; use fp32, bf16 or fp16.")
        self.name = str(name_or_path)
        self.device = device or default_device()
        self.model = load_model(name_or_path, device=self.device, max_seq_length=max_seq_length)
        if precision != "fp32":
            self.model.to(torch.bfloat16 if precision == "bf16" else torch.float16)
        self.variant = precision
        # get_embedding_dimension is the name from sentence-transformers 5.7 on; older releases have only the long one.
        dim = getattr(self.model, "get_embedding_dimension", self.model.get_sentence_embedding_dimension)()
        if dim is None:
            raise ValueError(f"{self.name} does not declare an embedding dimension.")
        self.dimension = int(dim)
        self.max_seq_length = int(self.model.max_seq_length or 0)

    def encode(self, texts: list[str], batch_size: int = 32, normalize: bool = True) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False, normalize_embeddings=False
        )
        vectors = np.asarray(vectors, dtype=np.float32)
        return normalize_rows(vectors) if normalize else vectors

    def replica(self) -> TorchEmbedder:
        """A copy to encode from another thread at the same time: the same weight tensors (no memory for a second
        copy of them), its own modules and tokenizer (a fast tokenizer must not be used by two threads at once)."""
        import copy
        import itertools

        shared = {id(t): t for t in itertools.chain(self.model.parameters(), self.model.buffers())}
        clone = copy.copy(self)
        clone.model = copy.deepcopy(self.model, memo=shared)
        return clone


def load_embedder(
    name_or_path: str | os.PathLike[str],
    backend: str = "auto",
    variant: str | None = None,
    device: str | None = None,
    max_seq_length: int | None = None,
    **kwargs: Any,
) -> Embedder:
    """An :class:`Embedder` for a model folder (or a Hub name for the torch backend).

    ``backend="onnx"`` loads the ONNX variant ``variant`` (default: the serving default the export marked) from the
    model folder's ``onnx/`` files with onnxruntime and tokenizers only, no torch.
    """
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if backend == "auto":
        backend, default_variant = _serving_default(name_or_path)
        variant = variant or default_variant
    if backend == "onnx":
        from arxiv_embeddings.onnx_embedder import load_onnx_embedder  # onnxruntime + tokenizers, no torch

        return load_onnx_embedder(name_or_path, variant=variant, max_seq_length=max_seq_length, **kwargs)
    return TorchEmbedder(name_or_path, device=device, precision=variant or "fp32", max_seq_length=max_seq_length)


def _serving_default(name_or_path: str | os.PathLike[str]) -> tuple[str, str | None]:
    """The backend and variant the export marked as the serving default; torch (fp32) without an export."""
    from arxiv_embeddings.onnx_embedder import serving_default

    if not Path(name_or_path).is_dir():
        return "torch", None
    default = serving_default(name_or_path)
    return (default[0], default[1]) if default else ("torch", None)

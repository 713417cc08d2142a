"""How a model turns texts into vectors: one interface (:class:`Embedder`, :func:`load_embedder`) over the backends.

    from arxiv_embeddings.backends import load_embedder
    emb = load_embedder("models/minilm-sample/final", backend="torch")
    vectors = emb.encode(["A title\\nAn abstract ..."])          # float32, (n, dim), L2-normalized
    encoded = emb.encode(["A short query"], output="encoder")    # the encoder alone: no head after the pooling

The package's modules:

- :mod:`~arxiv_embeddings.backends.loading`: where a model comes from (a run's folder, a path, the bundled
  all-MiniLM-L6-v2, the Hub), loading it with sentence-transformers, device and precision, the weights' fingerprint;
- :mod:`~arxiv_embeddings.backends.torch_embedder`: :class:`~arxiv_embeddings.backends.torch_embedder.TorchEmbedder`,
  a sentence-transformers model in torch;
- :mod:`~arxiv_embeddings.backends.onnx_embedder`: the ONNX export with onnxruntime and tokenizers only, no torch;
- :mod:`~arxiv_embeddings.backends.lora`: LoRA adapters (add, save, merge, recognise an adapter folder);
- :mod:`~arxiv_embeddings.backends.hosted`: a hosted OpenAI-compatible embeddings API (a baseline);
- :mod:`~arxiv_embeddings.backends.tasks`: which output (``model``, ``encoder``, ``base``) serves each task of a
  model folder (its ``tasks.json``);
- :mod:`~arxiv_embeddings.backends.with_base`: a folder's model beside the untouched base model it keeps in
  ``base/`` for search.

The index, the search CLI and the API only use this module, so they work with either backend. This module must
stay importable without torch: the torch backend is imported only when :func:`load_embedder` needs it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

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

    def encode(
        self, texts: list[str], batch_size: int = 32, normalize: bool = True, output: str = "model"
    ) -> np.ndarray:
        """Embeddings of ``texts`` as float32 ``(len(texts), d)``; L2-normalized when ``normalize``.

        ``output`` (:data:`arxiv_embeddings.backends.tasks.OUTPUTS`): ``model`` runs every module of the model
        folder (``d`` = :attr:`dimension`); ``encoder`` stops after the Pooling and L2-normalizes whatever
        ``normalize`` says (``d`` = the pooled dimension); ``base`` runs the untouched base model a folder keeps in
        ``base/``. Which output serves which task is the folder's
        ``tasks.json`` (:func:`arxiv_embeddings.backends.tasks.read_tasks`)."""
        ...


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
    model folder's ``onnx/`` files with onnxruntime and tokenizers only, no torch. A folder that serves a task with
    the untouched base model it keeps in ``base/`` (``train.search_model=base``) gets a
    :class:`~arxiv_embeddings.backends.with_base.WithBaseEmbedder`: its ``base`` output comes from that model, on the
    same backend and variant.
    """
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if backend == "auto":
        backend, default_variant = _serving_default(name_or_path)
        variant = variant or default_variant
    main = _load_one(name_or_path, backend, variant, device, max_seq_length, **kwargs)
    from arxiv_embeddings.backends.with_base import WithBaseEmbedder, base_folder

    base = base_folder(name_or_path)
    if base is None:
        return main
    from arxiv_embeddings.backends.tasks import BASE, read_tasks

    if BASE not in read_tasks(name_or_path).outputs:  # kept, but no task is served with it
        return main
    # the folder keeps its untouched base model for search (train.search_model=base): the same backend and variant
    base_embedder = _load_one(base, backend, main.variant, device, max_seq_length, **kwargs)
    return WithBaseEmbedder(main, base_embedder)  # type: ignore[return-value]


def _load_one(
    name_or_path: str | os.PathLike[str],
    backend: str,
    variant: str | None,
    device: str | None,
    max_seq_length: int | None,
    **kwargs: Any,
) -> Embedder:
    if backend == "onnx":
        from arxiv_embeddings.backends.onnx_embedder import load_onnx_embedder  # onnxruntime + tokenizers, no torch

        return load_onnx_embedder(name_or_path, variant=variant, max_seq_length=max_seq_length, **kwargs)
    from arxiv_embeddings.backends.torch_embedder import TorchEmbedder

    return TorchEmbedder(
        name_or_path,
        device=device,
        precision=variant or "fp32",
        max_seq_length=max_seq_length,
        max_batch_tokens=kwargs.get("max_batch_tokens"),
    )


def _serving_default(name_or_path: str | os.PathLike[str]) -> tuple[str, str | None]:
    """The backend and variant the export marked as the serving default; torch (fp32) without an export."""
    from arxiv_embeddings.backends.onnx_embedder import serving_default

    if not Path(name_or_path).is_dir():
        return "torch", None
    default = serving_default(name_or_path)
    return (default[0], default[1]) if default else ("torch", None)

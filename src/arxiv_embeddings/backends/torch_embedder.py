"""The torch backend: a sentence-transformers model in torch, fp32, bf16 or fp16, behind the :class:`Embedder`
interface of :mod:`arxiv_embeddings.backends`."""

from __future__ import annotations

import os

import numpy as np

from arxiv_embeddings.vectors import normalize_rows


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
        try:
            import torch
        except ImportError as err:  # the serving install: ONNX Runtime, no torch
            raise ImportError(
                f"The torch backend needs torch, which this install lacks (the ONNX serving install); export "
                f"{name_or_path} with 'uv run inv export' and serve it with backend=onnx (BACKEND=onnx)."
            ) from err

        from arxiv_embeddings.backends.loading import default_device, load_model

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

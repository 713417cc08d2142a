"""The torch backend: a sentence-transformers model in torch, fp32, bf16 or fp16, behind the :class:`Embedder`
interface of :mod:`arxiv_embeddings.backends`. ``output="encoder"`` runs the model's modules up to its Pooling only
(a view of the same module objects: no second copy of the weights)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from arxiv_embeddings.backends.batches import check_max_batch_tokens, token_batches
from arxiv_embeddings.backends.tasks import BASE, ENCODER, MODEL, check_output
from arxiv_embeddings.vectors import normalize_rows

#: Class name of the module the ``encoder`` output ends with.
_POOLING = "Pooling"
#: Modules after the Pooling that leave the direction of a vector unchanged (``encoder`` = ``model`` after them).
_DIRECTION_KEEPING = ("Normalize",)


def encoder_view(model: Any, dimension: int) -> tuple[Any, int]:
    """The ``encoder`` output of a SentenceTransformer ``model`` (of ``dimension``): the model up to its Pooling and
    that output's dimension. The model itself when only Normalize modules follow the Pooling, else a
    SentenceTransformer around the same module objects (no copy of the weights). ``(None, 0)`` when the model has no
    Pooling module."""
    modules = list(model)
    kinds = [type(m).__name__ for m in modules]
    if _POOLING not in kinds:
        return None, 0
    cut = kinds.index(_POOLING) + 1
    if all(kind in _DIRECTION_KEEPING for kind in kinds[cut:]):
        return model, dimension
    from sentence_transformers import SentenceTransformer

    view = SentenceTransformer(
        modules=modules[:cut],
        device=str(model.device),
        prompts=dict(model.prompts or {}),
        default_prompt_name=model.default_prompt_name,
    )
    dim = view.get_embedding_dimension()
    return view, int(dim or 0)


def token_counts(model: Any, texts: list[str], chunk: int = 4096) -> np.ndarray:
    """Tokens per text of a SentenceTransformer ``model`` after truncation (special tokens included), as it sees
    them; tokenized ``chunk`` texts at a time."""
    counts = [
        model.tokenize(texts[i : i + chunk])["attention_mask"].sum(dim=1).cpu().numpy()
        for i in range(0, len(texts), chunk)
    ]
    return np.concatenate(counts).astype(np.int64) if counts else np.zeros(0, dtype=np.int64)


def encode_in_token_batches(
    model: Any,
    texts: list[str],
    batch_size: int,
    max_tokens: int | None,
    dimension: int,
    normalize: bool = False,
    progress: bool = False,
) -> np.ndarray:
    """float32 ``(len(texts), dimension)`` vectors of a SentenceTransformer ``model``. Without ``max_tokens``, one
    ``encode`` call (sentence-transformers sorts the texts by length and batches them by count); with it, calls
    grouped by token length and capped at ``max_tokens`` padded tokens
    (:func:`arxiv_embeddings.backends.batches.token_batches`). ``normalize``:
    L2-normalized by the model's ``encode``; ``progress``: a progress bar."""
    if max_tokens is None or not texts:
        vectors = model.encode(
            texts,
            batch_size=batch_size,
            convert_to_numpy=True,
            show_progress_bar=progress,
            normalize_embeddings=normalize,
        )
        return np.asarray(vectors, dtype=np.float32)
    from tqdm import tqdm

    out = np.zeros((len(texts), dimension), dtype=np.float32)
    batches = token_batches(token_counts(model, texts), batch_size, max_tokens)
    for rows in tqdm(batches, desc="Batches", unit="batch", disable=not progress):
        out[rows] = model.encode(
            [texts[i] for i in rows],
            batch_size=len(rows),
            convert_to_numpy=True,
            show_progress_bar=False,
            normalize_embeddings=normalize,
        )
    return out


class TorchEmbedder:
    """A sentence-transformers model in torch, fp32 or bf16."""

    backend = "torch"

    def __init__(
        self,
        name_or_path: str | os.PathLike[str],
        device: str | None = None,
        precision: str = "fp32",
        max_seq_length: int | None = None,
        max_batch_tokens: int | None = None,
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
        dim = self.model.get_embedding_dimension()
        if dim is None:
            raise ValueError(f"{self.name} does not declare an embedding dimension.")
        self.dimension = int(dim)
        self.max_seq_length = int(self.model.max_seq_length or 0)
        self._encoder, self._encoder_dimension = encoder_view(self.model, self.dimension)
        #: Most padded tokens in one model call (None = batches capped by count only); see backends.batches.
        self.max_batch_tokens = check_max_batch_tokens(max_batch_tokens)

    def encode(self, texts: list[str], batch_size: int = 32, normalize: bool = True, output: str = MODEL) -> np.ndarray:
        """Embeddings of ``texts``: every module of the model (``output="model"``), or the modules up to the
        Pooling, L2-normalized (``output="encoder"``); ``base`` is served by the embedder of the folder's ``base/``
        (:class:`~arxiv_embeddings.backends.with_base.WithBaseEmbedder`), not here. With :attr:`max_batch_tokens`,
        the texts go in calls grouped by token length and capped at that many padded tokens."""
        if check_output(output) == BASE:
            from arxiv_embeddings.backends.with_base import no_base_output

            raise no_base_output(self.name)
        model, dim = self.model, self.dimension
        if output == ENCODER:
            if self._encoder is None:
                kinds = " -> ".join(type(m).__name__ for m in self.model)
                raise ValueError(
                    f"{self.name} has no {_POOLING} module ({kinds}), so it has no 'encoder' output; serve its "
                    f"'{MODEL}' output (map every task to \"{MODEL}\" in its tasks.json)."
                )
            model, dim, normalize = self._encoder, self._encoder_dimension, True
        if not texts:
            return np.zeros((0, dim), dtype=np.float32)
        vectors = encode_in_token_batches(model, texts, batch_size, self.max_batch_tokens, dim)
        return normalize_rows(vectors) if normalize else vectors

    def token_counts(self, texts: list[str]) -> np.ndarray:
        """Tokens per text after truncation (special tokens included), as the model sees them."""
        return token_counts(self.model, texts)

    def replica(self) -> TorchEmbedder:
        """A copy to encode from another thread at the same time: the same weight tensors (no memory for a second
        copy of them), its own modules and tokenizer (a fast tokenizer must not be used by two threads at once)."""
        import copy
        import itertools

        shared = {id(t): t for t in itertools.chain(self.model.parameters(), self.model.buffers())}
        clone = copy.copy(self)
        clone.model = copy.deepcopy(self.model, memo=shared)
        clone._encoder, clone._encoder_dimension = encoder_view(clone.model, clone.dimension)  # the clone's modules
        return clone

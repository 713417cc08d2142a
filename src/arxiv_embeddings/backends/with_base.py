"""An embedder of a model folder that keeps its untouched base model in ``base/`` (``train.search_model=base``,
SPECTER2-style: a model trained for subjects and the base model for search in one folder): the folder's own
outputs (``model``, ``encoder``) from the trained model, the ``base`` output from the one in ``base/``, both on the
same backend and variant. :func:`arxiv_embeddings.backends.load_embedder` returns one for such a folder, so the
index, the search CLI and the API serve it like any other. Nothing here imports torch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from arxiv_embeddings.backends.tasks import BASE, MODEL, check_output
from arxiv_embeddings.layout import BASE_DIR


def base_folder(folder: str | os.PathLike[str]) -> Path | None:
    """The ``base/`` model folder inside a local model folder, or None when it has none."""
    path = Path(folder) / BASE_DIR
    return path if Path(folder).is_dir() and path.is_dir() else None


def no_base_output(name: str) -> ValueError:
    """The error of a single-model embedder asked for the ``base`` output."""
    return ValueError(
        f"{name} has no {BASE!r} output here: it is served by the model the folder keeps in {BASE_DIR}/ (a model "
        f"trained with train.search_model=base). Load the folder with arxiv_embeddings.backends.load_embedder, which "
        f"serves both, or ask for the 'model' or 'encoder' output."
    )


class WithBaseEmbedder:
    """``main`` for the folder's own outputs, ``base`` (an embedder of its ``base/``) for the ``base`` output.
    Every other attribute (``name``, ``backend``, ``variant``, ``dimension``, ``device``, ``max_seq_length``,
    ``token_counts``, ...) is the main embedder's."""

    def __init__(self, main: Any, base: Any) -> None:
        if base.dimension <= 0:
            raise ValueError(f"{base.name} declares no embedding dimension.")
        self.main = main
        self.base = base

    def __getattr__(self, name: str) -> Any:  # only called for what this class does not define itself
        if name in ("main", "base"):  # not set yet (e.g. while copying): no recursion
            raise AttributeError(name)
        return getattr(self.main, name)

    def encode(self, texts: list[str], batch_size: int = 32, normalize: bool = True, output: str = MODEL) -> np.ndarray:
        """``output="base"``: every module of the base model in ``base/``; any other output: the main model's."""
        if check_output(output) == BASE:
            return np.asarray(self.base.encode(texts, batch_size=batch_size, normalize=normalize, output=MODEL))
        return np.asarray(self.main.encode(texts, batch_size=batch_size, normalize=normalize, output=output))

    def replica(self) -> WithBaseEmbedder:
        """A copy to encode from another thread: a replica of each model."""
        return WithBaseEmbedder(self.main.replica(), self.base.replica())

    def __repr__(self) -> str:
        return f"WithBaseEmbedder(main={self.main!r}, base={self.base!r})"

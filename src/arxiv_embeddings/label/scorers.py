"""The scorers a labelling run can use (``label.scorer``): subject overlap, a cross-encoder and the LLM teacher,
and :func:`build_scorer`, which picks one by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from omegaconf import DictConfig

from arxiv_embeddings.config import ConfigError, choose
from arxiv_embeddings.label.candidates import Candidates, Scorer
from arxiv_embeddings.label.llm import LLMScorer, LLMSettings
from arxiv_embeddings.pair_format import jaccard


class SubjectOverlapScorer:
    """Jaccard overlap of the two papers' ``subjects`` lists (what ``pairs=graded`` uses), vectorized."""

    description = "subject_overlap"

    def __init__(self, cfg: DictConfig) -> None:
        self.stats: dict[str, int] = {}

    def score(self, candidates: Candidates) -> np.ndarray:
        return jaccard(candidates.papers.column("subjects"), candidates.left, candidates.right)


class CrossEncoderScorer:
    """A sentence-transformers ``CrossEncoder`` reading both texts at once. A one-label model's logit goes through
    a sigmoid, so scores are in [0, 1] for STS-style models (whose own activation is a sigmoid) and for
    ranking models (which return raw logits) alike."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg.label.cross_encoder
        self.description = f"cross_encoder ({self.cfg.model})"
        self.stats: dict[str, int] = {}

    def _load(self) -> Any:
        from sentence_transformers import CrossEncoder

        from arxiv_embeddings.backends.loading import default_device

        name = str(self.cfg.model)
        max_length = int(self.cfg.max_length) if self.cfg.max_length else None
        device = str(self.cfg.device) if self.cfg.device else default_device()
        try:
            model = CrossEncoder(name, device=device, max_length=max_length)
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"label.cross_encoder.model={name!r} could not be loaded ({str(err).splitlines()[0]}). Give a "
                "CrossEncoder folder, or a Hub name such as cross-encoder/stsb-roberta-base on a machine that can "
                "reach the Hugging Face Hub (or has it in its cache)."
            ) from None
        if model.num_labels != 1:
            raise ConfigError(
                f"label.cross_encoder.model={name!r} has {model.num_labels} output labels; a scorer needs a model with "
                "one relevance score (num_labels=1), such as an STS or ranking cross-encoder."
            )
        return model

    def score(self, candidates: Candidates) -> np.ndarray:
        import torch

        model = self._load()
        left, right = candidates.texts()
        scores = model.predict(
            list(zip(left, right, strict=True)),
            batch_size=int(self.cfg.batch_size),
            show_progress_bar=True,
            activation_fn=torch.nn.Sigmoid(),
            convert_to_numpy=True,
        )
        return np.asarray(scores, dtype=np.float32).reshape(-1)


def _llm_scorer(cfg: DictConfig) -> LLMScorer:
    return LLMScorer(LLMSettings.from_config(cfg.label.llm))


SCORERS: dict[str, Callable[[DictConfig], Scorer]] = {
    "subject_overlap": SubjectOverlapScorer,
    "cross_encoder": CrossEncoderScorer,
    "llm": _llm_scorer,
}


def build_scorer(cfg: DictConfig) -> Scorer:
    """The scorer named by ``label.scorer`` (see :data:`SCORERS`)."""
    return choose("label.scorer", str(cfg.label.scorer), SCORERS)(cfg)

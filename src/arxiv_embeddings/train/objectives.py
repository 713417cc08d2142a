"""The training objectives: each ``loss`` name with the pair format it needs (checked against the pairs before
training, with the fix named) and how it is built, sentence-transformers' losses and the supervised contrastive one;
the batch samplers and the pairs each suits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from arxiv_embeddings.config import ConfigError, choose, require, to_plain

BATCH_SAMPLERS = ("subject", "category", "subject_groups", "no_duplicates", "random")
#: Pair types each batch sampler suits, where it does not suit them all. subject_groups puts several papers of one
#: subject in a batch: hard in-batch negatives for title -> abstract pairs, false negatives for same-subject pairs.
SAMPLER_PAIRS = {"subject_groups": ("title_abstract",)}


@dataclass(frozen=True)
class LossSpec:
    """A loss class from sentence-transformers, the pair types it can learn from, and its config keys."""

    cls: str
    pair_types: tuple[str, ...]
    kwargs: tuple[str, ...] = ()
    #: The module the class lives in: sentence-transformers' losses, or this package's (arxiv_embeddings.train.losses).
    module: str = "sentence_transformers.sentence_transformer.losses"


IN_BATCH = ("anchor_positive", "title_abstract")
LOSSES: dict[str, LossSpec] = {
    "MultipleNegativesRankingLoss": LossSpec("MultipleNegativesRankingLoss", IN_BATCH, ("scale",)),
    # InfoNCE with in-batch negatives is MultipleNegativesRankingLoss with scale = 1 / temperature; `directions`
    # [query_to_doc, doc_to_query] with partition_mode per_direction is the symmetric (title <-> abstract) form.
    "InfoNCE": LossSpec("MultipleNegativesRankingLoss", IN_BATCH, ("temperature", "directions", "partition_mode")),
    "CachedMultipleNegativesRankingLoss": LossSpec(
        "CachedMultipleNegativesRankingLoss", IN_BATCH, ("scale", "mini_batch_size")
    ),
    "ContrastiveLoss": LossSpec("ContrastiveLoss", ("contrastive",), ("margin",)),
    "OnlineContrastiveLoss": LossSpec("OnlineContrastiveLoss", ("contrastive",), ("margin",)),
    "CoSENTLoss": LossSpec("CoSENTLoss", ("graded",), ("scale",)),
    "CosineSimilarityLoss": LossSpec("CosineSimilarityLoss", ("graded",)),
    # Label-aware: (text, label) rows, every same-subject paper of a batch a positive (train.papers_per_subject).
    "SupervisedContrastiveLoss": LossSpec(
        "SupervisedContrastiveLoss", ("labelled",), ("temperature",), module="arxiv_embeddings.train.losses"
    ),
    "BatchAllTripletLoss": LossSpec("BatchAllTripletLoss", ("labelled",), ("margin",)),
    "BatchHardSoftMarginTripletLoss": LossSpec("BatchHardSoftMarginTripletLoss", ("labelled",)),
}


def loss_spec(loss_cfg: DictConfig) -> LossSpec:
    """The spec of the configured loss (for ``MatryoshkaLoss``, of its inner loss)."""
    name = loss_cfg.inner if loss_cfg.name == "MatryoshkaLoss" else loss_cfg.name
    key = "loss.inner" if loss_cfg.name == "MatryoshkaLoss" else "loss.name"
    return choose(key, str(name), LOSSES)


def check_loss_matches_pairs(loss_cfg: DictConfig, pair_type: str, task: str | None = None) -> None:
    """Fail with the fix unless the loss can learn from ``pair_type`` pairs (``task``: the mix task's key, whose
    ``loss.name`` and ``pairs`` the message names instead of the ``loss`` and ``pairs`` groups)."""
    spec = loss_spec(loss_cfg)
    if pair_type not in spec.pair_types:
        fitting = sorted(n for n, s in LOSSES.items() if pair_type in s.pair_types)
        if task:
            raise ConfigError(
                f"{task}: loss {spec.cls} does not fit its pairs '{pair_type}' (it needs {' or '.join(spec.pair_types)} "
                f"pairs). Set {task}.loss.name to one of {', '.join(fitting)}, or {task}.pairs={spec.pair_types[0]}."
            )
        raise ConfigError(
            f"loss {spec.cls} does not fit pairs of type '{pair_type}' (it needs {' or '.join(spec.pair_types)} pairs). "
            f"Use one of {', '.join(fitting)} for '{pair_type}' pairs, or rebuild the pairs with "
            f"'uv run inv pairs --overrides pairs={spec.pair_types[0]}'."
        )


def build_loss(model: Any, loss_cfg: DictConfig) -> Any:
    import importlib

    from sentence_transformers.sentence_transformer import losses

    spec = loss_spec(loss_cfg)
    kwargs = {k: to_plain(loss_cfg[k]) for k in spec.kwargs if loss_cfg.get(k) is not None}
    if "margin" in kwargs:
        kwargs["margin"] = float(kwargs["margin"])
    if "temperature" in kwargs:
        temperature = kwargs["temperature"]
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature <= 0:
            raise ConfigError(f"loss.temperature={temperature!r}: the temperature must be a number > 0.")
        if spec.cls == "MultipleNegativesRankingLoss":  # InfoNCE: the library's scale is 1 / temperature
            kwargs["scale"] = 1.0 / float(kwargs.pop("temperature"))
    if "directions" in kwargs:
        kwargs["directions"] = tuple(kwargs["directions"])
    loss = getattr(importlib.import_module(spec.module), spec.cls)(model, **kwargs)
    if loss_cfg.name == "MatryoshkaLoss":
        dims = [int(d) for d in loss_cfg.dims]
        width = model.get_embedding_dimension()
        if max(dims) > width:
            raise ConfigError(f"loss.dims={dims} has a dimension above the model's embedding size {width}.")
        loss = losses.MatryoshkaLoss(model, loss, matryoshka_dims=dims)
    return loss


def check_sampler_suits(batch_sampler: str, pair_type: str, key: str) -> None:
    """Fail with the fix when ``batch_sampler`` (the setting ``key``) does not suit ``pair_type`` pairs."""
    suits = SAMPLER_PAIRS.get(batch_sampler)
    if suits and pair_type not in suits:
        raise ConfigError(
            f"{key}={batch_sampler} is for {' or '.join(suits)} pairs, not {pair_type}: it would put same-subject "
            "papers in a batch as each other's negatives. Use subject, category, no_duplicates or random for these "
            "pairs."
        )


def check_labelled_sampler(batch_sampler: str) -> None:
    """Labelled rows batch by subject groups (``train.batch_sampler=subject``) or at random."""
    if batch_sampler not in ("subject", "random"):
        raise ConfigError(
            f"train.batch_sampler={batch_sampler} does not apply to labelled rows (pairs=labelled); use subject "
            "(batches of train.papers_per_subject papers of each of several subjects) or random."
        )


def check_group_size(papers_per_subject: Any, batch_size: int) -> None:
    """Batches of subject groups (labelled rows, ``subject_groups``): the group size must divide the batch."""
    require(
        isinstance(papers_per_subject, int)
        and not isinstance(papers_per_subject, bool)
        and papers_per_subject >= 2
        and batch_size % papers_per_subject == 0,
        "train.papers_per_subject",
        f"got {papers_per_subject!r}; expected an integer >= 2 that divides "
        f"trainer.per_device_train_batch_size={batch_size}.",
    )

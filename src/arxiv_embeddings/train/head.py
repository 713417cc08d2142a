"""A linear subject head over a trained encoder: embed labelled papers once, fit a linear map in seconds.

After the encoder is fine-tuned, ``train.head`` embeds ``papers`` papers of the train split with it, then fits a
``d x d`` linear map on those embeddings, one of two kinds (``train.head.kind``):

- ``lda``: linear discriminant analysis in closed form (scikit-learn's eigen solver with a shrunk within-subject
  covariance, ``shrinkage``). The map projects on the ``components`` most discriminant directions, each scaled to
  unit within-subject variance; its other ``d - components`` rows are zero, so the output keeps the model's
  dimension, its first ``components`` coordinates carry all of it, and a cosine between two outputs is the cosine
  in the discriminant space.
- ``supcon``: a map initialized to the identity and trained with the supervised contrastive loss
  (:class:`~arxiv_embeddings.train.losses.SupervisedContrastiveLoss`: every same-subject paper of a batch a
  positive; ``epochs``, ``learning_rate``, ``batch_size``, ``temperature``).

The map becomes part of the saved model as a sentence-transformers ``Dense`` module between two ``Normalize``
modules (Transformer -> Pooling -> Normalize -> Dense -> Normalize), so ``inv evaluate``, the index, the ONNX export
and the API serve it with no extra step.

The cost is the one pass that embeds the papers (the fit itself takes seconds); what the head gains, over the base
model and over a fine-tuned one, is measured in bench/README.md.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
from loguru import logger
from omegaconf import DictConfig

from arxiv_embeddings.config import ConfigError

#: The module class sentence-transformers saves for the head (``modules.json`` ``type``), by its short name.
DENSE = "Dense"


@dataclass(frozen=True)
class HeadFit:
    """A fitted head: ``y = x @ weight.T + bias`` (the layout of ``torch.nn.Linear``) and how the fit went."""

    weight: np.ndarray
    bias: np.ndarray
    losses: list[float]
    papers: int
    subjects: int
    seconds: float
    kind: str = "supcon"
    components: int | None = None


#: The kinds of head ``train.head.kind`` names, and the keys of ``train.head`` each one reads.
HEAD_KINDS = {"lda": ("components", "shrinkage"), "supcon": ("epochs", "learning_rate", "batch_size", "temperature")}


def _check_int(head: DictConfig, key: str, minimum: int) -> None:
    value = head.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"train.head.{key}={value!r}: must be an integer >= {minimum}.")


def _check_positive(head: DictConfig, key: str) -> None:
    value = head.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ConfigError(f"train.head.{key}={value!r}: must be a number > 0.")


def validate_head(head: DictConfig) -> None:
    """Clear errors for a ``train.head`` section that cannot be fit."""
    kind = head.get("kind", "supcon")
    if kind not in HEAD_KINDS:
        raise ConfigError(f"train.head.kind={kind!r}: choose one of {', '.join(HEAD_KINDS)}.")
    _check_int(head, "papers", 2)
    if kind == "lda":
        _check_int(head, "components", 1)
        value = head.get("shrinkage")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
            raise ConfigError(
                f"train.head.shrinkage={value!r}: must be a number in [0, 1] (the weight of the identity in the "
                "shrunk within-subject covariance; 0.02 is the default)."
            )
        return
    for key, minimum in (("epochs", 1), ("batch_size", 2)):
        _check_int(head, key, minimum)
    for key in ("learning_rate", "temperature"):
        _check_positive(head, key)


def _labels(x: np.ndarray, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    if x.ndim != 2 or len(x) != len(labels):
        raise ValueError(f"embeddings {x.shape} and labels ({len(labels)}) must be (n, d) and n long.")
    names, codes = np.unique(np.asarray(labels).astype(str), return_inverse=True)
    if len(names) < 2:
        raise ValueError(f"A subject head needs papers of at least 2 subjects; got {len(names)} ({list(names)}).")
    return names, codes


def fit_lda_head(
    embeddings: np.ndarray, labels: np.ndarray, *, components: int, shrinkage: float, blend: float = 0.0
) -> HeadFit:
    """Fit linear discriminant analysis on ``embeddings`` (scikit-learn, eigen solver, shrunk within-subject
    covariance) and return it as a ``d x d`` map: its first ``k = min(components, subjects - 1)`` rows project on the
    most discriminant directions (unit within-subject variance each), centred on the papers' mean. With ``blend`` 0
    the other rows are zero; with ``blend`` > 0 they hold the papers' ``d - k`` principal directions, scaled so that
    their part of an output's squared length is ``blend**2`` times the discriminant part's on average: the output
    keeps that much of what the encoder saw beside the subjects. Closed form: the same papers give the same map."""
    import time

    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    x = np.asarray(embeddings, dtype=np.float64)
    names, codes = _labels(x, labels)
    started = time.perf_counter()
    k = min(int(components), len(names) - 1, x.shape[1])
    if k < int(components):
        logger.info(
            f"Subject head: {len(names)} subjects give at most {k} discriminant directions (asked {components})."
        )
    lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage=float(shrinkage)).fit(x, codes)
    directions = np.asarray(lda.scalings_[:, :k], dtype=np.float64).T  # (k, d)
    weight = np.zeros((x.shape[1], x.shape[1]), dtype=np.float64)
    weight[:k] = directions
    # One scale for the whole map (cosines do not see it): the typical output coordinate near 1, not ~1/sigma.
    scale = float(np.sqrt(np.mean(np.square(directions @ (x - x.mean(0)).T))))
    weight /= max(scale, 1e-12)
    if blend > 0 and k < x.shape[1]:
        centred = x - x.mean(0)
        values, vectors = np.linalg.eigh(centred.T @ centred / len(x))
        top = vectors[:, ::-1][:, : x.shape[1] - k].T  # (d - k, d), by falling variance
        kept = float(np.sum(values[::-1][: x.shape[1] - k]))  # mean squared length of the papers on them
        # the discriminant rows give outputs of mean squared length k (each coordinate ~1)
        weight[k:] = top * (float(blend) * np.sqrt(k / max(kept, 1e-12)))
    bias = -weight @ x.mean(0)
    return HeadFit(
        weight=weight.astype(np.float32),
        bias=bias.astype(np.float32),
        losses=[],
        papers=len(x),
        subjects=len(names),
        seconds=round(time.perf_counter() - started, 2),
        kind="lda",
        components=k,
    )


def fit_linear_head(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    temperature: float,
    seed: int,
) -> HeadFit:
    """Fit a linear map on L2-normalized ``embeddings`` so that same-``labels`` rows come together (SupCon).

    The map starts as the identity (so an untrained head changes nothing) and is trained with AdamW over shuffled
    batches of ``batch_size`` rows for ``epochs`` passes; the same seed gives the same weights.
    """
    import time

    import torch
    import torch.nn.functional as F

    from arxiv_embeddings.train.losses import SupervisedContrastiveLoss

    x = np.asarray(embeddings, dtype=np.float32)
    names, codes = _labels(x, labels)
    started = time.perf_counter()
    torch.manual_seed(int(seed))
    rng = np.random.default_rng(int(seed))
    dim = x.shape[1]
    head = torch.nn.Linear(dim, dim)
    with torch.no_grad():
        head.weight.copy_(torch.eye(dim))
        head.bias.zero_()
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(codes.astype(np.int64))
    loss_fn = SupervisedContrastiveLoss(model=None, temperature=float(temperature))
    opt = torch.optim.AdamW(head.parameters(), lr=float(learning_rate), weight_decay=0.0)
    losses: list[float] = []
    for _ in range(int(epochs)):
        perm = rng.permutation(len(x))
        total, batches = 0.0, 0
        for start in range(0, len(perm), int(batch_size)):
            batch = torch.from_numpy(perm[start : start + int(batch_size)])
            loss = loss_fn.from_embeddings(F.normalize(head(x_t[batch]), dim=-1), y_t[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, batches = total + loss.item(), batches + 1
        losses.append(round(total / max(batches, 1), 5))
    return HeadFit(
        weight=head.weight.detach().numpy().copy(),
        bias=head.bias.detach().numpy().copy(),
        losses=losses,
        papers=len(x),
        subjects=len(names),
        seconds=round(time.perf_counter() - started, 2),
    )


def add_head(model: Any, fit: HeadFit) -> Any:
    """Put ``fit`` into ``model`` (a SentenceTransformer ending in Normalize) as Normalize -> Dense -> Normalize.

    The head sees the embeddings it was fit on (the normalized outputs of the encoder) and the model's outputs stay
    unit vectors. Returns the same model object, changed in place.
    """
    import torch
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    modules = list(model._modules.values())
    if any(type(m).__name__ == DENSE for m in modules):
        raise ValueError("This model already has a Dense module; a second subject head is not stacked on it.")
    if not modules or type(modules[-1]).__name__ != "Normalize":
        modules.append(Normalize())
    dim_in, dim_out = fit.weight.shape[1], fit.weight.shape[0]
    dense = Dense(
        dim_in,
        dim_out,
        bias=True,
        activation_function=torch.nn.Identity(),
        init_weight=torch.from_numpy(fit.weight),
        init_bias=torch.from_numpy(fit.bias),
    )
    device = next(model.parameters()).device
    modules = [*modules, dense.to(device), Normalize()]
    for key in list(model._modules):
        del model._modules[key]
    for i, module in enumerate(modules):
        model.add_module(str(i), module)
    return model


def sample_papers(table: Any, n: int, seed: int) -> Any:
    """A seeded random ``n`` rows of a pyarrow table (all of them when it has fewer)."""
    if table.num_rows <= n:
        return table
    rows = np.sort(np.random.default_rng(int(seed)).choice(table.num_rows, size=n, replace=False))
    return table.take(rows)


def train_head(
    model: Any,
    papers: Any,
    text: str,
    precision: str,
    *,
    kind: str,
    options: dict[str, Any],
    seed: int,
    encode_batch_size: int,
) -> dict[str, Any]:
    """Embed ``papers`` (train papers as a pyarrow Table, :func:`sample_papers`) with ``model``, fit a head of
    ``kind`` (``lda`` or ``supcon``, :data:`HEAD_KINDS`) with its ``options`` on them and add it to the model.

    ``precision`` is the training precision: bf16 embeds under autocast (what made the fit cheap on a CPU with AMX);
    the head itself is fit in fp32 (``lda``: fp64). The papers are embedded ``encode_batch_size`` at a time (the stage
    passes the batch size its evaluators encode with). Returns what goes into train_summary.json.
    """
    import time

    import torch

    from arxiv_embeddings.papers import paper_text

    if kind not in HEAD_KINDS:
        raise ValueError(f"Unknown head kind {kind!r}; choose one of {', '.join(HEAD_KINDS)}.")
    options = {key: options[key] for key in HEAD_KINDS[kind]}
    started = time.perf_counter()
    texts = paper_text(papers, text)
    labels = papers.column("primary_subject").to_numpy(zero_copy_only=False).astype(str)
    logger.info(f"Subject head: embedding {len(texts):,} train papers ({len(set(labels))} subjects) ...")
    device_type = next(model.parameters()).device.type
    autocast = torch.autocast(device_type=device_type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    model.eval()
    with torch.inference_mode(), autocast:
        embeddings = model.encode(
            texts,
            batch_size=int(encode_batch_size),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=True,
        ).astype(np.float32)
    embed_s = time.perf_counter() - started
    if kind == "lda":
        fit = fit_lda_head(
            embeddings, labels, components=int(options["components"]), shrinkage=float(options["shrinkage"])
        )
        how = f"{fit.components} discriminant directions"
    else:
        fit = fit_linear_head(embeddings, labels, seed=seed, **options)
        how = f"loss {fit.losses[0]:.4f} -> {fit.losses[-1]:.4f}"
    add_head(model, fit)
    logger.info(
        f"Subject head ({kind}): fit on {fit.papers:,} papers of {fit.subjects} subjects in {fit.seconds:.1f} s "
        f"(embedding took {embed_s:.0f} s); {how}."
    )
    return {
        "kind": kind,
        **options,
        "papers": fit.papers,
        "subjects": fit.subjects,
        "components": fit.components,
        "losses": fit.losses,
        "embed_seconds": round(embed_s, 1),
        "fit_seconds": fit.seconds,
    }

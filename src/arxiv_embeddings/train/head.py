"""A linear subject head over a trained encoder: embed labelled papers once, fit a linear map in seconds.

After the encoder is fine-tuned, ``train.head`` embeds ``papers`` papers of the train split with it, then fits a ``d x d`` linear map (initialized to the identity)
on those embeddings with the supervised contrastive loss (:class:`~arxiv_embeddings.train.losses.SupervisedContrastiveLoss`:
every same-subject paper of a batch a positive). The map becomes part of the saved model as a sentence-transformers
``Dense`` module between two ``Normalize`` modules (Transformer -> Pooling -> Normalize -> Dense -> Normalize), so
``inv evaluate``, the index, the ONNX export and the API serve it with no extra step.

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


def validate_head(head: DictConfig) -> None:
    """Clear errors for a ``train.head`` section that cannot be fit."""
    for key, minimum in (("papers", 2), ("epochs", 1), ("batch_size", 2)):
        value = head.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigError(f"train.head.{key}={value!r}: must be an integer >= {minimum}.")
    for key in ("learning_rate", "temperature"):
        value = head.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise ConfigError(f"train.head.{key}={value!r}: must be a number > 0.")


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
    if x.ndim != 2 or len(x) != len(labels):
        raise ValueError(f"embeddings {x.shape} and labels ({len(labels)}) must be (n, d) and n long.")
    names, codes = np.unique(np.asarray(labels).astype(str), return_inverse=True)
    if len(names) < 2:
        raise ValueError(f"A subject head needs papers of at least 2 subjects; got {len(names)} ({list(names)}).")
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
    epochs: int,
    learning_rate: float,
    batch_size: int,
    temperature: float,
    seed: int,
    encode_batch_size: int,
) -> dict[str, Any]:
    """Embed ``papers`` (train papers as a pyarrow Table, :func:`sample_papers`) with ``model``, fit the head on
    them and add it to the model.

    ``precision`` is the training precision: bf16 embeds under autocast (what made the fit cheap on a CPU with AMX);
    the head itself is fit in fp32. The papers are embedded ``encode_batch_size`` at a time (the stage passes the
    batch size its evaluators encode with). Returns what goes into train_summary.json.
    """
    import time

    import torch

    from arxiv_embeddings.papers import paper_text

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
    fit = fit_linear_head(
        embeddings,
        labels,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        temperature=temperature,
        seed=seed,
    )
    add_head(model, fit)
    logger.info(
        f"Subject head: fit on {fit.papers:,} papers of {fit.subjects} subjects in {fit.seconds:.1f} s "
        f"(embedding took {embed_s:.0f} s); loss {fit.losses[0]:.4f} -> {fit.losses[-1]:.4f}."
    )
    return {
        "papers": fit.papers,
        "subjects": fit.subjects,
        "epochs": epochs,
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "temperature": temperature,
        "losses": fit.losses,
        "embed_seconds": round(embed_s, 1),
        "fit_seconds": fit.seconds,
    }

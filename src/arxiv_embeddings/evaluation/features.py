"""Turning papers into the vectors that are scored: a model loaded at its own (served) length and precision, or
any ``encode(texts, what)`` (TF-IDF, a hosted API), into :class:`Features` for the test, train and fresh papers
(both fresh slices: the papers, their titles and their abstracts)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from loguru import logger
from omegaconf import DictConfig

from arxiv_embeddings.backends.batches import check_max_batch_tokens
from arxiv_embeddings.backends.tasks import BASE, DEFAULT_TASKS, MODEL, TASKS, TaskMap, tasks_of
from arxiv_embeddings.evaluation.data import EvalData
from arxiv_embeddings.evaluation.settings import model_source
from arxiv_embeddings.io import is_remote
from arxiv_embeddings.layout import BASE_DIR, ModelNotFoundError, model_location
from arxiv_embeddings.metrics import (
    Matrix,
)
from arxiv_embeddings.papers import paper_text

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


@dataclass
class Features:
    """Vectors (dense embeddings or sparse TF-IDF rows) of everything the evaluation scores."""

    papers: Matrix  # test papers, text = evaluate.text
    titles: Matrix  # test titles (title -> abstract queries)
    abstracts: Matrix  # test abstracts (title -> abstract corpus)
    train: Matrix  # train papers for the classifier, text = evaluate.text
    info: dict[str, Any] = field(default_factory=dict)
    fresh: Matrix | None = None  # the generalization check's papers, text = evaluate.text
    fresh_titles: Matrix | None = None  # their titles (title -> abstract queries)
    fresh_abstracts: Matrix | None = None  # their abstracts (title -> abstract corpus)
    fresh_natural: Matrix | None = None  # the fresh papers in natural proportions, text = evaluate.text
    fresh_natural_titles: Matrix | None = None
    fresh_natural_abstracts: Matrix | None = None

    def slice(self, key: str) -> tuple[Matrix | None, Matrix | None, Matrix | None]:
        """The papers, titles and abstracts of a set of papers: ``test``, ``fresh`` or ``fresh_natural``."""
        if key == "test":
            return self.papers, self.titles, self.abstracts
        if key not in ("fresh", "fresh_natural"):
            raise ValueError(f"No set of papers {key!r}; expected test, fresh or fresh_natural.")
        return getattr(self, key), getattr(self, f"{key}_titles"), getattr(self, f"{key}_abstracts")


def _torch_dtype(precision: str, device: str) -> Any:
    import torch

    from arxiv_embeddings.backends.loading import best_precision

    if precision == "auto":
        precision = best_precision(device)
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def _fit_seq_length(model: SentenceTransformer, wanted: int) -> None:
    """Lower ``max_seq_length`` to what the model's tokenizer accepts (longer inputs would not fit its positions)."""
    limit = int(getattr(getattr(model, "tokenizer", None), "model_max_length", 0) or 0)
    if 0 < limit < wanted:
        logger.warning(f"evaluate.encode.max_seq_length={wanted} is more than this model accepts; using {limit}.")
        model.max_seq_length = limit


def _embedding_dim(model: SentenceTransformer) -> int:
    return int(model.get_embedding_dimension() or 0)


def load_encoder(cfg: DictConfig, model: str | None = None) -> tuple[SentenceTransformer, dict[str, Any]]:
    """Load the model to evaluate, on the configured device and precision."""
    from arxiv_embeddings.backends.loading import default_device, load_model

    enc = cfg.evaluate.encode
    remote = model_location(cfg, model)
    location = model_source(cfg, model)
    device = str(enc.device or default_device())
    wanted = int(enc.max_seq_length) if enc.max_seq_length else None
    try:
        st = load_model(location, device=device, max_seq_length=wanted)
    except ModelNotFoundError:
        raise
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(
            f"Could not load {location!r} as a sentence-transformers model ({type(err).__name__}: {err}). Expected a "
            "run name with a model at models/<run>/final, a model folder, or a Hub name that is in the local Hugging "
            "Face cache or can be downloaded."
        ) from err
    if wanted:
        _fit_seq_length(st, wanted)
    dtype = _torch_dtype(str(enc.precision), device)
    st.to(dtype)
    info = {
        "kind": "sentence-transformers",
        "model_path": remote if is_remote(remote) else location,
        "device": device,
        "precision": str(dtype).removeprefix("torch."),
        "max_seq_length": int(st.max_seq_length or 0),
        "batch_size": int(enc.batch_size),
        "dim": _embedding_dim(st),
        # which output serves each task: the folder's tasks.json (every task on the whole model without one)
        "tasks": tasks_of(location).as_dict(),
    }
    return st, info


def encode_texts(
    model: SentenceTransformer, texts: list[str], batch_size: int, what: str, max_tokens: int | None = None
) -> np.ndarray:
    """L2-normalized float32 embeddings of ``texts``, in batches, with a progress bar. Batches group texts of
    similar length (sentence-transformers sorts them); with ``max_tokens`` each is also capped at that many padded
    tokens (:func:`arxiv_embeddings.backends.torch_embedder.encode_in_token_batches`)."""
    from arxiv_embeddings.backends.torch_embedder import encode_in_token_batches

    logger.info(f"Encoding {len(texts):,} {what}.")
    dim = _embedding_dim(model)
    return encode_in_token_batches(model, texts, batch_size, max_tokens, dim, normalize=True, progress=True)


Encode = Callable[[list[str], str], Matrix]


def _papers_titles_abstracts(
    encode: Encode, table: pa.Table, text: str, what: str, encode_search: Encode | None = None
) -> tuple[Matrix, Matrix, Matrix]:
    """The vectors of ``table``'s papers (``text``), titles and abstracts, the titles and abstracts by
    ``encode_search`` when the model serves search with another output; no text is encoded twice by one output (the
    papers reuse the titles or the abstracts when ``text`` is one of them and one output serves both)."""
    search = encode_search or encode
    titles = search(paper_text(table, "title"), f"{what} titles")
    abstracts = search(paper_text(table, "abstract"), f"{what} abstracts")
    papers = {"title": titles, "abstract": abstracts}.get(text) if encode_search is None else None
    if papers is None:
        papers = encode(paper_text(table, text), f"{what} papers ({text})")
    return papers, titles, abstracts


def features_from(encode: Encode, data: EvalData, text: str, encode_search: Encode | None = None) -> Features:
    """The test papers (``text``), titles and abstracts, the classifier's train papers, and the papers, titles and
    abstracts of each fresh slice, as ``encode(texts, what)`` turns them into vectors (the titles and abstracts, the
    search task's texts, by ``encode_search`` when given); no text is encoded twice by one output."""
    papers, titles, abstracts = _papers_titles_abstracts(encode, data.test, text, "test", encode_search)
    train = encode(paper_text(data.train, text), f"train papers ({text}) for the classifier")
    features = Features(papers=papers, titles=titles, abstracts=abstracts, train=train)
    for key, what in (("fresh", "fresh"), ("fresh_natural", "fresh (natural proportions)")):
        table = getattr(data, key)
        if table is not None and table.num_rows >= 2:
            vectors = _papers_titles_abstracts(encode, table, text, what, encode_search)
            for suffix, matrix in zip(("", "_titles", "_abstracts"), vectors, strict=True):
                setattr(features, f"{key}{suffix}", matrix)
    return features


def task_outputs(
    model: SentenceTransformer, tasks: TaskMap, folder: str | os.PathLike[str] | None = None
) -> dict[str, SentenceTransformer]:
    """The model computing each task's output as the model's ``tasks.json`` maps it (``subject``, ``search``,
    ``graded``): the model itself for ``model``, the model up to its Pooling for ``encoder``, and for ``base`` the
    untouched base model the model's ``folder`` keeps in ``base/`` (loaded on the model's device, in its dtype)."""
    from arxiv_embeddings.backends.torch_embedder import encoder_view

    views: dict[str, SentenceTransformer] = {MODEL: model}
    out = {}
    for task in TASKS:
        output = tasks.tasks.get(task, tasks.tasks[tasks.default])
        if output not in views and output == BASE:
            views[output] = _base_model(model, tasks, folder)
        elif output not in views:
            view, _ = encoder_view(model, _embedding_dim(model))
            if view is None:
                raise ValueError(
                    f"{tasks.source or 'the model'} maps {task} to the {output!r} output, but the model has no Pooling "
                    f"module ({' -> '.join(type(m).__name__ for m in model)}); map every task to {MODEL!r}."
                )
            views[output] = view
        out[task] = views[output]
    return out


def _base_model(model: SentenceTransformer, tasks: TaskMap, folder: str | os.PathLike[str] | None) -> Any:
    from arxiv_embeddings.backends.loading import load_model

    path = Path(folder) / BASE_DIR if folder is not None else None
    if path is None or not path.is_dir():
        raise ValueError(
            f"{tasks.source or 'the model'} serves a task with the {BASE!r} output, the base model in {BASE_DIR}/, but "
            f"{path or 'no model folder was given'} is not a folder; evaluate the model from its folder."
        )
    base = load_model(path, device=str(model.device), max_seq_length=model.max_seq_length)
    return base.to(next(model.parameters()).dtype)


def embed(
    model: SentenceTransformer,
    data: EvalData,
    cfg: DictConfig,
    tasks: TaskMap = DEFAULT_TASKS,
    folder: str | os.PathLike[str] | None = None,
) -> Features:
    """Embed the test papers, titles and abstracts, the classifier's train papers and the fresh slices (no text
    encoded twice by one output), each with the output ``tasks`` (the model's ``tasks.json``) serves it with: the
    papers with the subject task's, the titles and abstracts with the search task's. The graded score is computed
    from the papers' vectors, so from the subject output; a model serving graded with another output gets a warning.
    ``folder``: the model's local folder (where a ``base`` output's model is)."""
    bs = int(cfg.evaluate.encode.batch_size)
    views = task_outputs(model, tasks, folder)
    if views["graded"] is not views["subject"]:
        logger.warning(
            f"{tasks.source}: graded relatedness is served by another output than subject; the evaluation scores it "
            "from the subject output's vectors."
        )

    max_tokens = check_max_batch_tokens(cfg.evaluate.encode.get("max_batch_tokens"), "evaluate.encode.max_batch_tokens")

    def encoder(view: SentenceTransformer) -> Encode:
        return lambda texts, what: encode_texts(view, texts, bs, what, max_tokens)

    search = encoder(views["search"]) if views["search"] is not views["subject"] else None
    return features_from(encoder(views["subject"]), data, str(cfg.evaluate.text), search)

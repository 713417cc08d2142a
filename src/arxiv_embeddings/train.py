"""train: fine-tune a sentence-transformer on the pairs with SentenceTransformerTrainer.

    uv run inv train --overrides "loss=cached_mnrl trainer.per_device_train_batch_size=256"

The recipe follows the library's own examples: model -> data -> loss -> evaluator -> args -> trainer -> train ->
test evaluation -> save the final model (with its model card and the resolved config beside it). The evaluator
during training reads the **eval** split only; the test split is touched once, after training.

With the models in a bucket (``paths=gcs``) the trainer writes its checkpoints to local disk
(:func:`checkpoint_dir`), and with ``train.checkpoint_sync`` each one is also copied to
``<models_dir>/<run>/checkpoints/`` in the bucket (:class:`CheckpointSync`), so that a run on a machine that can
vanish (a SPOT / preemptible VM) resumes on the next one from its last checkpoint (:func:`download_checkpoint`).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import hydra
import numpy as np
from loguru import logger
from omegaconf import DictConfig, OmegaConf

from arxiv_embeddings.backends.loading import model_files
from arxiv_embeddings.config import CONFIG_DIR, ConfigError, check_missing, choose, require, require_in, to_plain
from arxiv_embeddings.data import paper_text
from arxiv_embeddings.io import (
    artifact_path,
    atomic_dir,
    download_dir,
    exists,
    is_remote,
    publish_dir,
    read_json,
    read_parquet,
    remove_tree,
    write_json,
)
from arxiv_embeddings.layout import PAIR_SOURCES
from arxiv_embeddings.stage import StageSpec, fingerprint

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
BATCH_SAMPLERS = ("subject", "category", "no_duplicates", "random")


# ------------------------------------------------------------------------------------------------- losses
@dataclass(frozen=True)
class LossSpec:
    """A loss class from sentence-transformers, the pair types it can learn from, and its config keys."""

    cls: str
    pair_types: tuple[str, ...]
    kwargs: tuple[str, ...] = ()
    #: The module the class lives in: sentence-transformers' losses, or this package's (arxiv_embeddings.losses).
    module: str = "sentence_transformers.losses"


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
        "SupervisedContrastiveLoss", ("labelled",), ("temperature",), module="arxiv_embeddings.losses"
    ),
    "BatchAllTripletLoss": LossSpec("BatchAllTripletLoss", ("labelled",), ("margin",)),
    "BatchHardSoftMarginTripletLoss": LossSpec("BatchHardSoftMarginTripletLoss", ("labelled",)),
}


def loss_spec(loss_cfg: DictConfig) -> LossSpec:
    """The spec of the configured loss (for ``MatryoshkaLoss``, of its inner loss)."""
    name = loss_cfg.inner if loss_cfg.name == "MatryoshkaLoss" else loss_cfg.name
    key = "loss.inner" if loss_cfg.name == "MatryoshkaLoss" else "loss.name"
    return choose(key, str(name), LOSSES)


def check_loss_matches_pairs(loss_cfg: DictConfig, pair_type: str) -> None:
    spec = loss_spec(loss_cfg)
    if pair_type not in spec.pair_types:
        fitting = sorted(n for n, s in LOSSES.items() if pair_type in s.pair_types)
        raise ConfigError(
            f"loss {spec.cls} does not fit pairs of type '{pair_type}' (it needs {' or '.join(spec.pair_types)} pairs). "
            f"Use one of {', '.join(fitting)} for '{pair_type}' pairs, or rebuild the pairs with "
            f"'uv run inv pairs --overrides pairs={spec.pair_types[0]}'."
        )


def build_loss(model: Any, loss_cfg: DictConfig) -> Any:
    import importlib

    from sentence_transformers import losses  # type: ignore[attr-defined]

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
        width = model.get_sentence_embedding_dimension()
        if max(dims) > width:
            raise ConfigError(f"loss.dims={dims} has a dimension above the model's embedding size {width}.")
        loss = losses.MatryoshkaLoss(model, loss, matryoshka_dims=dims)
    return loss


# ---------------------------------------------------------------------------------------------- evaluator
def retrieval_evaluator(cfg: DictConfig, split: str, n_papers: int, text: str, name: str) -> Any | None:
    """Subject retrieval on ``n_papers`` papers of ``split``: a quarter are queries, the rest the corpus,
    relevant = same primary subject. Returns None when ``n_papers`` is 0."""
    from arxiv_embeddings.layout import split_path

    if n_papers <= 0:
        return None
    papers = read_parquet(split_path(cfg, split)).to_pandas()
    rng = np.random.default_rng(int(cfg.seed))
    papers = papers.iloc[np.sort(rng.permutation(len(papers))[: min(n_papers, len(papers))])].reset_index(drop=True)
    is_query = rng.random(len(papers)) < 0.25
    texts = paper_text(papers, text)
    corpus = {pid: texts[i] for i, pid in enumerate(papers.arxiv_id) if not is_query[i]}
    by_subject: dict[str, set[str]] = {}
    for i, (pid, subject) in enumerate(zip(papers.arxiv_id, papers.primary_subject, strict=True)):
        if not is_query[i]:
            by_subject.setdefault(subject, set()).add(pid)
    queries, relevant = {}, {}
    for i, (pid, subject) in enumerate(zip(papers.arxiv_id, papers.primary_subject, strict=True)):
        if is_query[i] and by_subject.get(subject):
            queries[pid] = texts[i]
            relevant[pid] = by_subject[subject]
    return _ir_evaluator(cfg, queries, corpus, relevant, name)


def title_abstract_evaluator(cfg: DictConfig, split: str, n_papers: int, name: str) -> Any | None:
    """Title -> abstract retrieval on ``n_papers`` papers of ``split``: each title is a query, the papers'
    abstracts the corpus, relevant = its own abstract. Returns None when ``n_papers`` is 0."""
    from arxiv_embeddings.layout import split_path

    if n_papers <= 0:
        return None
    papers = read_parquet(split_path(cfg, split), columns=["arxiv_id", "title", "abstract"]).to_pandas()
    rng = np.random.default_rng(int(cfg.seed))
    papers = papers.iloc[np.sort(rng.permutation(len(papers))[: min(n_papers, len(papers))])]
    ids = papers.arxiv_id.astype(str).tolist()
    titles = dict(zip(ids, papers.title, strict=True))
    abstracts = dict(zip(ids, papers.abstract, strict=True))
    return _ir_evaluator(cfg, titles, abstracts, {pid: {pid} for pid in ids}, name)


def _ir_evaluator(
    cfg: DictConfig,
    queries: dict[str, str],
    corpus: dict[str, str],
    relevant: dict[str, set[str]],
    name: str,
) -> Any:
    """The library's retrieval evaluator with the cut-offs every evaluation during training reports."""
    from sentence_transformers.evaluation import InformationRetrievalEvaluator

    return InformationRetrievalEvaluator(
        queries,
        corpus,
        relevant,
        name=name,
        precision_recall_at_k=[1, 5, 10],
        mrr_at_k=[10],
        ndcg_at_k=[10],
        map_at_k=[100],
        accuracy_at_k=[1, 10],
        batch_size=int(cfg.trainer.per_device_eval_batch_size),
        show_progress_bar=False,
    )


def task_evaluator(cfg: DictConfig, pair_type: str, split: str, n_papers: int, text: str, name: str) -> Any | None:
    """The evaluator of what the pairs teach: title -> abstract retrieval for ``title_abstract`` pairs, subject
    retrieval for the others."""
    if pair_type == "title_abstract":
        return title_abstract_evaluator(cfg, split, n_papers, name)
    return retrieval_evaluator(cfg, split, n_papers, text, name)


# ------------------------------------------------------------------------------------------------ trainer
def _trainer_class() -> type:
    from sentence_transformers import SentenceTransformerTrainer

    class ArxivTrainer(SentenceTransformerTrainer):  # type: ignore[misc]
        """The library's trainer, with the subject-aware or category-aware batch sampler for the training set, and
        LoRA checkpoints that load as sentence-transformers (for resuming)."""

        # The batch sampler of the training set: a class of arxiv_embeddings.samplers and its keyword arguments
        # beyond the library's (SubjectBatchSampler: subjects; CategoryBatchSampler: subjects, keys, hard_fraction,
        # distinct_subjects; LabelGroupBatchSampler: labels, per_label), or None for the library's own.
        train_sampler: tuple[type, dict[str, Any]] | None = None

        def get_batch_sampler(self, dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):  # type: ignore[no-untyped-def]
            if self.train_sampler is not None and dataset is self.train_dataset:
                cls, kwargs = self.train_sampler
                return cls(
                    dataset,
                    batch_size,
                    drop_last,
                    valid_label_columns=valid_label_columns,
                    generator=generator,
                    seed=self.args.seed,
                    **kwargs,
                )
            return super().get_batch_sampler(dataset, batch_size, drop_last, valid_label_columns, generator, seed)

        def _save(self, output_dir: str | None = None, state_dict=None) -> None:  # type: ignore[no-untyped-def]
            from arxiv_embeddings.backends.lora import complete_adapter_folder

            super()._save(output_dir, state_dict)
            complete_adapter_folder(self.model, str(output_dir if output_dir is not None else self.args.output_dir))

    return ArxivTrainer


def freeze_lower_layers(model: Any, n_layers: int) -> str:
    """Freeze the token embeddings and the lowest ``n_layers`` transformer layers (0 = train everything).

    On a CPU the backward pass dominates a training step; it stops at the lowest trainable layer, so freezing the
    lower half roughly halves it, and the optimizer no longer updates the 11.7M-parameter embedding matrix of
    MiniLM. The upper layers carry most of what subject fine-tuning changes. Returns a short description.
    """
    if n_layers <= 0:
        return "all layers trainable"
    backbone = getattr(model[0], "auto_model", None)
    embeddings = getattr(backbone, "embeddings", None)
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if embeddings is None or layers is None:
        logger.warning(
            f"train.freeze_layers={n_layers} ignored: {type(backbone).__name__} has no BERT-style "
            "embeddings/encoder.layer to freeze."
        )
        return "all layers trainable"
    if n_layers >= len(layers):
        raise ConfigError(
            f"train.freeze_layers={n_layers} would freeze all {len(layers)} layers; use at most {len(layers) - 1}."
        )
    for module in [embeddings, *layers[:n_layers]]:
        for param in module.parameters():
            param.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"embeddings + {n_layers}/{len(layers)} layers frozen ({trainable / 1e6:.1f}M of {total / 1e6:.1f}M parameters trained)"


def category_batches(cfg: DictConfig, train_file: Path, pair_type: str) -> dict[str, Any]:
    """Arguments of :class:`~arxiv_embeddings.samplers.CategoryBatchSampler` for the train pairs: the anchors'
    subjects, the conflict keys (the paper ids and the texts of every column, so no paper and no identical title or
    abstract twice in a batch), and for same-subject pairs (``anchor_positive``) the subject as a key too."""
    from arxiv_embeddings.samplers import conflict_keys

    meta = read_parquet(train_file.with_name("train_meta.parquet"))
    pairs = read_parquet(train_file)
    ids = [meta.column(c).to_numpy(zero_copy_only=False) for c in ("a_id", "b_id", "neg_id") if c in meta.column_names]
    text_columns = [c for c in pairs.column_names if c not in ("label", "score")]
    texts = [pairs.column(c).to_numpy(zero_copy_only=False) for c in text_columns]
    return {
        "subjects": meta.column("a_subject").to_numpy(zero_copy_only=False),
        "keys": conflict_keys(ids, texts),
        "hard_fraction": float(cfg.train.category_batches.hard_fraction),
        "distinct_subjects": pair_type == "anchor_positive",
    }


def train_sampler(cfg: DictConfig, train_file: Path, pair_type: str) -> tuple[type, dict[str, Any]] | None:
    """The training set's batch sampler for ``train.batch_sampler`` and its arguments, or None for the library's."""
    from arxiv_embeddings.samplers import CategoryBatchSampler, LabelGroupBatchSampler, SubjectBatchSampler

    if cfg.train.batch_sampler == "subject" and pair_type == "labelled":
        labels = read_parquet(train_file, columns=["label"]).column("label").to_numpy()
        return LabelGroupBatchSampler, {"labels": labels, "per_label": int(cfg.train.papers_per_subject)}
    if cfg.train.batch_sampler == "subject":
        meta = read_parquet(train_file.with_name("train_meta.parquet"), columns=["a_subject"])
        return SubjectBatchSampler, {"subjects": meta.column("a_subject").to_numpy(zero_copy_only=False)}
    if cfg.train.batch_sampler == "category":
        return CategoryBatchSampler, category_batches(cfg, train_file, pair_type)
    return None


def save_lora(model: Any, out: Path, cfg: DictConfig, base: str, train_ds: Any) -> dict[str, Any]:
    """The LoRA part of saving a trained model. With ``model.lora.merge``: save the adapter to ``out/adapter``, then
    merge the adapters into the backbone in place (the caller saves the merged model to ``final/``) and check that
    the merged model embeds a few training texts as the adapter model did. Returns what the summary records."""
    from arxiv_embeddings.backends.lora import merge_lora, save_adapter

    lora = cfg.model.lora
    merge = bool(lora.get("merge", True))
    info: dict[str, Any] = {
        "r": int(lora.r),
        "alpha": float(lora.alpha),
        "dropout": float(lora.get("dropout", 0.0)),
        "target_modules": to_plain(lora.target_modules),
        "merged": merge,
        "adapter": str(out / ("adapter" if merge else "final")),
    }
    if not merge:
        return info
    with atomic_dir(out / "adapter") as tmp:
        save_adapter(model, tmp, base)
        (tmp / "train_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    probe = [str(t) for t in train_ds[train_ds.column_names[0]][:16]]
    before = model.encode(probe, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    info["merged_layers"] = merge_lora(model)
    after = model.encode(probe, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    info["merge_max_abs_diff"] = float(np.abs(before - after).max())
    if info["merge_max_abs_diff"] > 1e-3:
        logger.warning(
            f"The merged model's embeddings differ from the adapter model's by up to {info['merge_max_abs_diff']:.2e}; "
            f"the adapter in {out / 'adapter'} is the reference."
        )
    return info


def _without_autocast(model: Any) -> Any:
    """``model`` with the mixed-precision (autocast) forward wrapper that accelerate adds during training removed."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model, keep_fp32_wrapper=False)


def check_label_batches(cfg: DictConfig) -> None:
    """Labelled rows batch by subject groups (train.batch_sampler=subject) or at random; the group size must fit."""
    if cfg.train.batch_sampler not in ("subject", "random"):
        raise ConfigError(
            f"train.batch_sampler={cfg.train.batch_sampler} does not apply to labelled rows (pairs=labelled); use "
            "subject (batches of train.papers_per_subject papers of each of several subjects) or random."
        )
    k, bs = cfg.train.get("papers_per_subject"), int(cfg.trainer.per_device_train_batch_size)
    require(
        isinstance(k, int) and not isinstance(k, bool) and k >= 2 and bs % k == 0,
        "train.papers_per_subject",
        f"got {k!r}; expected an integer >= 2 that divides trainer.per_device_train_batch_size={bs}.",
    )


def resolve_precision(cfg: DictConfig, device: str) -> str:
    from arxiv_embeddings.backends.loading import best_precision

    precision = str(cfg.train.precision)
    if precision == "auto":
        precision = best_precision(device)
    if precision == "fp16" and device == "cpu":
        raise ConfigError("train.precision=fp16 is for GPUs; on the CPU use bf16 (if it supports it) or fp32.")
    return precision


def _setup_wandb(cfg: DictConfig) -> list[str]:
    if cfg.logger.name != "wandb":
        return ["none"]
    os.environ.setdefault("WANDB_PROJECT", str(cfg.logger.project))
    if cfg.logger.get("entity"):
        os.environ.setdefault("WANDB_ENTITY", str(cfg.logger.entity))
    Path(cfg.logger.dir).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_DIR", str(cfg.logger.dir))
    if cfg.logger.get("tags"):
        os.environ.setdefault("WANDB_TAGS", ",".join(cfg.logger.tags))
    if not os.environ.get("WANDB_API_KEY") and os.environ.get("WANDB_MODE") != "online":
        os.environ["WANDB_MODE"] = "offline"
        logger.info(
            f"W&B: no WANDB_API_KEY in the environment, logging offline under {cfg.logger.dir}/wandb "
            "(upload later with 'wandb sync')."
        )
    return ["wandb"]


def _training_args(cfg: DictConfig, out_dir: Path, precision: str, device: str, has_eval: bool) -> Any:
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.training_args import BatchSamplers

    kwargs = to_plain(cfg.trainer)
    if not has_eval:
        kwargs["eval_strategy"] = "no"
    sampler = {
        "no_duplicates": BatchSamplers.NO_DUPLICATES,
        "random": BatchSamplers.BATCH_SAMPLER,
        "subject": BatchSamplers.NO_DUPLICATES,
        "category": BatchSamplers.NO_DUPLICATES,
    }[str(cfg.train.batch_sampler)]
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return SentenceTransformerTrainingArguments(
        output_dir=str(out_dir),
        run_name=str(cfg.run_name),
        seed=int(cfg.seed),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        batch_sampler=sampler,
        report_to=_setup_wandb(cfg),
        ddp_backend="gloo" if distributed and device == "cpu" else None,
        disable_tqdm=False,
        **kwargs,
    )


def _checkpoint_to_resume(cfg: DictConfig, ckpt_dir: Path, fp: str) -> str | None:
    """The checkpoint to resume from, per ``train.resume``; checkpoints of another config are set aside."""
    from transformers.trainer_utils import get_last_checkpoint

    mode = str(cfg.train.resume)
    if mode not in ("auto", "never"):
        if not Path(mode).is_dir():
            raise FileNotFoundError(
                f"train.resume={mode} is not a checkpoint folder; use auto, never or a checkpoint-N path."
            )
        return mode
    marker = ckpt_dir / "run.json"
    last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    if last is None:
        return None
    info = read_json(marker) if marker.exists() else {}
    if mode == "auto" and info.get("fingerprint") == fp and not info.get("completed"):
        logger.info(f"Resuming the interrupted run from {last}.")
        return last
    stale = ckpt_dir.with_name(f"{ckpt_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(ckpt_dir, stale)
    logger.info(
        f"Previous checkpoints ({'finished run' if info.get('completed') else 'another config'}) moved to {stale}."
    )
    return None


def model_dir(cfg: DictConfig) -> Path:
    return artifact_path(cfg.paths.models_dir) / str(cfg.run_name)


def checkpoint_dir(cfg: DictConfig) -> Path:
    """Where the trainer keeps its checkpoints: beside the model, or on local disk
    (``${paths.log_dir}/checkpoints/<run_name>``) when the models are in a bucket, since the trainer writes plain
    files. The final model is published to the bucket, and with ``train.checkpoint_sync`` each checkpoint is copied
    there too (:func:`remote_checkpoint_dir`), so a run resumes on another machine."""
    if is_remote(cfg.paths.models_dir):
        return Path(cfg.paths.log_dir) / "checkpoints" / str(cfg.run_name)
    return model_dir(cfg) / "checkpoints"


# ------------------------------------------------------------------------------- checkpoints in a bucket
def remote_checkpoint_dir(cfg: DictConfig) -> Path | None:
    """Where checkpoints are copied in the bucket, ``<models_dir>/<run_name>/checkpoints``; None when the models
    are on local disk (the checkpoints are there already) or ``train.checkpoint_sync`` is false."""
    if not is_remote(cfg.paths.models_dir) or not cfg.train.checkpoint_sync:
        return None
    return model_dir(cfg) / "checkpoints"


def _step(name: str) -> int:
    return int(name.rsplit("-", 1)[-1])


def upload_checkpoint(local: Path, remote_dir: Path, fp: str, keep: int | None) -> list[str]:
    """Publish the checkpoint folder ``local`` to ``remote_dir/<its name>``, record it in ``remote_dir/run.json``,
    then delete the remote checkpoints beyond the newest ``keep`` (the trainer's ``save_total_limit``; None = keep
    all). Returns the checkpoints kept. A checkpoint enters run.json only once its upload is complete, so a resume
    never picks a half-uploaded one."""
    started = time.perf_counter()
    publish_dir(local, remote_dir / local.name)
    marker = remote_dir / "run.json"
    info = read_json(marker) if exists(marker) else {}
    listed = info.get("checkpoints", []) if info.get("fingerprint") == fp else []
    names = sorted({*listed, local.name}, key=_step)
    kept = names[-keep:] if keep else names
    write_json(marker, {"fingerprint": fp, "completed": False, "checkpoints": kept})
    for name in names:
        if name not in kept:
            remove_tree(remote_dir / name)
    dropped = [n for n in names if n not in kept]
    logger.info(
        f"Checkpoint {local.name} copied to {remote_dir / local.name} in {time.perf_counter() - started:.1f}s"
        + (f"; removed {', '.join(dropped)} there (trainer.save_total_limit={keep})." if dropped else ".")
    )
    return kept


def download_checkpoint(cfg: DictConfig, ckpt_dir: Path, remote_dir: Path, fp: str) -> Path | None:
    """With ``train.resume=auto`` and no checkpoint in ``ckpt_dir`` (a new machine, e.g. after a preemption): the
    last checkpoint that an interrupted run of the same config copied to the bucket, downloaded into ``ckpt_dir``
    (with its run.json, so the usual resume picks it up). None when there is nothing to resume."""
    from transformers.trainer_utils import get_last_checkpoint

    if str(cfg.train.resume) != "auto" or (ckpt_dir.is_dir() and get_last_checkpoint(str(ckpt_dir)) is not None):
        return None
    marker = remote_dir / "run.json"
    info = read_json(marker) if exists(marker) else {}
    if info.get("fingerprint") != fp or info.get("completed") or not info.get("checkpoints"):
        return None
    name = info["checkpoints"][-1]
    target = ckpt_dir / name
    remove_tree(target)  # a partial folder of a crashed download (downloads are renamed into place, but be sure)
    started = time.perf_counter()
    download_dir(remote_dir / name, target)
    write_json(ckpt_dir / "run.json", {"fingerprint": fp, "completed": False})
    logger.info(f"Downloaded checkpoint {remote_dir / name} to {target} in {time.perf_counter() - started:.1f}s.")
    return target


def _set_aside_remote_checkpoints(remote_dir: Path) -> None:
    """Move the checkpoints of a finished run or of another config out of the way (server-side), as is done on
    local disk, so that they never mix with the new run's."""
    if not exists(remote_dir):
        return
    stale = remote_dir.with_name(f"{remote_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    fs, root, to = cast(Any, remote_dir).fs, cast(Any, remote_dir).path.rstrip("/"), cast(Any, stale).path
    # Server-side copies, then deletes (fs.mv first tries an API that not every store or emulator offers).
    names = sorted(fs.find(root))
    fs.copy(names, [f"{to}/{n[len(root) :].lstrip('/')}" for n in names])
    fs.rm(names)
    fs.invalidate_cache(root)
    logger.info(f"Previous checkpoints in the bucket moved to {stale}.")


class CheckpointUploader:
    """Copies checkpoints to the bucket in a background thread, so that training does not wait for the network.

    On each save the checkpoint folder is first hard-linked (instant, no copy) into ``<checkpoints>/.uploading/``:
    the trainer may delete its own folder (``save_total_limit``) while the upload still reads the links. Uploads
    run one at a time, oldest first; a checkpoint still waiting when a newer one is saved is dropped (a resume only
    wants the newest). :meth:`wait` blocks until the queue is empty; the train stage calls it when training ends,
    normally or by an exception, so the last checkpoint saved is in the bucket before the process exits. A failed
    upload is logged and training goes on (the checkpoint stays on local disk); :attr:`errors` lists them.
    """

    def __init__(self, local_dir: Path, remote_dir: Path, fp: str, keep: int | None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.local_dir, self.remote_dir, self.fp, self.keep = local_dir, remote_dir, fp, keep
        self.staging = local_dir / ".uploading"
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-upload")
        self._waiting: Any = None  # (future, staged folder) of the upload queued behind the running one
        self.uploaded: list[str] = []
        self.errors: list[str] = []

    def submit(self, checkpoint: Path) -> None:
        """Queue ``checkpoint`` (a folder the trainer just saved) for upload."""
        staged = self.staging / checkpoint.name
        shutil.rmtree(staged, ignore_errors=True)
        staged.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copytree(checkpoint, staged, copy_function=os.link)
        except OSError:  # a file system without hard links: a real copy, still local and quick next to an upload
            shutil.rmtree(staged, ignore_errors=True)
            shutil.copytree(checkpoint, staged)
        if self._waiting is not None:
            future, older = self._waiting
            if future.cancel():
                shutil.rmtree(older, ignore_errors=True)
                logger.info(f"Checkpoint {older.name} not uploaded: {checkpoint.name} replaces it in the queue.")
        self._waiting = (self._pool.submit(self._upload, staged), staged)

    def _upload(self, staged: Path) -> None:
        try:
            upload_checkpoint(staged, self.remote_dir, self.fp, self.keep)
            self.uploaded.append(staged.name)
        except Exception as err:  # logged; training goes on with the checkpoint on local disk
            self.errors.append(f"{staged.name}: {type(err).__name__}: {err}")
            logger.error(f"Upload of checkpoint {staged.name} to {self.remote_dir} failed ({err}); it stays local.")
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def wait(self) -> None:
        """Block until every queued upload has finished (uploaded or failed)."""
        if self._waiting is not None:
            logger.info("Waiting for the checkpoint upload to the bucket to finish ...")
        self._pool.shutdown(wait=True)
        self._waiting = None
        shutil.rmtree(self.staging, ignore_errors=True)


def _checkpoint_sync_callback(uploader: CheckpointUploader) -> Any:
    from transformers import TrainerCallback

    class CheckpointSync(TrainerCallback):  # type: ignore[misc]
        """Queues each checkpoint the trainer saves for upload to the bucket (on the main process only)."""

        def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if state.is_world_process_zero:
                uploader.submit(uploader.local_dir / f"checkpoint-{state.global_step}")
            return control

    return CheckpointSync()


def validate(cfg: DictConfig) -> None:
    check_missing(cfg)
    require_in("train.precision", cfg.train.precision, PRECISIONS)
    require(
        isinstance(cfg.train.get("checkpoint_sync"), bool),
        "train.checkpoint_sync",
        f"got {cfg.train.get('checkpoint_sync')!r}; expected true or false.",
    )
    require_in("train.batch_sampler", cfg.train.batch_sampler, BATCH_SAMPLERS)
    require_in("train.pairs_from", cfg.train.get("pairs_from", "pairs"), tuple(PAIR_SOURCES))
    require_in("logger.name", cfg.logger.name, ("none", "wandb"))
    loss_spec(cfg.loss)
    if cfg.loss.name == "MatryoshkaLoss" and not cfg.loss.get("dims"):
        raise ConfigError("loss.dims: MatryoshkaLoss needs a list of dimensions, e.g. loss.dims=[384,256,128,64].")
    validate_model(cfg)
    if head_enabled(cfg):
        from arxiv_embeddings.head import validate_head

        validate_head(cfg.train.head)
        if cfg.model.get("lora"):
            raise ConfigError(
                "train.head.enabled=true with model.lora: the subject head is fit over full models only; set "
                "train.head.enabled=false, or train without model.lora."
            )


def head_enabled(cfg: DictConfig) -> bool:
    """True when ``train.head`` asks for a subject head after training."""
    head = cfg.train.get("head")
    return bool(head is not None and head.get("enabled"))


def validate_model(cfg: DictConfig) -> None:
    """The backbone options: ``model.pooling``, ``model.lora`` and the category batches."""
    from arxiv_embeddings.backends.loading import POOLING
    from arxiv_embeddings.backends.lora import validate_lora

    require_in("model.pooling", cfg.model.get("pooling", "mean"), POOLING)
    validate_lora(cfg.model.get("lora"))
    if cfg.train.batch_sampler == "category":
        hard = cfg.train.get("category_batches", {}).get("hard_fraction")
        require(
            isinstance(hard, (int, float)) and not isinstance(hard, bool) and 0 <= hard <= 1,
            "train.category_batches.hard_fraction",
            f"got {hard!r}; the share of a batch from one archive, in [0, 1].",
        )


def run(cfg: DictConfig, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train; returns the final model's path, the train metrics and the eval/test retrieval metrics."""
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerModelCardData

    from arxiv_embeddings.backends.loading import default_device, load_model
    from arxiv_embeddings.layout import pairs_path
    from arxiv_embeddings.pairing import MANIFEST as PAIRS_MANIFEST

    validate(cfg)
    started = time.perf_counter()
    train_file = pairs_path(cfg, "train")
    pairs_manifest = read_json(train_file.parent / PAIRS_MANIFEST)
    pair_type, text = pairs_manifest["type"], pairs_manifest["config"]["text"]
    check_loss_matches_pairs(cfg.loss, pair_type)
    if pair_type == "labelled":
        check_label_batches(cfg)
    device = default_device() if cfg.train.device == "auto" else str(cfg.train.device)
    precision = resolve_precision(cfg, device)
    rank0 = int(os.environ.get("RANK", "0")) == 0

    # 1. model
    base = str(cfg.model.name)
    model = load_model(
        base,
        device=device,
        max_seq_length=cfg.train.max_seq_length or cfg.model.max_seq_length,
        model_card_data=SentenceTransformerModelCardData(
            language="en",
            license="apache-2.0",
            model_name=f"{Path(base).name} fine-tuned on arXiv ({cfg.run_name})",
        ),
        pooling=str(cfg.model.get("pooling", "mean")),
    )
    lora = cfg.model.get("lora")
    if lora:
        from arxiv_embeddings.backends.lora import add_lora

        if int(cfg.train.freeze_layers):
            logger.info(
                f"train.freeze_layers={cfg.train.freeze_layers} not applied: with model.lora only the adapters train."
            )
        frozen = add_lora(model, lora)
    else:
        frozen = freeze_lower_layers(model, int(cfg.train.freeze_layers))
    logger.info(
        f"Model {base} on {device}, {precision}, max_seq_length {model.max_seq_length}, {frozen}; pairs: {pair_type}."
    )

    # 2. data
    train_ds = Dataset(read_parquet(train_file))
    eval_file = train_file.with_name("eval.parquet")
    eval_ds = Dataset(read_parquet(eval_file)) if eval_file.exists() else None

    # 3. loss
    loss = build_loss(model, cfg.loss)

    # 4. evaluator (eval split only)
    evaluator = task_evaluator(cfg, pair_type, "eval", int(cfg.train.eval_papers), text, "eval")

    # 5. arguments, with resume from an interrupted run of the same config
    out = model_dir(cfg)
    ckpt_dir = checkpoint_dir(cfg)
    fp = fingerprint(cfg, [train_file], SPEC.config_keys)
    remote_ckpts = remote_checkpoint_dir(cfg)
    uploader: CheckpointUploader | None = None
    if rank0 and remote_ckpts is not None:
        download_checkpoint(cfg, ckpt_dir, remote_ckpts, fp)
    resume_from = _checkpoint_to_resume(cfg, ckpt_dir, fp) if rank0 else None
    if rank0:
        write_json(ckpt_dir / "run.json", {"fingerprint": fp, "completed": False})
    if rank0 and remote_ckpts is not None:
        info = read_json(remote_ckpts / "run.json") if exists(remote_ckpts / "run.json") else {}
        continuing = resume_from is not None and info.get("fingerprint") == fp and not info.get("completed")
        if not continuing:
            _set_aside_remote_checkpoints(remote_ckpts)
        write_json(
            remote_ckpts / "run.json",
            {"fingerprint": fp, "completed": False, "checkpoints": info.get("checkpoints", []) if continuing else []},
        )
        limit = cfg.trainer.get("save_total_limit")
        uploader = CheckpointUploader(ckpt_dir, remote_ckpts, fp, int(limit) if limit else None)
        callbacks = [*callbacks, _checkpoint_sync_callback(uploader)]
    args = _training_args(cfg, ckpt_dir, precision, device, has_eval=eval_ds is not None or evaluator is not None)

    # 6. trainer
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        loss=loss,
        evaluator=evaluator,
        callbacks=list(callbacks) or None,
    )
    trainer.train_sampler = train_sampler(cfg, train_file, pair_type)
    try:
        output = trainer.train(resume_from_checkpoint=resume_from)
    except torch.cuda.OutOfMemoryError as err:  # pragma: no cover - needs a GPU
        raise RuntimeError(
            f"Out of GPU memory at batch size {cfg.trainer.per_device_train_batch_size}. Use loss=cached_mnrl "
            "(large batches at constant memory), a smaller trainer.per_device_train_batch_size, or a shorter "
            "train.max_seq_length."
        ) from err
    finally:  # however training ended, the last checkpoint saved reaches the bucket before anything else
        if uploader is not None:
            uploader.wait()
    train_metrics = dict(output.metrics)
    # With bf16/fp16 training, accelerate wraps the model's forward in autocast (on a CPU with AMX, bf16 is chosen
    # automatically). The saved model has no such wrapper, so drop it: the test evaluation and the LoRA merge check
    # below then see the model as `inv evaluate` and the API run it (fp32), whatever precision trained it.
    model = _without_autocast(model)
    # Trained at train.max_seq_length tokens (fast on a CPU), saved, tested and so served at the base model's own
    # length (model.max_seq_length), like the zero-shot model it is compared with.
    trained_length = model.max_seq_length
    model.max_seq_length = int(cfg.model.max_seq_length or trained_length)
    if not rank0:
        return {"rank": int(os.environ.get("RANK", "0")), "train": train_metrics}

    # 7. the subject head over the trained encoder (train.head), part of the model from here on
    head_info = None
    if head_enabled(cfg):
        from arxiv_embeddings.head import train_head

        head_info = train_head(cfg, model, text, precision)

    # 8. test evaluation (once, after training)
    test_evaluator = task_evaluator(cfg, pair_type, "test", int(cfg.train.test_papers), text, "test")
    test_metrics = test_evaluator(model) if test_evaluator is not None else {}
    eval_metrics = evaluator(model) if evaluator is not None else {}

    # 9. save the final model with its card and config, atomically; with LoRA the adapter (in adapter/), and the
    #    merged model in final/ (model.lora.merge, the default) or the adapter itself there
    final = out / "final"
    lora_info: dict[str, Any] | None = None
    if lora:
        lora_info = save_lora(model, out, cfg, base, train_ds)
    with atomic_dir(final) as tmp:
        if lora_info is None or lora_info["merged"]:
            model.save(str(tmp))
        else:
            from arxiv_embeddings.backends.lora import save_adapter

            save_adapter(model, tmp, base)
        (tmp / "train_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        summary = {
            "run_name": cfg.run_name,
            "base_model": base,
            "pair_type": pair_type,
            "text": text,
            "loss": to_plain(cfg.loss),
            "device": device,
            "precision": precision,
            "max_seq_length": model.max_seq_length,
            "train_max_seq_length": trained_length,
            "frozen": frozen,
            "lora": lora_info,
            "head": head_info,
            "pairs_per_second": round(train_metrics.get("train_samples_per_second", 0.0), 2),
            "train": train_metrics,
            "eval": eval_metrics,
            "test": test_metrics,
            "global_step": trainer.state.global_step,
            "world_size": int(os.environ.get("WORLD_SIZE", "1")),
            "batch_sampler": cfg.train.batch_sampler,
            "seconds": round(time.perf_counter() - started, 1),
        }
        write_json(tmp / "train_summary.json", summary)
    write_json(ckpt_dir / "run.json", {"fingerprint": fp, "completed": True})
    if remote_ckpts is not None:
        info = read_json(remote_ckpts / "run.json") if exists(remote_ckpts / "run.json") else {}
        write_json(remote_ckpts / "run.json", {**info, "fingerprint": fp, "completed": True})
    p10 = test_metrics.get("test_cosine_precision@10")
    logger.success(
        f"train: {trainer.state.global_step} steps, {summary['pairs_per_second']} pairs/s ({precision} on {device}); "
        + (f"test P@10 {p10:.4f}; " if p10 is not None else "")
        + f"model saved to {final}."
    )
    return {"model": final, "train": train_metrics, "eval": eval_metrics, "test": test_metrics, "summary": summary}


def _inputs(cfg: DictConfig) -> list[Path]:
    from arxiv_embeddings.layout import training_pairs_dir

    d = training_pairs_dir(cfg)
    files = [d / "train.parquet", d / "eval.parquet", d / "train_meta.parquet", d / "manifest.json"]
    model_path = Path(str(cfg.model.name))
    if head_enabled(cfg):  # the head is fit on papers of the processed train split
        files.append(artifact_path(cfg.paths.processed_dir) / "train.parquet")
    return files + (model_files(model_path) if model_path.is_dir() else [])


SPEC = StageSpec(
    name="train",
    run=run,
    inputs=_inputs,
    # The model's own files: an export beside them (onnx/, export_report.json) does not make the run look stale.
    # With a merged LoRA model, its adapter (adapter/) too.
    outputs=lambda cfg: (
        model_files(model_dir(cfg) / "final")
        + (model_files(model_dir(cfg) / "adapter") if cfg.model.get("lora") else [])
    ),
    stamp_dir=model_dir,
    validate=validate,
    config_keys=("model", "loss", "trainer", "train", "logger", "seed", "run_name"),
)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    from arxiv_embeddings.stage import cli_main

    cli_main(SPEC, cfg)


if __name__ == "__main__":
    main()

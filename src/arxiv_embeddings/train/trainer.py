"""Setting up the trainer: precision (bf16 where the CPU or GPU has it), frozen lower layers, the batch sampler
(subject-balanced, category, label groups), LoRA saving, W&B, and the training arguments."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger
from omegaconf import DictConfig, OmegaConf

from arxiv_embeddings.config import ConfigError, require, to_plain
from arxiv_embeddings.io import (
    atomic_dir,
    read_parquet,
)
from arxiv_embeddings.layout import ADAPTER_DIR, FINAL_DIR, pair_meta_file

#: A training set's batch sampler: a batch sampler class (or a function that builds one) and its keyword arguments
#: beyond the library's.
SamplerSpec = tuple[Callable[..., Any], dict[str, Any]]

BATCH_SAMPLERS = ("subject", "category", "subject_groups", "no_duplicates", "random")
#: Pair types each batch sampler suits, where it does not suit them all. subject_groups puts several papers of one
#: subject in a batch: hard in-batch negatives for title -> abstract pairs, false negatives for same-subject pairs.
SAMPLER_PAIRS = {"subject_groups": ("title_abstract",)}


def trainer_class() -> type:
    """The trainer class (``SentenceTransformerTrainer`` with per-set batch samplers and LoRA checkpoints), defined
    on first use so that importing this module does not import sentence-transformers."""
    from sentence_transformers import SentenceTransformerTrainer

    class ArxivTrainer(SentenceTransformerTrainer):  # type: ignore[misc]
        """The library's trainer, with the subject-aware or category-aware batch sampler for the training set, and
        LoRA checkpoints that load as sentence-transformers (for resuming)."""

        # The batch sampler of each training set, in the order of the training sets (one, or one per task of a
        # mix): a class of arxiv_embeddings.samplers and its keyword arguments beyond the library's
        # (SubjectBatchSampler: subjects; CategoryBatchSampler: subjects, keys, hard_fraction, distinct_subjects;
        # LabelGroupBatchSampler: labels, per_label), or None for the library's own.
        train_samplers: tuple[SamplerSpec | None, ...] = ()
        _pending: list[SamplerSpec | None] | None = None

        def get_train_dataloader(self):  # type: ignore[no-untyped-def]
            # The library asks for one batch sampler per training set, in their order (DatasetDict order for a mix);
            # each call below takes the next one. Eval and test dataloaders never see these.
            self._pending = list(self.train_samplers)
            try:
                return super().get_train_dataloader()
            finally:
                self._pending = None

        def get_batch_sampler(self, dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):  # type: ignore[no-untyped-def]
            chosen = self._pending.pop(0) if self._pending else None
            if chosen is not None:
                cls, kwargs = chosen
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

    meta = read_parquet(train_file.with_name(pair_meta_file("train")))
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


def train_sampler(
    cfg: DictConfig, train_file: Path, pair_type: str, batch_sampler: str | None = None
) -> SamplerSpec | None:
    """A training set's batch sampler and its arguments, or None for the library's: ``batch_sampler`` (a mix task's
    own) or ``train.batch_sampler``."""
    from arxiv_embeddings.samplers import CategoryBatchSampler, LabelGroupBatchSampler, SubjectBatchSampler

    batch_sampler = str(batch_sampler or cfg.train.batch_sampler)
    if batch_sampler == "subject" and pair_type == "labelled":
        labels = read_parquet(train_file, columns=["label"]).column("label").to_numpy()
        return LabelGroupBatchSampler, {"labels": labels, "per_label": int(cfg.train.papers_per_subject)}
    if batch_sampler == "subject":
        meta = read_parquet(train_file.with_name(pair_meta_file("train")), columns=["a_subject"])
        return SubjectBatchSampler, {"subjects": meta.column("a_subject").to_numpy(zero_copy_only=False)}
    if batch_sampler == "category":
        return CategoryBatchSampler, category_batches(cfg, train_file, pair_type)
    if batch_sampler == "subject_groups":  # train.papers_per_subject papers of each of several subjects a batch
        check_label_batches(cfg, "subject_groups")
        meta = read_parquet(train_file.with_name(pair_meta_file("train")), columns=["a_subject"])
        labels = meta.column("a_subject").to_numpy(zero_copy_only=False)
        return LabelGroupBatchSampler, {"labels": labels, "per_label": int(cfg.train.papers_per_subject)}
    if batch_sampler == str(cfg.train.batch_sampler):
        return None  # the library's sampler that the training arguments name
    # A mix task's own choice, unlike the arguments' (train.batch_sampler): the library's sampler of that name.
    return (_no_duplicates if batch_sampler == "no_duplicates" else _random_batches), {}


def _no_duplicates(dataset: Any, batch_size: int, drop_last: bool, **kwargs: Any) -> Any:
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

    return NoDuplicatesBatchSampler(dataset, batch_size=batch_size, drop_last=drop_last, **kwargs)


def _random_batches(dataset: Any, batch_size: int, drop_last: bool, generator: Any = None, **kwargs: Any) -> Any:
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from torch.utils.data import RandomSampler

    return DefaultBatchSampler(
        RandomSampler(dataset, generator=generator),
        batch_size=batch_size,
        drop_last=drop_last,
        generator=generator,
        **kwargs,
    )


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
        "adapter": str(out / (ADAPTER_DIR if merge else FINAL_DIR)),
    }
    if not merge:
        return info
    with atomic_dir(out / ADAPTER_DIR) as tmp:
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
            f"the adapter in {out / ADAPTER_DIR} is the reference."
        )
    return info


def without_autocast(model: Any) -> Any:
    """``model`` with the mixed-precision (autocast) forward wrapper that accelerate adds during training removed."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model, keep_fp32_wrapper=False)


def check_label_batches(cfg: DictConfig, batch_sampler: str | None = None) -> None:
    """Labelled rows batch by subject groups (train.batch_sampler=subject) or at random, title -> abstract pairs by
    subject groups with ``batch_sampler=subject_groups``; the group size must fit the batch."""
    if batch_sampler is None and cfg.train.batch_sampler not in ("subject", "random"):
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


def training_args(cfg: DictConfig, out_dir: Path, precision: str, device: str, has_eval: bool) -> Any:
    """``SentenceTransformerTrainingArguments`` from the ``trainer:`` section, the batch samplers, precision, device
    and W&B; no evaluation strategy without an eval set (``has_eval``)."""
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.base.training_args import BatchSamplers, MultiDatasetBatchSamplers

    kwargs = to_plain(cfg.trainer)
    if not has_eval:
        kwargs["eval_strategy"] = "no"
    sampler = {
        "no_duplicates": BatchSamplers.NO_DUPLICATES,
        "random": BatchSamplers.BATCH_SAMPLER,
        "subject": BatchSamplers.NO_DUPLICATES,
        "category": BatchSamplers.NO_DUPLICATES,
        "subject_groups": BatchSamplers.NO_DUPLICATES,
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
        multi_dataset_batch_sampler={
            "proportional": MultiDatasetBatchSamplers.PROPORTIONAL,
            "round_robin": MultiDatasetBatchSamplers.ROUND_ROBIN,
        }[str(cfg.get("mix", {}).get("sampler", "proportional"))],
        report_to=_setup_wandb(cfg),
        ddp_backend="gloo" if distributed and device == "cpu" else None,
        disable_tqdm=False,
        **kwargs,
    )

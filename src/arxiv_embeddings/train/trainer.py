"""The trainer and its arguments: ``SentenceTransformerTrainer`` with a batch sampler per training set and LoRA
checkpoints that resume, the training precision (bf16 where the CPU or GPU has it), W&B, and the training
arguments from the ``trainer:`` section."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger
from omegaconf import DictConfig

from arxiv_embeddings.config import ConfigError, to_plain

if TYPE_CHECKING:
    from arxiv_embeddings.train.sets import SamplerSpec


def trainer_class() -> type:
    """The trainer class (``SentenceTransformerTrainer`` with per-set batch samplers and LoRA checkpoints), defined
    on first use so that importing this module does not import sentence-transformers."""
    from sentence_transformers import SentenceTransformerTrainer

    class ArxivTrainer(SentenceTransformerTrainer):  # type: ignore[misc]
        """The library's trainer, with the subject-aware or category-aware batch sampler for the training set, and
        LoRA checkpoints that load as sentence-transformers (for resuming)."""

        # The batch sampler of each training set, in the order of the training sets (one, or one per task of a
        # mix): a class of arxiv_embeddings.train.samplers and its keyword arguments beyond the library's
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

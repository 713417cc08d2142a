"""The train stage: ``validate(cfg)``, ``run(cfg)`` (model -> data -> loss -> evaluator -> args -> trainer ->
train -> head -> test evaluation -> save; with ``train.fine_tune=false`` model -> head -> test evaluation -> save),
its :class:`~arxiv_embeddings.runner.StageSpec` and the ``@hydra.main`` entry point of
``python -m arxiv_embeddings.train``."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from loguru import logger
from omegaconf import DictConfig, OmegaConf

from arxiv_embeddings.backends.loading import PRECISIONS, model_files
from arxiv_embeddings.config import CONFIG_DIR, ConfigError, check_missing, require, require_in, to_plain
from arxiv_embeddings.io import artifact_path, read_parquet
from arxiv_embeddings.layout import (
    ADAPTER_DIR,
    BASE_DIR,
    FINAL_DIR,
    MANIFEST_FILE,
    PAIR_SOURCES,
    checkpoint_dir,
    pair_meta_file,
    processed_split,
    remote_checkpoint_dir,
    split_file,
    split_path,
    this_run_dir,
    training_pairs_dir,
)
from arxiv_embeddings.pair_format import mix_tasks
from arxiv_embeddings.runner import StageSpec, fingerprint
from arxiv_embeddings.train.checkpoints import CheckpointRun
from arxiv_embeddings.train.model import freeze_lower_layers, without_autocast
from arxiv_embeddings.train.objectives import BATCH_SAMPLERS, check_loss_matches_pairs, check_sampler_suits, loss_spec
from arxiv_embeddings.train.saving import save_final, save_lora, served_tasks
from arxiv_embeddings.train.sets import split_evaluator, training_sets
from arxiv_embeddings.train.trainer import resolve_precision, trainer_class, training_args

#: ``train.search_model``: the trained model's own encoder serves search, or the untouched base model kept beside it
#: (or, any other value, the sentence-transformers folder of a model trained for search, kept beside it instead).
SEARCH_MODELS = ("trained", "base")


def search_folder(cfg: DictConfig) -> Path | None:
    """The model folder ``train.search_model`` names (a value other than ``trained`` and ``base``), else None."""
    value = str(cfg.train.get("search_model", "trained"))
    return None if value in SEARCH_MODELS else Path(value)


def check_search_folder(folder: Path) -> None:
    """A folder given as ``train.search_model``: a sentence-transformers model whose every module serves search (no
    head of its own, no search model of its own), so that it can be kept as the ``base`` output."""
    from arxiv_embeddings.backends.tasks import MODEL, TasksFileError, read_tasks

    fix = (
        "choose trained, base, or the final/ folder of a run trained for search (e.g. pairs=title_abstract "
        "train.head.enabled=false train.search_model=trained; docs/training.md#a-search-encoder)."
    )
    require(
        (folder / "modules.json").is_file(),
        f"train.search_model={folder}",
        f"not a sentence-transformers model folder (no modules.json there); {fix}",
    )
    try:
        output = read_tasks(folder).output_of("search")
    except TasksFileError as err:
        raise ConfigError(f"train.search_model={folder}: {err}") from err
    require(
        output == MODEL,
        f"train.search_model={folder}",
        f"that folder serves search with its {output!r} output, not with the whole model, so it cannot be kept as "
        f"this model's search output; {fix}",
    )


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
    require(
        isinstance(cfg.train.get("fine_tune", True), bool),
        "train.fine_tune",
        f"got {cfg.train.get('fine_tune')!r}; expected true or false.",
    )
    folder = search_folder(cfg)
    if folder is not None:
        check_search_folder(folder)
    if not fine_tunes(cfg):
        require(
            not cfg.model.get("lora"),
            "train.fine_tune=false",
            "trains no weights of the model, so model.lora would adapt nothing; drop model.lora or set "
            "train.fine_tune=true.",
        )
        require(
            head_enabled(cfg),
            "train.fine_tune=false",
            "keeps the base model as it is and fits only the subject head over it; set train.head.enabled=true "
            "(or train.fine_tune=true).",
        )
    tasks = mix_tasks(cfg)
    for task in tasks:  # each task's loss against the pairs it names, before any work
        sampler = str(task.batch_sampler or cfg.train.batch_sampler)
        require_in(f"mix.tasks.{task.name}.batch_sampler", sampler, BATCH_SAMPLERS)
        check_sampler_suits(sampler, task.pair_type, f"mix.tasks.{task.name}.batch_sampler")
        _check_loss(task.loss, f"mix.tasks.{task.name}.loss")
        check_loss_matches_pairs(task.loss, task.pair_type, f"mix.tasks.{task.name}")
    _check_loss(cfg.loss, "loss")  # the main task's
    validate_model(cfg)
    if head_enabled(cfg):
        from arxiv_embeddings.train.head import validate_head

        validate_head(cfg.train.head)
    elif cfg.train.get("head") is not None and cfg.train.head.get("enabled"):
        logger.warning(
            "train.head.enabled=true with model.lora: the subject head is fit over full models only, so this run "
            "trains without it (every task served by the model itself). Set train.head.enabled=false to say so."
        )


def _check_loss(loss_cfg: DictConfig, key: str) -> None:
    loss_spec(loss_cfg)
    if loss_cfg.name == "MatryoshkaLoss" and not loss_cfg.get("dims"):
        raise ConfigError(f"{key}.dims: MatryoshkaLoss needs a list of dimensions, e.g. {key}.dims=[384,256,128,64].")


def fine_tunes(cfg: DictConfig) -> bool:
    """False for ``train.fine_tune=false``: no training steps, the base model kept as it is (it serves search) with
    the subject head fit over it; no pairs are read."""
    return bool(cfg.train.get("fine_tune", True))


def head_enabled(cfg: DictConfig) -> bool:
    """True when ``train.head`` asks for a subject head after training and the model is a full one (a LoRA run,
    ``model.lora``, trains without the head)."""
    head = cfg.train.get("head")
    return bool(head is not None and head.get("enabled") and not cfg.model.get("lora"))


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
    from sentence_transformers import SentenceTransformerModelCardData

    from arxiv_embeddings.backends.loading import default_device, load_model

    validate(cfg)
    started = time.perf_counter()
    # 0. inputs, read once here: the pairs of every task, and the papers the evaluators score and the head is fit on
    sets = training_sets(cfg) if fine_tunes(cfg) else None
    text = sets.text if sets is not None else str(cfg.pairs.text)
    n_eval, n_test = int(cfg.train.eval_papers), int(cfg.train.test_papers)
    eval_papers = read_parquet(split_path(cfg, "eval")) if n_eval > 0 else None
    test_papers = read_parquet(split_path(cfg, "test")) if n_test > 0 else None
    head_papers = None
    if head_enabled(cfg):
        from arxiv_embeddings.train.head import sample_papers

        columns = ["title", "abstract", "primary_subject"]
        head_papers = sample_papers(
            read_parquet(split_path(cfg, "train"), columns=columns), int(cfg.train.head.papers), int(cfg.seed)
        )
    seed, eval_batch = int(cfg.seed), int(cfg.trainer.per_device_eval_batch_size)
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
    if sets is None:
        frozen = "no fine-tuning (train.fine_tune=false): the base model's weights kept as they are"
    elif lora:
        from arxiv_embeddings.backends.lora import add_lora

        if int(cfg.train.freeze_layers):
            logger.info(
                f"train.freeze_layers={cfg.train.freeze_layers} not applied: with model.lora only the adapters train."
            )
        frozen = add_lora(model, lora)
    else:
        frozen = freeze_lower_layers(model, int(cfg.train.freeze_layers))
    described = sets.describe() if sets is not None else "none"
    logger.info(
        f"Model {base} on {device}, {precision}, max_seq_length {model.max_seq_length}, {frozen}; pairs: {described}."
    )

    # 2-6. evaluator (eval split only): what the pairs teach (subject retrieval, title -> abstract retrieval, or
    #      both), then training; without fine-tuning the model is scored on both tasks and nothing trains
    teaches: tuple[str, ...] = ("subject", "search")
    if sets is not None:
        evaluator = sets.evaluator(eval_papers, "eval", n_eval, seed=seed, batch_size=eval_batch)
        teaches = sets.teaches
        model, train_metrics, steps, checkpoints = _fine_tune(cfg, model, sets, evaluator, callbacks, precision, device)
    else:
        evaluator = split_evaluator(eval_papers, "eval", n_eval, text, teaches, seed=seed, batch_size=eval_batch)
        train_metrics, steps, checkpoints = {}, 0, None
    # Trained at train.max_seq_length tokens (fast on a CPU), saved, tested and so served at the base model's own
    # length (model.max_seq_length), like the zero-shot model it is compared with.
    trained_length = model.max_seq_length
    served_length = cfg.model.max_seq_length or trained_length
    if served_length:
        model.max_seq_length = int(served_length)
    if not rank0:
        return {"rank": int(os.environ.get("RANK", "0")), "train": train_metrics}

    # 7. the subject head over the trained encoder (train.head), part of the model from here on
    head_info = None
    if head_papers is not None:
        from arxiv_embeddings.train.head import train_head

        head = to_plain(cfg.train.head)
        head_info = train_head(
            model,
            head_papers,
            text,
            precision,
            kind=str(head.get("kind", "supcon")),
            options=head,
            seed=seed,
            encode_batch_size=eval_batch,
        )

    # 8. test evaluation (once, after training)
    test_evaluator = split_evaluator(test_papers, "test", n_test, text, teaches, seed=seed, batch_size=eval_batch)
    test_metrics = test_evaluator(model) if test_evaluator is not None else {}
    eval_metrics = evaluator(model) if evaluator is not None else {}

    # 9. save the final model with its card and config, atomically; with LoRA the adapter (in adapter/), and the
    #    merged model in final/ (model.lora.merge, the default) or the adapter itself there
    final = this_run_dir(cfg) / FINAL_DIR
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    lora_info: dict[str, Any] | None = None
    if lora and sets is not None:
        lora_info = save_lora(model, this_run_dir(cfg), to_plain(lora), base, sets.probe_texts(), config_yaml)
    summary = {
        "run_name": cfg.run_name,
        "base_model": base,
        "fine_tune": sets is not None,
        "pair_type": sets.pair_type if sets is not None else None,
        "tasks": sets.summary() if sets is not None else None,
        "text": text,
        "loss": to_plain(cfg.loss) if sets is not None and not sets.tasks else None,
        "device": device,
        "precision": precision,
        "max_seq_length": model.max_seq_length,
        "train_max_seq_length": trained_length if sets is not None else None,
        "frozen": frozen,
        "lora": lora_info,
        "head": head_info,
        "pairs_per_second": round(train_metrics.get("train_samples_per_second", 0.0), 2),
        "train": train_metrics,
        "eval": eval_metrics,
        "test": test_metrics,
        "global_step": steps,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "batch_sampler": cfg.train.batch_sampler if sets is not None else None,
        "seconds": round(time.perf_counter() - started, 1),
    }
    # 10. with train.search_model=base, the untouched base model beside it (at the served length) serves search
    # (without fine-tuning the encoder is the base already: it serves search itself, and no copy is kept); with a
    # model folder, that model (trained for search) is kept there instead
    folder = search_folder(cfg)
    search_model, summary["search_model"] = None, "trained"
    if folder is not None:
        search_model = load_model(str(folder), device="cpu", max_seq_length=model.max_seq_length)
        summary["search_model"] = f"{folder} (trained for search, in {BASE_DIR}/)"
    elif cfg.train.get("search_model", "trained") == "base" and fine_tunes(cfg):
        pooling = str(cfg.model.get("pooling", "mean"))
        search_model = load_model(base, device="cpu", max_seq_length=model.max_seq_length, pooling=pooling)
        summary["search_model"] = f"{base} (untouched, in {BASE_DIR}/)"
    save_final(
        model,
        final,
        config_yaml=config_yaml,
        summary=summary,
        tasks=served_tasks(head_info is not None, base=search_model is not None),
        adapter_base=base if lora_info is not None and not lora_info["merged"] else None,
        search_model=search_model,
    )
    if checkpoints is not None:
        checkpoints.finish()
    p10 = test_metrics.get("test_cosine_precision@10")
    logger.success(
        f"train: {steps} steps, {summary['pairs_per_second']} pairs/s ({precision} on {device}); "
        + (f"test P@10 {p10:.4f}; " if p10 is not None else "")
        + f"model saved to {final}."
    )
    return {"model": final, "train": train_metrics, "eval": eval_metrics, "test": test_metrics, "summary": summary}


def _fine_tune(
    cfg: DictConfig,
    model: Any,
    sets: Any,
    evaluator: Any,
    callbacks: Sequence[Any],
    precision: str,
    device: str,
) -> tuple[Any, dict[str, Any], int, CheckpointRun]:
    """Steps 2-6 of :func:`run`: datasets, losses, arguments (with resume from an interrupted run of the same
    config), trainer, training. Returns the trained model (without its autocast wrapper), the train metrics, the steps
    taken and the run's checkpoints (finished once the model is saved)."""
    import torch

    rank0 = int(os.environ.get("RANK", "0")) == 0
    # 2. data: one training set, or one per task of a mix (sentence-transformers' multi-dataset training)
    train_ds, eval_ds = sets.datasets()
    # 3. loss: one, or one per task
    loss = sets.losses(model)
    # 5. arguments, with resume from an interrupted run of the same config
    ckpt_dir = checkpoint_dir(cfg)
    fp = fingerprint(cfg, sets.train_files, SPEC.config_keys)
    limit = cfg.trainer.get("save_total_limit")
    checkpoints = CheckpointRun(
        ckpt_dir, remote_checkpoint_dir(cfg), fp, str(cfg.train.resume), int(limit) if limit else None, rank0
    )
    resume_from, sync = checkpoints.open()
    args = training_args(cfg, ckpt_dir, precision, device, has_eval=eval_ds is not None or evaluator is not None)
    # 6. trainer
    trainer = trainer_class()(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        loss=loss,
        evaluator=evaluator,
        callbacks=[*callbacks, *sync] or None,
    )
    trainer.train_samplers = tuple(sets.samplers())
    try:
        output = trainer.train(resume_from_checkpoint=resume_from)
    except torch.cuda.OutOfMemoryError as err:  # pragma: no cover - needs a GPU
        raise RuntimeError(
            f"Out of GPU memory at batch size {cfg.trainer.per_device_train_batch_size}. Use loss=cached_mnrl "
            "(large batches at constant memory), a smaller trainer.per_device_train_batch_size, or a shorter "
            "train.max_seq_length."
        ) from err
    finally:  # however training ended, the last checkpoint saved reaches the bucket before anything else
        checkpoints.wait()
    # With bf16/fp16 training, accelerate wraps the model's forward in autocast (on a CPU with AMX, bf16 is chosen
    # automatically). The saved model has no such wrapper, so drop it: the test evaluation and the LoRA merge check
    # then see the model as `inv evaluate` and the API run it (fp32), whatever precision trained it.
    return without_autocast(model), dict(output.metrics), int(trainer.state.global_step), checkpoints


def _inputs(cfg: DictConfig) -> list[Path]:
    files = []
    # the main task's pairs (train.pairs_from) and each other task's folder of the pairs stage (none read without
    # fine-tuning)
    folders = [training_pairs_dir(cfg), *(artifact_path(cfg.paths.pairs_dir) / task.name for task in mix_tasks(cfg))]
    for folder in folders if fine_tunes(cfg) else []:
        files += [folder / split_file("train"), folder / split_file("eval"), folder / pair_meta_file("train")]
        files.append(folder / MANIFEST_FILE)
    model_path = Path(str(cfg.model.name))
    searcher = search_folder(cfg)
    if searcher is not None:  # the search model kept beside the trained one
        files += model_files(searcher)
    if head_enabled(cfg):  # the head is fit on papers of the processed train split
        files.append(processed_split(cfg, "train"))
    # the evaluators score papers of the processed eval split during training and of the test split after it
    if int(cfg.train.eval_papers) > 0:
        files.append(processed_split(cfg, "eval"))
    if int(cfg.train.test_papers) > 0:
        files.append(processed_split(cfg, "test"))
    return files + (model_files(model_path) if model_path.is_dir() else [])


SPEC = StageSpec(
    name="train",
    run=run,
    inputs=_inputs,
    # The model's own files: an export beside them (onnx/, export_report.json) does not make the run look stale.
    # With a merged LoRA model, its adapter (adapter/) too.
    outputs=lambda cfg: (
        model_files(this_run_dir(cfg) / FINAL_DIR)
        + (model_files(this_run_dir(cfg) / ADAPTER_DIR) if cfg.model.get("lora") else [])
    ),
    stamp_dir=this_run_dir,
    validate=validate,
    config_keys=("model", "loss", "mix", "trainer", "train", "logger", "seed", "run_name"),
)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    from arxiv_embeddings.runner import cli_main

    cli_main(SPEC, cfg)

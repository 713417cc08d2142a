"""Where the pipeline's artifacts live and what they are called: the one place every stage, the embedding backends,
the API and the CLI look them up, so that none of them imports another stage for a path.

- processed splits: ``${paths.processed_dir}/{train,eval,test}.parquet`` (:func:`processed_split`,
  :func:`split_path`);
- training pairs: ``${paths.pairs_dir}`` (the pairs stage) or ``${paths.labels_dir}`` (the label stage), as
  ``train.pairs_from`` says (:func:`training_pairs_dir`, :func:`pairs_path`): ``<split>.parquet``
  (:func:`split_file`) and its ``<split>_meta.parquet`` twin (:func:`pair_meta_file`);
- models: ``${paths.models_dir}/<run>/final`` (:func:`run_dir`, :func:`final_dir`), with LoRA the adapter in
  ``<run>/adapter``, or a folder, bucket URL or Hub name (:func:`model_location`), with an ONNX export beside the
  weights in ``onnx/`` and its ``export_report.json``, ``tasks.json`` (which output of the folder serves each task)
  and, in a trained one, ``train_summary.json``; the trainer's checkpoints in ``<run>/checkpoints``
  (:func:`checkpoint_dir`, :func:`remote_checkpoint_dir`); the newest
  trained model under a models folder (:func:`latest_trained_model`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the embedding backends import this module: it imports nothing heavy at load time
    from omegaconf import DictConfig

#: The processed splits, in the order the stages read them.
SPLITS = ("train", "eval", "test")
#: A run's folders under ``${paths.models_dir}/<run>``: the trained model, and with ``model.lora`` the adapter (the
#: merged model is in ``final/``; with ``model.lora.merge=false`` the adapter itself is there).
FINAL_DIR = "final"
ADAPTER_DIR = "adapter"
#: Inside a trained model folder (``train.search_model=base`` or a search model's folder): the untouched base model or
#: that search model, a sentence-transformers folder of its own that serves search (the ``base`` output of
#: :mod:`arxiv_embeddings.backends.tasks`).
BASE_DIR = "base"
#: The trainer's checkpoints: ``<run>/checkpoints`` (with the models in a bucket, on local disk in
#: ``${paths.log_dir}/checkpoints/<run>``, copied to ``<run>/checkpoints`` in the bucket).
CHECKPOINTS_DIR = "checkpoints"
#: The file the train stage writes into the final model folder (its metrics and settings): a folder with one is a
#: model the train stage finished.
TRAIN_SUMMARY_FILE = "train_summary.json"
#: The ONNX export's folder inside a model folder, and the export stage's report beside it.
ONNX_DIR = "onnx"
REPORT_FILE = "export_report.json"
#: The file in a model folder that says which output serves each task (read by
#: :func:`arxiv_embeddings.backends.tasks.read_tasks`; written by the train stage).
TASKS_FILE = "tasks.json"
#: The manifest every artifact folder carries (processed splits, pairs, labels, an index): what made it, and how.
MANIFEST_FILE = "manifest.json"
#: Where each source of training pairs lives (``train.pairs_from``): its ``paths`` key and the command that writes it.
PAIR_SOURCES = {"pairs": ("pairs_dir", "uv run inv pairs"), "label": ("labels_dir", "uv run inv label")}


class ModelNotFoundError(FileNotFoundError):
    """The model path or name does not lead to a sentence-transformers model."""


def split_file(split: str) -> str:
    """The file name of a split: a processed split's and a pair file's, ``<split>.parquet``."""
    return f"{split}.parquet"


def pair_meta_file(split: str) -> str:
    """The file name of a pair file's twin with each pair's papers (subjects, ids): ``<split>_meta.parquet``."""
    return f"{split}_meta.parquet"


def processed_split(cfg: DictConfig, split: str) -> Path:
    """Path of a processed split, there or not (a stage's input); :func:`split_path` to read one."""
    from arxiv_embeddings.io import artifact_path

    return artifact_path(cfg.paths.processed_dir) / split_file(split)


def split_path(cfg: DictConfig, split: str) -> Path:
    """Path of a processed split, with an error naming the command that makes it when it is missing."""
    path = processed_split(cfg, split)
    if not path.exists():
        raise FileNotFoundError(f"Processed data not found at {path}; run 'uv run inv preprocess' first.")
    return path


def pair_source(cfg: DictConfig) -> str:
    """``train.pairs_from`` (``pairs`` when the config has none), checked against :data:`PAIR_SOURCES`."""
    from arxiv_embeddings.config import ConfigError

    source = str(cfg.get("train", {}).get("pairs_from", "pairs"))
    if source not in PAIR_SOURCES:
        raise ConfigError(f"train.pairs_from={source!r} is not known; valid values: {', '.join(PAIR_SOURCES)}.")
    return source


def training_pairs_dir(cfg: DictConfig) -> Path:
    """The folder of the pairs the train stage reads: ``train.pairs_from`` (pairs, the default, or label)."""
    from arxiv_embeddings.io import artifact_path

    return artifact_path(cfg.paths[PAIR_SOURCES[pair_source(cfg)][0]])


def pairs_path(cfg: DictConfig, split: str) -> Path:
    """Path of a pair file the train stage reads, with an error naming the command that makes it when missing."""
    path = training_pairs_dir(cfg) / split_file(split)
    if not path.exists():
        raise FileNotFoundError(f"Pairs not found at {path}; run '{PAIR_SOURCES[pair_source(cfg)][1]}' first.")
    return path


def run_dir(cfg: DictConfig, run: str) -> Path:
    """A run's folder, ``${paths.models_dir}/<run>`` (a bucket URL with ``paths=gcs``)."""
    from arxiv_embeddings.io import artifact_path

    return artifact_path(cfg.paths.models_dir) / run


def final_dir(cfg: DictConfig, run: str) -> Path:
    """A run's trained model folder, ``${paths.models_dir}/<run>/final``, there or not."""
    return run_dir(cfg, run) / FINAL_DIR


def this_run_dir(cfg: DictConfig) -> Path:
    """The folder of the run the config names, ``${paths.models_dir}/<run_name>``."""
    return run_dir(cfg, str(cfg.run_name))


def checkpoint_dir(cfg: DictConfig) -> Path:
    """Where the trainer keeps its checkpoints: beside the model, or on local disk
    (``${paths.log_dir}/checkpoints/<run_name>``) when the models are in a bucket, since the trainer writes plain
    files. The final model is published to the bucket, and with ``train.checkpoint_sync`` each checkpoint is copied
    there too (:func:`remote_checkpoint_dir`), so a run resumes on another machine."""
    from arxiv_embeddings.io import is_remote

    if is_remote(cfg.paths.models_dir):
        return Path(cfg.paths.log_dir) / CHECKPOINTS_DIR / str(cfg.run_name)
    return this_run_dir(cfg) / CHECKPOINTS_DIR


def remote_checkpoint_dir(cfg: DictConfig) -> Path | None:
    """Where checkpoints are copied in the bucket, ``<models_dir>/<run_name>/checkpoints``; None when the models
    are on local disk (the checkpoints are there already) or ``train.checkpoint_sync`` is false."""
    from arxiv_embeddings.io import is_remote

    if not is_remote(cfg.paths.models_dir) or not cfg.train.checkpoint_sync:
        return None
    return this_run_dir(cfg) / CHECKPOINTS_DIR


def model_name(location: str) -> str:
    """The name a model location goes by: the run of ``<models_dir>/<run>/final``, else the last part of a folder
    or Hub name (``""`` for none)."""
    parts = Path(location.rstrip("/")).parts
    if not parts:
        return ""
    return parts[-2] if parts[-1] == FINAL_DIR and len(parts) >= 2 else parts[-1]


def is_run_name(value: str) -> bool:
    """True for a bare run name (``minilm-sample``), not a path, a bucket URL or a Hub name."""
    return "/" not in value and "\\" not in value and not value.startswith(("~", "."))


def as_path(location: str) -> Path:
    """A model location as a path: a bucket URL as an artifact path, a local one with ``~`` expanded."""
    from arxiv_embeddings.io import artifact_path, is_remote

    return artifact_path(location) if is_remote(location) else Path(location).expanduser()


def model_location(cfg: DictConfig, model: str | None = None) -> str:
    """Where the model comes from: ``${paths.models_dir}/<run>/final`` for a run name (a ``gs://`` URL with
    ``paths=gcs``), else the path, bucket URL or Hub name. ``model`` defaults to ``evaluate.model``.

    Raises :class:`ModelNotFoundError` for a run name without a trained model.
    """
    value = str(model if model is not None else cfg.evaluate.model).strip()
    if is_run_name(value):
        final = final_dir(cfg, value)
        if final.exists():
            return str(final)
        if Path(value).is_dir():
            return value
        raise ModelNotFoundError(
            f"No trained model for run {value!r}: expected a sentence-transformers folder at {final}. "
            f"Train it with 'uv run inv train', or pass a model folder or a Hub name such as "
            "sentence-transformers/all-MiniLM-L6-v2."
        )
    return value


def latest_trained_model(models_dir: Path) -> Path | None:
    """The most recently written ``<models_dir>/*/final`` that the train stage finished (it writes
    ``train_summary.json`` last). A base model that ``inv export`` saved there from the Hub is not a trained one."""
    if not models_dir.is_dir():
        return None
    finals = [p for p in models_dir.glob(f"*/{FINAL_DIR}") if (p / TRAIN_SUMMARY_FILE).exists()]
    return max(finals, key=lambda p: p.stat().st_mtime, default=None)

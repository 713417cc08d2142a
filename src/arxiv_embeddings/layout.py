"""Where the pipeline's artifacts live and what they are called: the one place every stage, the embedding backends,
the API and the CLI look them up, so that none of them imports another stage for a path.

- processed splits: ``${paths.processed_dir}/{train,eval,test}.parquet`` (:func:`split_path`);
- training pairs: ``${paths.pairs_dir}`` (the pairs stage) or ``${paths.labels_dir}`` (the label stage), as
  ``train.pairs_from`` says (:func:`training_pairs_dir`, :func:`pairs_path`);
- models: ``${paths.models_dir}/<run>/final``, or a folder, bucket URL or Hub name (:func:`model_location`), with an
  ONNX export beside the weights in ``onnx/`` and its ``export_report.json``, and ``tasks.json`` (which output of
  the folder serves each task).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the embedding backends import this module: it imports nothing heavy at load time
    from omegaconf import DictConfig

#: The processed splits, in the order the stages read them.
SPLITS = ("train", "eval", "test")
#: The ONNX export's folder inside a model folder, and the export stage's report beside it.
ONNX_DIR = "onnx"
REPORT_FILE = "export_report.json"
#: The file in a model folder that says which output serves each task (read by
#: :func:`arxiv_embeddings.backends.tasks.read_tasks`; written by the train stage).
TASKS_FILE = "tasks.json"
#: Where each source of training pairs lives (``train.pairs_from``): its ``paths`` key and the command that writes it.
PAIR_SOURCES = {"pairs": ("pairs_dir", "uv run inv pairs"), "label": ("labels_dir", "uv run inv label")}


class ModelNotFoundError(FileNotFoundError):
    """The model path or name does not lead to a sentence-transformers model."""


def split_path(cfg: DictConfig, split: str) -> Path:
    """Path of a processed split, with an error naming the command that makes it when it is missing."""
    from arxiv_embeddings.io import artifact_path

    path = artifact_path(cfg.paths.processed_dir) / f"{split}.parquet"
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
    path = training_pairs_dir(cfg) / f"{split}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"Pairs not found at {path}; run '{PAIR_SOURCES[pair_source(cfg)][1]}' first.")
    return path


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
    from arxiv_embeddings.io import artifact_path

    value = str(model if model is not None else cfg.evaluate.model).strip()
    if is_run_name(value):
        run_dir = artifact_path(cfg.paths.models_dir) / value / "final"
        if run_dir.exists():
            return str(run_dir)
        if Path(value).is_dir():
            return value
        raise ModelNotFoundError(
            f"No trained model for run {value!r}: expected a sentence-transformers folder at {run_dir}. "
            f"Train it with 'uv run inv train', or pass a model folder or a Hub name such as "
            "sentence-transformers/all-MiniLM-L6-v2."
        )
    return value

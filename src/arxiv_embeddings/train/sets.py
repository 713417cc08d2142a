"""The training sets of a run: the main task's pairs (the ``pairs`` and ``loss`` groups), alone (``mix=none``) or
with the other tasks of a multi-task mix (``mix.tasks``), each with its loss, batch sampler and evaluator, in the
shapes sentence-transformers' trainer takes: a Dataset and a loss, or a dict of each for its multi-dataset training
(the batches of the tasks interleaved by ``mix.sampler``, every batch drawn from one task and scored by its loss).

:func:`training_sets` is the one place that reads the pairs: it checks them against the config and loads every
table; the rest of this module works on those tables and plain values."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from arxiv_embeddings.config import ConfigError, to_plain
from arxiv_embeddings.io import artifact_path, read_json, read_parquet
from arxiv_embeddings.layout import MANIFEST_FILE, pair_meta_file, pairs_path, split_file
from arxiv_embeddings.pair_format import main_task, mix_tasks
from arxiv_embeddings.train.objectives import (
    build_loss,
    check_group_size,
    check_labelled_sampler,
    check_loss_matches_pairs,
    check_sampler_suits,
)

#: A training set's batch sampler: a batch sampler class (or a function that builds one) and its keyword arguments
#: beyond the library's.
SamplerSpec = tuple[Callable[..., Any], dict[str, Any]]


@dataclass(frozen=True)
class PairSet:
    """One folder of train (and eval) pairs, loaded, with the loss that learns from it."""

    task: str | None  # the mix task's name; None for the single set of mix=none
    folder: Path
    pair_type: str
    text: str
    loss: DictConfig
    batch_sampler: str  # the task's own, or train.batch_sampler
    train: Any  # pyarrow Table of the train pairs
    meta: Any  # pyarrow Table of their meta rows (paper ids and subjects), one per pair
    eval: Any | None  # pyarrow Table of the eval pairs, None when the folder has none

    @property
    def train_file(self) -> Path:
        return self.folder / split_file("train")

    @property
    def teaches(self) -> str:
        """What the set teaches, for the evaluator: ``search`` (title -> abstract) or ``subject``."""
        return "search" if self.pair_type == "title_abstract" else "subject"


@dataclass(frozen=True)
class TrainingSets:
    sets: tuple[PairSet, ...]
    mix: bool
    #: train.batch_sampler: the sampler the training arguments name (the library's, unless one of ours replaces it)
    default_sampler: str
    papers_per_subject: int
    hard_fraction: float

    @property
    def train_files(self) -> list[Path]:
        return [s.train_file for s in self.sets]

    @property
    def pair_type(self) -> str:
        """The main task's pair type."""
        return self.sets[0].pair_type

    @property
    def tasks(self) -> list[str]:
        return [s.task for s in self.sets if s.task is not None]

    @property
    def text(self) -> str:
        """The text of a paper the subject pairs were built from (``title_abstract`` pairs have no choice)."""
        subject = [s for s in self.sets if s.teaches == "subject"]
        return (subject or list(self.sets))[0].text

    @property
    def teaches(self) -> tuple[str, ...]:
        """What the evaluators score: what the one set teaches, or subject and search for a mix (whatever its tasks)."""
        return ("subject", "search") if self.mix else (self.sets[0].teaches,)

    def describe(self) -> str:
        if not self.mix:
            return self.pair_type
        return "; ".join(f"{s.task}: {s.pair_type} with {s.loss.name}" for s in self.sets)

    def datasets(self) -> tuple[Any, Any]:
        """The train and eval datasets: one each, or a dict by task name (tasks without eval pairs left out)."""
        from datasets import Dataset

        if not self.mix:
            first = self.sets[0]
            return Dataset(first.train), (Dataset(first.eval) if first.eval is not None else None)
        train = {s.task: Dataset(s.train) for s in self.sets}
        evals = {s.task: Dataset(s.eval) for s in self.sets if s.eval is not None}
        return train, (evals or None)

    def losses(self, model: Any) -> Any:
        if not self.mix:
            return build_loss(model, self.sets[0].loss)
        return {s.task: build_loss(model, s.loss) for s in self.sets}

    def samplers(self) -> list[SamplerSpec | None]:
        """Each set's batch sampler, in the order of :meth:`datasets`."""
        return [
            train_sampler(
                s.train,
                s.meta,
                s.pair_type,
                s.batch_sampler,
                default=self.default_sampler,
                papers_per_subject=self.papers_per_subject,
                hard_fraction=self.hard_fraction,
            )
            for s in self.sets
        ]

    def evaluator(self, papers: Any, name: str, n_papers: int, *, seed: int, batch_size: int) -> Any | None:
        """Retrieval on ``n_papers`` of ``papers`` (a processed split): for one set, of what it teaches (named
        ``name``); for a mix, subject retrieval (named ``name``) and title -> abstract retrieval
        (``<name>_title_abstract``)."""
        return split_evaluator(papers, name, n_papers, self.text, self.teaches, seed=seed, batch_size=batch_size)

    def summary(self) -> dict[str, Any] | None:
        """What train_summary.json records of the tasks (None without a mix)."""
        if not self.mix:
            return None
        return {
            s.task: {
                "pairs": s.pair_type,
                "loss": to_plain(s.loss),
                "batch_sampler": None if s.batch_sampler == self.default_sampler else s.batch_sampler,
            }
            for s in self.sets
            if s.task is not None
        }

    def probe_texts(self, n: int = 16) -> list[str]:
        """The first ``n`` texts of the main task's train pairs (the LoRA merge check embeds them)."""
        first = self.sets[0].train
        return [str(t) for t in first.column(0).slice(0, n).to_pylist()]


def split_evaluator(
    papers: Any, name: str, n_papers: int, text: str, teaches: tuple[str, ...], *, seed: int, batch_size: int
) -> Any | None:
    """Retrieval on ``n_papers`` of ``papers`` (a processed split) of what a model is taught (``teaches``: subject
    and/or search): subject retrieval on ``text`` named ``name``, title -> abstract retrieval named ``name`` alone or,
    beside subject retrieval, ``<name>_title_abstract``. None without papers."""
    from arxiv_embeddings.train.evaluators import retrieval_evaluator, title_abstract_evaluator

    if papers is None or n_papers <= 0:
        return None
    settings = {"seed": seed, "batch_size": batch_size}
    if tuple(teaches) == ("search",):
        return title_abstract_evaluator(papers, n_papers, name, **settings)
    if tuple(teaches) == ("subject",):
        return retrieval_evaluator(papers, n_papers, text, name, **settings)
    from sentence_transformers.sentence_transformer.evaluation import SequentialEvaluator

    return SequentialEvaluator(
        [
            retrieval_evaluator(papers, n_papers, text, name, **settings),
            title_abstract_evaluator(papers, n_papers, f"{name}_title_abstract", **settings),
        ]
    )


def _load_set(
    task: str | None, folder: Path, pair_type: str, text: str, loss: DictConfig, batch_sampler: str
) -> PairSet:
    eval_file = folder / split_file("eval")
    return PairSet(
        task,
        folder,
        pair_type,
        text,
        loss,
        batch_sampler,
        train=read_parquet(folder / split_file("train")),
        meta=read_parquet(folder / pair_meta_file("train")),
        eval=read_parquet(eval_file) if eval_file.exists() else None,
    )


def training_sets(cfg: DictConfig) -> TrainingSets:
    """The run's training sets, checked against the pairs on disk and loaded: the main task's pairs (the ``pairs``
    and ``loss`` groups) and every task of the mix, each built as it says; a mismatch fails before training with the
    fix."""
    default = str(cfg.train.batch_sampler)
    papers_per_subject = cfg.train.get("papers_per_subject")
    batch_size = int(cfg.trainer.per_device_train_batch_size)
    root = pairs_path(cfg, "train").parent  # a missing file fails naming the command that makes it
    manifest = read_json(root / MANIFEST_FILE)
    pair_type, text = manifest["type"], manifest["config"]["text"]
    check_loss_matches_pairs(cfg.loss, pair_type)
    check_sampler_suits(default, pair_type, "train.batch_sampler")
    if pair_type == "labelled":
        check_labelled_sampler(default)
    tasks = mix_tasks(cfg)
    found = [(main_task(cfg) if tasks else None, root, pair_type, text, cfg.loss, default)]
    # The other tasks' pairs are the pairs stage's task folders, whichever pairs the main task reads
    # (train.pairs_from=label: the label stage's pairs, beside the pairs stage's search pairs).
    tasks_root = artifact_path(cfg.paths.pairs_dir)
    built = read_json(tasks_root / MANIFEST_FILE).get("tasks", {}) if (tasks_root / MANIFEST_FILE).exists() else {}
    fix = f"run 'uv run inv pairs' with the same mix (mix.tasks: {', '.join(t.name for t in tasks)}) to build them"
    for task in tasks:
        key = f"mix.tasks.{task.name}"
        folder = tasks_root / task.name
        if task.name not in built or not (folder / split_file("train")).exists():
            have = f"the tasks {', '.join(built)}" if built else "no task beside the main one"
            raise ConfigError(f"{key}: no pairs for this task in {tasks_root} (it holds {have}); {fix}.")
        task_manifest = read_json(folder / MANIFEST_FILE)
        if task_manifest["type"] != task.pair_type:
            raise ConfigError(f"{key}.pairs={task.pair_type}, but {folder} holds {task_manifest['type']} pairs; {fix}.")
        sampler = str(task.batch_sampler or default)
        found.append((task.name, folder, task.pair_type, task_manifest["config"]["text"], task.loss, sampler))
    for _, _, kind, _, _, sampler in found:  # batches of subject groups: the group size must divide the batch
        if sampler == "subject_groups" or (kind == "labelled" and sampler == "subject"):
            check_group_size(papers_per_subject, batch_size)
    return TrainingSets(
        tuple(_load_set(*args) for args in found),
        mix=bool(tasks),
        default_sampler=default,
        papers_per_subject=int(papers_per_subject or 0),
        hard_fraction=float(cfg.train.get("category_batches", {}).get("hard_fraction", 0.0)),
    )


def category_batches(pairs: Any, meta: Any, pair_type: str, hard_fraction: float) -> dict[str, Any]:
    """Arguments of :class:`~arxiv_embeddings.train.samplers.CategoryBatchSampler` for train ``pairs`` and their
    ``meta`` rows: the anchors' subjects, the conflict keys (the paper ids and the texts of every column, so no paper
    and no identical title or abstract twice in a batch), and for same-subject pairs (``anchor_positive``) the
    subject as a key too."""
    from arxiv_embeddings.train.samplers import conflict_keys

    ids = [meta.column(c).to_numpy(zero_copy_only=False) for c in ("a_id", "b_id", "neg_id") if c in meta.column_names]
    text_columns = [c for c in pairs.column_names if c not in ("label", "score")]
    texts = [pairs.column(c).to_numpy(zero_copy_only=False) for c in text_columns]
    return {
        "subjects": meta.column("a_subject").to_numpy(zero_copy_only=False),
        "keys": conflict_keys(ids, texts),
        "hard_fraction": float(hard_fraction),
        "distinct_subjects": pair_type == "anchor_positive",
    }


def train_sampler(
    pairs: Any,
    meta: Any,
    pair_type: str,
    batch_sampler: str,
    *,
    default: str,
    papers_per_subject: int,
    hard_fraction: float,
) -> SamplerSpec | None:
    """A training set's batch sampler and its arguments, or None for the library's one that the training arguments
    name (``default``, i.e. ``train.batch_sampler``)."""
    from arxiv_embeddings.train.samplers import CategoryBatchSampler, LabelGroupBatchSampler, SubjectBatchSampler

    if batch_sampler == "subject" and pair_type == "labelled":
        labels = pairs.column("label").to_numpy()
        return LabelGroupBatchSampler, {"labels": labels, "per_label": papers_per_subject}
    if batch_sampler == "subject":
        return SubjectBatchSampler, {"subjects": meta.column("a_subject").to_numpy(zero_copy_only=False)}
    if batch_sampler == "category":
        return CategoryBatchSampler, category_batches(pairs, meta, pair_type, hard_fraction)
    if batch_sampler == "subject_groups":  # papers_per_subject papers of each of several subjects a batch
        labels = meta.column("a_subject").to_numpy(zero_copy_only=False)
        return LabelGroupBatchSampler, {"labels": labels, "per_label": papers_per_subject}
    if batch_sampler == default:
        return None  # the library's sampler that the training arguments name
    # A mix task's own choice, unlike the arguments' (train.batch_sampler): the library's sampler of that name.
    return (no_duplicate_batches if batch_sampler == "no_duplicates" else random_batches), {}


def no_duplicate_batches(dataset: Any, batch_size: int, drop_last: bool, **kwargs: Any) -> Any:
    """The library's ``NoDuplicatesBatchSampler`` (a mix task's ``batch_sampler: no_duplicates``)."""
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

    return NoDuplicatesBatchSampler(dataset, batch_size=batch_size, drop_last=drop_last, **kwargs)


def random_batches(dataset: Any, batch_size: int, drop_last: bool, generator: Any = None, **kwargs: Any) -> Any:
    """The library's plain batches in random order (a mix task's ``batch_sampler: random``)."""
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from torch.utils.data import RandomSampler

    return DefaultBatchSampler(
        RandomSampler(dataset, generator=generator),
        batch_size=batch_size,
        drop_last=drop_last,
        generator=generator,
        **kwargs,
    )

"""The training sets of a run: the main task's pairs (the ``pairs`` and ``loss`` groups), alone (``mix=none``) or
with the other tasks of a multi-task mix (``mix.tasks``), each with its loss, batch sampler and evaluator, in the
shapes sentence-transformers' trainer takes: a Dataset and a loss, or a dict of each for its multi-dataset training
(the batches of the tasks interleaved by ``mix.sampler``, every batch drawn from one task and scored by its loss)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from arxiv_embeddings.config import ConfigError, to_plain
from arxiv_embeddings.io import artifact_path, read_json, read_parquet
from arxiv_embeddings.pairing import MANIFEST, main_task, mix_tasks
from arxiv_embeddings.train.objectives import build_loss, check_loss_matches_pairs

if TYPE_CHECKING:
    from arxiv_embeddings.train.trainer import SamplerSpec


@dataclass(frozen=True)
class PairSet:
    """One folder of train (and eval) pairs with the loss that learns from it."""

    task: str | None  # the mix task's name; None for the single set of mix=none
    folder: Path
    pair_type: str
    text: str
    loss: DictConfig
    batch_sampler: str | None  # None = train.batch_sampler

    @property
    def train_file(self) -> Path:
        return self.folder / "train.parquet"

    @property
    def teaches(self) -> str:
        """What the set teaches, for the evaluator: ``search`` (title -> abstract) or ``subject``."""
        return "search" if self.pair_type == "title_abstract" else "subject"


@dataclass(frozen=True)
class TrainingSets:
    sets: tuple[PairSet, ...]
    mix: bool

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

    def describe(self) -> str:
        if not self.mix:
            return self.pair_type
        return "; ".join(f"{s.task}: {s.pair_type} with {s.loss.name}" for s in self.sets)

    def datasets(self) -> tuple[Any, Any]:
        """The train and eval datasets: one each, or a dict by task name (tasks without eval pairs left out)."""
        from datasets import Dataset

        def load(path: Path) -> Any:
            return Dataset(read_parquet(path)) if path.exists() else None

        if not self.mix:
            return load(self.sets[0].train_file), load(self.sets[0].folder / "eval.parquet")
        train = {s.task: load(s.train_file) for s in self.sets}
        evals = {s.task: ds for s in self.sets if (ds := load(s.folder / "eval.parquet")) is not None}
        return train, (evals or None)

    def losses(self, model: Any) -> Any:
        if not self.mix:
            return build_loss(model, self.sets[0].loss)
        return {s.task: build_loss(model, s.loss) for s in self.sets}

    def samplers(self, cfg: DictConfig) -> list[SamplerSpec | None]:
        """Each set's batch sampler, in the order of :meth:`datasets`."""
        from arxiv_embeddings.train.trainer import train_sampler

        return [train_sampler(cfg, s.train_file, s.pair_type, s.batch_sampler) for s in self.sets]

    def evaluator(self, cfg: DictConfig, split: str, n_papers: int) -> Any | None:
        """Retrieval on ``n_papers`` papers of ``split``: for one set, of what it teaches (named ``split``); for a mix,
        subject retrieval (named ``split``) and title -> abstract retrieval (``<split>_title_abstract``)."""
        from arxiv_embeddings.train.evaluators import retrieval_evaluator, title_abstract_evaluator

        if not self.mix:  # one set: the evaluator of what it teaches, named after the split
            if self.sets[0].teaches == "search":
                return title_abstract_evaluator(cfg, split, n_papers, split)
            return retrieval_evaluator(cfg, split, n_papers, self.text, split)
        # a mix is scored on subject retrieval (named after the split) and title -> abstract retrieval, whatever its tasks
        found = [
            retrieval_evaluator(cfg, split, n_papers, self.text, split),
            title_abstract_evaluator(cfg, split, n_papers, f"{split}_title_abstract"),
        ]
        found = [e for e in found if e is not None]
        if not found:
            return None
        if len(found) == 1:
            return found[0]
        from sentence_transformers.evaluation import SequentialEvaluator

        return SequentialEvaluator(found)

    def summary(self) -> dict[str, Any] | None:
        """What train_summary.json records of the tasks (None without a mix)."""
        if not self.mix:
            return None
        return {
            s.task: {"pairs": s.pair_type, "loss": to_plain(s.loss), "batch_sampler": s.batch_sampler}
            for s in self.sets
            if s.task is not None
        }

    def first_train_set(self, train: Any) -> Any:
        return train[self.sets[0].task] if self.mix else train


def training_sets(cfg: DictConfig) -> TrainingSets:
    """The run's training sets, checked against the pairs on disk: the main task's pairs (the ``pairs`` and ``loss``
    groups) and every task of the mix, each built as it says; a mismatch fails before training with the fix."""
    from arxiv_embeddings.layout import pairs_path
    from arxiv_embeddings.train.trainer import SAMPLER_PAIRS, check_label_batches

    train_file = pairs_path(cfg, "train")
    root = train_file.parent
    manifest = read_json(root / MANIFEST)
    pair_type, text = manifest["type"], manifest["config"]["text"]
    check_loss_matches_pairs(cfg.loss, pair_type)
    suits = SAMPLER_PAIRS.get(str(cfg.train.batch_sampler))
    if suits and pair_type not in suits:
        raise ConfigError(
            f"train.batch_sampler={cfg.train.batch_sampler} is for {' or '.join(suits)} pairs, not {pair_type}: "
            "same-subject papers would be each other's negatives. Use subject, category, no_duplicates or random."
        )
    if pair_type == "labelled":
        check_label_batches(cfg)
    tasks = mix_tasks(cfg)
    main = PairSet(main_task(cfg) if tasks else None, root, pair_type, text, cfg.loss, None)
    sets = [main]
    # The other tasks' pairs are the pairs stage's task folders, whichever pairs the main task reads
    # (train.pairs_from=label: the label stage's pairs, beside the pairs stage's search pairs).
    tasks_root = artifact_path(cfg.paths.pairs_dir)
    built = read_json(tasks_root / MANIFEST).get("tasks", {}) if (tasks_root / MANIFEST).exists() else {}
    fix = f"run 'uv run inv pairs' with the same mix (mix.tasks: {', '.join(t.name for t in tasks)}) to build them"
    for task in tasks:
        key = f"mix.tasks.{task.name}"
        folder = tasks_root / task.name
        if task.name not in built or not (folder / "train.parquet").exists():
            have = f"the tasks {', '.join(built)}" if built else "no task beside the main one"
            raise ConfigError(f"{key}: no pairs for this task in {tasks_root} (it holds {have}); {fix}.")
        task_manifest = read_json(folder / MANIFEST)
        if task_manifest["type"] != task.pair_type:
            raise ConfigError(f"{key}.pairs={task.pair_type}, but {folder} holds {task_manifest['type']} pairs; {fix}.")
        sets.append(
            PairSet(task.name, folder, task.pair_type, task_manifest["config"]["text"], task.loss, task.batch_sampler)
        )
    return TrainingSets(tuple(sets), mix=bool(tasks))

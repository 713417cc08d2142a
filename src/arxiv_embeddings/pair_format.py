"""What the pairs and label stages share: a pair folder's manifest name, the split each pair file is drawn from,
each pair type's columns, the sampling modes, the subject index that draws same- and other-subject partners, the
Jaccard overlap of two papers' subjects, and how a pair file is written (dictionary-encoded parquet)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from omegaconf import DictConfig

from arxiv_embeddings.config import ConfigError

# Which split each pair file is drawn from; "test" is deliberately absent.
PAIR_SPLITS = {"train": "num_train", "eval": "num_eval"}
COLUMNS: dict[str, tuple[str, ...]] = {
    "anchor_positive": ("anchor", "positive"),
    "contrastive": ("sentence1", "sentence2", "label"),
    "graded": ("sentence1", "sentence2", "score"),
    "title_abstract": ("anchor", "positive"),
    "labelled": ("text", "label"),
}
WITH_NEGATIVES = ("anchor_positive", "title_abstract")
SAMPLING = ("balanced", "frequency")


# ----------------------------------------------------------------------------------------------- sampling
@dataclass
class SubjectIndex:
    """Papers grouped by primary subject: ``order[offsets[s]:offsets[s + 1]]`` are the rows of subject ``s``."""

    codes: np.ndarray  # subject index of each paper
    names: list[str]
    order: np.ndarray
    offsets: np.ndarray
    counts: np.ndarray

    @classmethod
    def from_table(cls, papers: pa.Table) -> SubjectIndex:
        enc = pc.dictionary_encode(papers.column("primary_subject")).combine_chunks()
        codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        counts = np.bincount(codes, minlength=len(enc.dictionary))
        return cls(
            codes, enc.dictionary.to_pylist(), np.argsort(codes, kind="stable"), np.r_[0, np.cumsum(counts)], counts
        )

    def same_subject(self, n: int, rng: np.random.Generator, sampling: str) -> tuple[np.ndarray, np.ndarray]:
        """``n`` pairs of two different papers of one subject; subjects drawn uniformly or by paper count."""
        valid = np.flatnonzero(self.counts >= 2)
        if len(valid) == 0:
            raise ConfigError(
                "No primary subject has 2 or more papers in this split, so same-subject pairs are impossible; "
                "lower preprocess.min_per_subject or use more papers."
            )
        if sampling == "balanced":
            subj = valid[rng.integers(0, len(valid), n)]
        else:  # frequency: a random paper's subject, so subjects come in proportion to their size
            weights = np.where(self.counts >= 2, self.counts, 0).astype(np.float64)
            subj = rng.choice(len(self.counts), size=n, p=weights / weights.sum())
        size = self.counts[subj]
        i = rng.integers(0, size)
        j = (i + 1 + rng.integers(0, size - 1)) % size  # any other member of the subject
        base = self.offsets[subj]
        return self.order[base + i], self.order[base + j]

    def other_subject(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each row, a random paper of a different primary subject (subjects uniformly)."""
        n_subj = len(self.counts)
        if n_subj < 2:
            raise ConfigError("Negatives need at least 2 primary subjects in the split; this one has 1.")
        subj = (self.codes[rows] + 1 + rng.integers(0, n_subj - 1, len(rows))) % n_subj
        return self.order[self.offsets[subj] + rng.integers(0, self.counts[subj])]


def jaccard(subjects: pa.ChunkedArray | pa.ListArray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Jaccard overlap of the ``subjects`` lists of papers ``a[k]`` and ``b[k]``, vectorized with bitsets: each
    paper's set of codes is a row of bits (one per distinct code), so the sizes of an intersection and a union are
    popcounts of an AND and an OR."""
    lists = subjects.combine_chunks() if isinstance(subjects, pa.ChunkedArray) else subjects
    enc = pc.dictionary_encode(pc.list_flatten(lists))
    parents = pc.list_parent_indices(lists).to_numpy()
    cols = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    bits = np.zeros((len(lists), max(1, -(-len(enc.dictionary) // 64))), dtype=np.uint64)
    np.bitwise_or.at(bits, (parents, cols // 64), np.uint64(1) << (cols % 64).astype(np.uint64))
    sizes = np.bitwise_count(bits).sum(axis=1, dtype=np.int64)
    inter = np.bitwise_count(bits[a] & bits[b]).sum(axis=1, dtype=np.int64)
    union = (sizes[a] + sizes[b] - inter).astype(np.float32)
    inter = inter.astype(np.float32)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def write_pairs(table: pa.Table, path: Path) -> Path:
    # store_schema=False: readers see plain string columns (the file itself stays dictionary-encoded).
    pq.write_table(
        table, path, compression="zstd", store_schema=False, row_group_size=1 << 20, dictionary_pagesize_limit=1 << 30
    )
    return path


# --------------------------------------------------------------------------------------------------- mix
#: How the batches of a mix's tasks take turns (sentence-transformers' multi-dataset batch samplers):
#: proportional = each task in proportion to its number of batches, round_robin = one batch of each in turn.
MIX_SAMPLERS = ("proportional", "round_robin")
#: The pair options a task may set for itself (the rest of its pair settings come from ``pairs``).
TASK_PAIR_OPTIONS = ("text", "sampling", "negatives", "positive_fraction", "same_subject_fraction")
_TASK_KEYS = ("pairs", "num_train", "num_eval", "loss", "batch_sampler", *TASK_PAIR_OPTIONS)


@dataclass(frozen=True)
class Task:
    """A task trained beside the main one (``mix.tasks.<name>``): which pairs it trains on, how many, its loss."""

    name: str
    pair_type: str
    num_train: int
    num_eval: int
    #: The pair settings this task's pairs are built with: ``pairs`` with the task's own options on top.
    options: DictConfig
    #: The task's loss, as a ``loss`` config (``name`` plus the loss's own keys).
    loss: DictConfig
    #: The task's batch sampler (``train.batch_sampler`` names); None = ``train.batch_sampler``.
    batch_sampler: str | None


def main_task(cfg: DictConfig) -> str:
    """The name of the main task (the ``pairs`` and ``loss`` groups) among a mix's tasks."""
    mix = cfg.get("mix")
    name = str(mix.get("main", "main")) if mix is not None else "main"
    if not name.replace("_", "").isalnum():
        raise ConfigError(f"mix.main={name!r}: a task name is a folder name; use letters, digits and _ only.")
    return name


def mix_tasks(cfg: DictConfig) -> list[Task]:
    """The tasks of ``mix.tasks`` (trained beside the main task of the ``pairs`` and ``loss`` groups) in their config
    order, checked; empty when the run trains the main task alone (``mix=none``)."""
    from omegaconf import OmegaConf

    mix = cfg.get("mix")
    tasks = mix.get("tasks") if mix is not None else None
    if not tasks:
        return []
    sampler = mix.get("sampler", "proportional")
    if sampler not in MIX_SAMPLERS:
        raise ConfigError(f"mix.sampler={sampler!r} is not valid; choose one of: {', '.join(MIX_SAMPLERS)}.")
    main = main_task(cfg)
    out = []
    for name, task in tasks.items():
        key = f"mix.tasks.{name}"
        if task is None:
            continue  # a task switched off from the command line: mix.tasks.search=null
        if not str(name).replace("_", "").isalnum():
            raise ConfigError(f"{key}: a task name is a folder name; use letters, digits and _ only.")
        if name == main:
            raise ConfigError(f"{key}: {name!r} is the main task's name (mix.main); give this task another name.")
        unknown = sorted(set(task) - set(_TASK_KEYS))
        if unknown:
            raise ConfigError(f"{key}: unknown key(s) {', '.join(unknown)}; a task takes {', '.join(_TASK_KEYS)}.")
        pair_type = task.get("pairs")
        if pair_type is None:  # e.g. mix=none beside an experiment that sets some keys of its tasks
            raise ConfigError(
                f"{key} has no pair type ({key}.pairs), only {', '.join(map(str, task)) or 'no keys'}: a task names "
                f"its pairs, e.g. pairs: title_abstract. To drop the task (also one an experiment configures), pass "
                f"{key}=null."
            )
        if pair_type not in COLUMNS:
            raise ConfigError(f"{key}.pairs={pair_type!r} is not a pair type; choose one of: {', '.join(COLUMNS)}.")
        num_train = task.get("num_train")
        if not isinstance(num_train, int) or isinstance(num_train, bool) or num_train <= 0:
            raise ConfigError(f"{key}.num_train={num_train!r}: give the task's number of train pairs (> 0).")
        num_eval = task.get("num_eval", cfg.pairs.num_eval)
        if not isinstance(num_eval, int) or isinstance(num_eval, bool) or num_eval < 0:
            raise ConfigError(f"{key}.num_eval={num_eval!r}: the task's eval pairs, >= 0 (0 = none).")
        loss = task.get("loss")
        if loss is None or not loss.get("name"):
            raise ConfigError(
                f"{key}.loss: each task names its loss, e.g. {key}.loss={{name: MultipleNegativesRankingLoss}}."
            )
        # The pairs section, then the pair type's own settings (configs/pairs/<type>.yaml: its defaults, such as
        # same_subject_fraction for graded pairs), then the task's options.
        from arxiv_embeddings.config import CONFIG_DIR

        own = OmegaConf.load(CONFIG_DIR / "pairs" / f"{pair_type}.yaml")
        options = OmegaConf.merge(
            OmegaConf.to_container(cfg.pairs, resolve=True),
            own,
            {"type": pair_type, **{k: task[k] for k in TASK_PAIR_OPTIONS if k in task}},
        )
        assert isinstance(options, DictConfig)  # merged onto a mapping: a mapping
        out.append(Task(str(name), pair_type, num_train, num_eval, options, loss, task.get("batch_sampler")))
    return out

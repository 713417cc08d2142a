"""pairs: build training pairs from the processed splits, vectorized with NumPy, as parquet the trainer reads.

    uv run inv pairs --overrides "pairs=graded pairs.num_train=100000 pairs.text=abstract"

Pair types (``configs/pairs/``), with the columns sentence-transformers' losses expect:

- ``anchor_positive``: ``anchor, positive`` (two different papers of the same primary subject);
- ``contrastive``: ``sentence1, sentence2, label`` (1 = same primary subject, 0 = different);
- ``graded``: ``sentence1, sentence2, score`` (Jaccard overlap of the two papers' ``subjects``);
- ``title_abstract``: ``anchor`` = a title, ``positive`` = the same paper's abstract;
- ``labelled``: ``text, label`` (one paper per row, ``label`` = its primary subject as an integer code), for the
  label-aware losses that use every same-subject paper of a batch (supervised contrastive, batch triplet losses).

``pairs.negatives=true`` adds a ``negative`` column (a paper of another primary subject). Train pairs come from the
train split, eval pairs from the eval split; the test split is never read. Each pair file has a ``*_meta.parquet``
twin (same rows) with the arxiv ids and subjects behind every text, for subject-aware batching and for checks.
Text columns are written dictionary-encoded (each paper's text stored once per file), so a million pairs take
seconds, and read back as plain strings.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from loguru import logger
from omegaconf import DictConfig

from arxiv_embeddings.config import CONFIG_DIR, ConfigError, check_missing, require, require_in, to_plain
from arxiv_embeddings.io import artifact_path, atomic_dir, file_sha256, read_parquet, write_json
from arxiv_embeddings.layout import MANIFEST_FILE, pair_meta_file, processed_split, split_file
from arxiv_embeddings.pair_format import (
    COLUMNS,
    PAIR_SPLITS,
    SAMPLING,
    WITH_NEGATIVES,
    SubjectIndex,
    Task,
    jaccard,
    main_task,
    mix_tasks,
    write_pairs,
)
from arxiv_embeddings.papers import paper_text_array
from arxiv_embeddings.runner import StageSpec, folder_files
from arxiv_embeddings.texts import TEXT_FIELDS


@dataclass
class PairRows:
    """Row indices into the split's papers for each pair column, plus a label or score column if any."""

    left: np.ndarray
    right: np.ndarray
    negative: np.ndarray | None = None
    target: np.ndarray | None = None


def _anchor_positive(
    papers: pa.Table, index: SubjectIndex, n: int, rng: np.random.Generator, p: DictConfig
) -> PairRows:
    a, b = index.same_subject(n, rng, p.sampling)
    return PairRows(a, b)


def _title_abstract(papers: pa.Table, index: SubjectIndex, n: int, rng: np.random.Generator, p: DictConfig) -> PairRows:
    total = papers.num_rows
    rows = np.concatenate([rng.permutation(total) for _ in range(-(-n // total))])[:n]  # each paper once per round
    return PairRows(rows, rows)


def _contrastive(papers: pa.Table, index: SubjectIndex, n: int, rng: np.random.Generator, p: DictConfig) -> PairRows:
    n_pos = round(n * float(p.positive_fraction))
    pa_, pb = index.same_subject(n_pos, rng, p.sampling)
    na = rng.integers(0, papers.num_rows, n - n_pos)
    nb = index.other_subject(na, rng)
    perm = rng.permutation(n)
    label = np.r_[np.ones(n_pos, dtype=np.int64), np.zeros(n - n_pos, dtype=np.int64)]
    return PairRows(np.r_[pa_, na][perm], np.r_[pb, nb][perm], target=label[perm])


def _graded(papers: pa.Table, index: SubjectIndex, n: int, rng: np.random.Generator, p: DictConfig) -> PairRows:
    n_same = round(n * float(p.same_subject_fraction))
    sa, sb = index.same_subject(n_same, rng, p.sampling)
    total = papers.num_rows
    ra = rng.integers(0, total, n - n_same)
    rb = (ra + 1 + rng.integers(0, total - 1, n - n_same)) % total  # a different paper
    perm = rng.permutation(n)
    a, b = np.r_[sa, ra][perm], np.r_[sb, rb][perm]
    return PairRows(a, b, target=jaccard(papers.column("subjects"), a, b))


def _labelled(papers: pa.Table, index: SubjectIndex, n: int, rng: np.random.Generator, p: DictConfig) -> PairRows:
    """``n`` papers with their subject code: subjects drawn as ``pairs.sampling`` says (subjects with a single paper
    left out: they have no positive), and within a subject its papers in a random order, each once before any
    repeats."""
    valid = np.flatnonzero(index.counts >= 2)
    if len(valid) < 2:
        raise ConfigError(
            "Labelled rows need at least 2 primary subjects with 2 or more papers in this split; lower "
            "preprocess.min_per_subject or use more papers."
        )
    if p.sampling == "balanced":
        subj = valid[rng.integers(0, len(valid), n)]
    else:
        weights = index.counts[valid].astype(np.float64)
        subj = valid[rng.choice(len(valid), size=n, p=weights / weights.sum())]
    rows = np.empty(n, dtype=np.int64)
    for s in np.unique(subj):
        where = np.flatnonzero(subj == s)
        members = index.order[index.offsets[s] : index.offsets[s + 1]]
        rounds = -(-len(where) // len(members))
        rows[where] = np.concatenate([rng.permutation(members) for _ in range(rounds)])[: len(where)]
    return PairRows(rows, rows, target=index.codes[rows])


BUILDERS: dict[str, Callable[[pa.Table, SubjectIndex, int, np.random.Generator, DictConfig], PairRows]] = {
    "anchor_positive": _anchor_positive,
    "contrastive": _contrastive,
    "graded": _graded,
    "title_abstract": _title_abstract,
    "labelled": _labelled,
}


# ------------------------------------------------------------------------------------------ materializing
@dataclass(frozen=True)
class TextTable:
    """The distinct texts of a split's papers (first-seen order) and each paper's index into them."""

    dictionary: pa.Array
    codes: np.ndarray


def _texts(values: TextTable, rows: np.ndarray) -> pa.DictionaryArray:
    """Texts of ``rows`` as a dictionary array: each distinct text once, plus int32 indices (no string copies).
    Pass one :class:`TextTable` (see :func:`_text_values`) to share the texts between columns."""
    return pa.DictionaryArray.from_arrays(pa.array(values.codes[rows].astype(np.int32)), values.dictionary)


def _text_values(values: pa.ChunkedArray | pa.Array) -> TextTable:
    """Distinct texts and codes of ``values``. A dictionary without duplicates matters: with the same text twice (two
    papers with one title) the parquet writer gives up dictionary encoding, and the bytes it then writes were not
    the same from one run to the next, which made the stage's skip check and manifest hashes unstable."""
    values = pc.cast(values, pa.large_string())
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    encoded = pc.dictionary_encode(values, null_encoding="encode")
    return TextTable(encoded.dictionary, encoded.indices.to_numpy(zero_copy_only=False))


def build_pairs(
    papers: pa.Table, pair_type: str, n: int, rng: np.random.Generator, p: DictConfig
) -> tuple[pa.Table, pa.Table]:
    """Build ``n`` pairs of ``pair_type`` from one split. Returns the pair table and its meta table (same rows)."""
    index = SubjectIndex.from_table(papers)
    rows = BUILDERS[pair_type](papers, index, n, rng, p)
    if p.negatives:
        rows.negative = index.other_subject(rows.left, rng)
    names = COLUMNS[pair_type]
    if pair_type == "title_abstract":
        left_text, right_text = _text_values(papers.column("title")), _text_values(papers.column("abstract"))
    else:  # one dictionary shared by the columns: the texts are joined and copied once
        left_text = right_text = _text_values(paper_text_array(papers, p.text))
    if pair_type == "labelled":  # one text per row; the label is the target column
        columns: dict[str, pa.Array] = {names[0]: _texts(left_text, rows.left)}
    else:
        columns = {names[0]: _texts(left_text, rows.left), names[1]: _texts(right_text, rows.right)}
    ids, subjects = papers.column("arxiv_id"), papers.column("primary_subject")
    meta: dict[str, pa.Array] = {}
    roles = (("a", rows.left),) if pair_type == "labelled" else (("a", rows.left), ("b", rows.right))
    for prefix, idx in (*roles, ("neg", rows.negative)):
        if idx is None:
            continue
        meta[f"{prefix}_id"] = pc.take(ids, pa.array(idx))
        meta[f"{prefix}_subject"] = pc.take(subjects, pa.array(idx))
    if rows.negative is not None:
        columns["negative"] = _texts(right_text, rows.negative)
    if rows.target is not None:
        columns[names[-1]] = pa.array(rows.target)
    return pa.table(columns), pa.table(meta)


def _write_hashed(table: pa.Table, path: Path) -> str:
    return file_sha256(write_pairs(table, path))


# --------------------------------------------------------------------------------------------- the stage
def validate(cfg: DictConfig) -> None:
    check_missing(cfg)
    _check_options(cfg.pairs, "pairs")
    for task in mix_tasks(cfg):
        _check_options(task.options, f"mix.tasks.{task.name}", task)


def _check_options(p: DictConfig, key: str, task: Task | None = None) -> None:
    """The pair settings of one pair folder: ``pairs`` (single task) or a mix task's (``key`` names its keys)."""
    require_in(f"{key}.{'pairs' if task else 'type'}", p.type, COLUMNS)
    require_in(f"{key}.text", p.text, TEXT_FIELDS)
    require_in(f"{key}.sampling", p.sampling, SAMPLING)
    num_train, num_eval = (task.num_train, task.num_eval) if task else (int(p.num_train), int(p.num_eval))
    require(num_train > 0, f"{key}.num_train", f"got {num_train}; must be a positive number of pairs.")
    require(num_eval >= 0, f"{key}.num_eval", f"got {num_eval}; must be >= 0 (0 = no eval pairs).")
    if p.negatives:
        require(
            p.type in WITH_NEGATIVES,
            f"{key}.negatives",
            f"a negative column is only for {', '.join(WITH_NEGATIVES)}, not pairs={p.type}.",
        )
    if p.type == "contrastive":
        require(
            0 < float(p.positive_fraction) < 1,
            f"{key}.positive_fraction",
            f"got {p.positive_fraction}; must be in (0, 1).",
        )
    if p.type == "graded":
        require(
            0 <= float(p.same_subject_fraction) <= 1,
            f"{key}.same_subject_fraction",
            f"got {p.same_subject_fraction}; must be in [0, 1].",
        )


def _split_file(cfg: DictConfig, split: str) -> Path:
    from arxiv_embeddings.layout import split_path

    return split_path(cfg, split)


def _write_folder(
    cfg: DictConfig, p: DictConfig, counts: dict[str, int], out: Path, salt: tuple[int, ...], label: str
) -> dict[str, Any]:
    """Build one folder of pairs (``p.type``, ``counts[split]`` pairs per split) into ``out``: each split's pair
    file and meta twin, and the folder's manifest. Returns the manifest."""
    files: dict[str, dict[str, Any]] = {}
    columns: dict[str, list[str]] = {}
    # Each file is compressed on one core: a split's files are written while the next split is built.
    with ThreadPoolExecutor(max_workers=2) as pool:
        metas = []
        for i, split in enumerate(PAIR_SPLITS):
            if counts[split] <= 0:
                continue
            path = _split_file(cfg, split)
            papers = read_parquet(path, columns=["arxiv_id", "title", "abstract", "primary_subject", "subjects"])
            rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), i, *salt]))
            table, meta = build_pairs(papers, p.type, counts[split], rng, p)
            logger.info(f"{label}{split}: {table.num_rows:,} {p.type} pairs from {papers.num_rows:,} papers.")
            files[split] = {
                "file": split_file(split),
                "meta": pair_meta_file(split),
                "rows": table.num_rows,
                "source": str(path),
                "sha256": pool.submit(_write_hashed, table, out / split_file(split)),
            }
            metas.append(pool.submit(write_pairs, meta, out / pair_meta_file(split)))
            columns[split] = table.column_names
            del papers, table, meta
        for future in metas:
            future.result()  # re-raises a failed write
        for entry in files.values():
            entry["sha256"] = entry["sha256"].result()
    manifest: dict[str, Any] = {
        "stage": "pairs",
        "type": p.type,
        "columns": columns["train"],
        "config": to_plain(p),
        "seed": cfg.seed,
        "files": files,
    }
    write_json(out / MANIFEST_FILE, manifest)
    return manifest


def run(cfg: DictConfig) -> dict[str, Any]:
    """Build the configured pairs for the train and eval splits: the main task's (``pairs.type``) in the folder
    itself and, with a multi-task mix, each other task's (``mix.tasks.<name>``) in a subfolder of its name. The
    folder's manifest lists those tasks. Returns the output folder and pair counts."""
    validate(cfg)
    started = time.perf_counter()
    p, tasks = cfg.pairs, mix_tasks(cfg)
    out_dir = artifact_path(cfg.paths.pairs_dir)
    with atomic_dir(out_dir) as tmp:
        counts = {split: int(p[key]) for split, key in PAIR_SPLITS.items()}
        manifest = _write_folder(cfg, p, counts, tmp, (), f"{main_task(cfg)} " if tasks else "")
        result = {k: v["rows"] for k, v in manifest["files"].items()}
        if tasks:
            manifest["main"] = main_task(cfg)
            manifest["tasks"] = {}
            for t, task in enumerate(tasks):
                (tmp / task.name).mkdir()
                counts = {"train": task.num_train, "eval": task.num_eval}
                m = _write_folder(cfg, task.options, counts, tmp / task.name, (t + 1,), f"{task.name} ")
                manifest["tasks"][task.name] = {"type": m["type"], "dir": task.name}
                result.update({f"{task.name}/{split}": entry["rows"] for split, entry in m["files"].items()})
            manifest["sampler"] = str(cfg.mix.get("sampler", "proportional"))
            write_json(tmp / MANIFEST_FILE, manifest)
    what = p.type
    if tasks:
        what = f"{main_task(cfg)}: {p.type}, " + ", ".join(f"{t.name}: {t.pair_type}" for t in tasks)
    logger.success(
        f"pairs: {', '.join(f'{k} {v:,}' for k, v in result.items())} pairs ({what}) written to {out_dir} "
        f"in {time.perf_counter() - started:.1f}s."
    )
    return {"dir": out_dir, "type": p.type, "tasks": [t.name for t in tasks], "counts": result}


SPEC = StageSpec(
    name="pairs",
    run=run,
    inputs=lambda cfg: [processed_split(cfg, s) for s in PAIR_SPLITS],
    outputs=lambda cfg: folder_files(cfg.paths.pairs_dir),  # a mix's task folders are hashed whole
    stamp_dir=lambda cfg: artifact_path(cfg.paths.pairs_dir),
    validate=validate,
    config_keys=("pairs", "mix", "seed"),
)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="pairs")
def main(cfg: DictConfig) -> None:
    from arxiv_embeddings.runner import cli_main

    cli_main(SPEC, cfg)


if __name__ == "__main__":
    main()

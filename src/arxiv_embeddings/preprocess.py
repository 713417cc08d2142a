"""preprocess: normalize, clean, deduplicate and split the papers into train / eval / test parquet files.

    uv run inv preprocess --overrides "data=files data.path=papers.parquet preprocess.max_per_subject=500"

Everything is vectorized over Arrow columns and NumPy arrays (no Python loop over rows), so the full
2.5M-paper dataset goes through in bounded memory. A paper's split is a function of a salted hash of its
``arxiv_id`` alone, so it never changes when papers are added, and duplicates are removed before splitting,
so no paper or abstract can land in two splits. Outputs appear all at once, or not at all, on local disk or in a
bucket (``paths=gcs``: the splits are written locally, then published; see :mod:`arxiv_embeddings.io`).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from loguru import logger
from omegaconf import DictConfig

from arxiv_embeddings.config import CONFIG_DIR, ConfigError, check_missing, require, to_plain
from arxiv_embeddings.io import (
    PARQUET_ROW_GROUP_SIZE,
    artifact_path,
    atomic_dir,
    file_sha256,
    write_json,
    write_parquet_row_groups,
)
from arxiv_embeddings.layout import MANIFEST_FILE, SPLITS, processed_split, split_file
from arxiv_embeddings.papers import hash_strings, unit_interval
from arxiv_embeddings.runner import StageSpec
from arxiv_embeddings.sources import LOADERS, RowTaker, load_raw, normalize_columns, take_rows, text_keys, word_counts


# --------------------------------------------------------------------------------------------- validation
def validate(cfg: DictConfig) -> None:
    """Check the config before any work, naming the offending key."""
    check_missing(cfg)
    if cfg.data.source not in LOADERS:
        raise ConfigError(f"data.source={cfg.data.source!r} is not known; valid values: {', '.join(sorted(LOADERS))}.")
    p, s = cfg.preprocess, cfg.preprocess.split
    fractions = {k: s[k] for k in SPLITS}
    for k, v in fractions.items():
        require(
            isinstance(v, (int, float)) and 0 < v < 1,
            f"preprocess.split.{k}",
            f"got {v!r}; each split fraction must be in (0, 1).",
        )
    total = sum(fractions.values())
    require(
        abs(total - 1.0) < 1e-6,
        "preprocess.split",
        f"train + eval + test = {s.train} + {s.eval} + {s.test} = {total:g}; the fractions must sum to 1.",
    )
    require(
        int(p.min_per_subject) >= 2,
        "preprocess.min_per_subject",
        f"got {p.min_per_subject}; pairs need at least 2 papers per subject.",
    )
    require(
        int(p.min_abstract_words) >= 0, "preprocess.min_abstract_words", f"got {p.min_abstract_words}; must be >= 0."
    )
    if p.max_per_subject is not None:
        require(
            int(p.max_per_subject) >= int(p.min_per_subject),
            "preprocess.max_per_subject",
            f"{p.max_per_subject} is below preprocess.min_per_subject={p.min_per_subject}; every subject would be dropped.",
        )
    if p.max_papers is not None:
        require(
            int(p.max_papers) > 0,
            "preprocess.max_papers",
            f"got {p.max_papers}; use a positive number or null for all papers.",
        )


# ------------------------------------------------------------------------------------------------ helpers
def _keep_first(group: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Boolean mask keeping, for each value of ``group``, the row that comes first in ``order`` (a permutation)."""
    g = group[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = g[1:] != g[:-1]
    keep = np.zeros(len(order), dtype=bool)
    keep[order[first]] = True
    return keep


def _dedupe(table: pa.Table, column: str, hashes: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Mask of rows to keep so that ``column`` is unique (exactly: hash collisions between different strings keep both)."""
    return _unique_mask(table.column(column), hashes, order)


def _unique_mask(
    values: pa.ChunkedArray | RowTaker, hashes: np.ndarray, order: np.ndarray, rows: np.ndarray | None = None
) -> np.ndarray:
    """:func:`_dedupe` over ``values[rows]`` (all of ``values`` when ``rows`` is None), without copying the values."""
    sort = np.lexsort((order, hashes))
    keep = _keep_first(hashes, sort)
    # Map every dropped row to the kept row of its hash and confirm the strings really are equal.
    h_sorted = hashes[sort]
    run_start = np.r_[0, np.flatnonzero(h_sorted[1:] != h_sorted[:-1]) + 1]
    kept_of = np.repeat(sort[run_start], np.diff(np.r_[run_start, len(sort)]))
    dropped = np.flatnonzero(~keep[sort])
    if len(dropped):
        dup, partners = sort[dropped], kept_of[dropped]
        if rows is not None:
            dup_at, partners_at = rows[dup], rows[partners]
        else:
            dup_at, partners_at = dup, partners
        take = values if isinstance(values, RowTaker) else RowTaker(values)
        same = pc.equal(take(dup_at), take(partners_at)).to_numpy(zero_copy_only=False)
        keep[dup[~same]] = True
    return keep


def _repeated(values: np.ndarray) -> np.ndarray:
    """Mask of the entries whose value occurs more than once."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return counts[inverse] > 1


def _within_group_rank(groups: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Rank of each row among the rows of its group, ordered by ``key``."""
    order = np.lexsort((key, groups))
    g = groups[order]
    starts = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
    rank_sorted = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = rank_sorted
    return rank


def _subject_codes(table: pa.Table) -> tuple[np.ndarray, list[str]]:
    enc = pc.dictionary_encode(table.column("primary_subject")).combine_chunks()
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary.to_pylist()


def split_assignment(ids: pa.ChunkedArray | pa.Array, fractions: dict[str, float], salt: str) -> np.ndarray:
    """Split index (0 train, 1 eval, 2 test) of each paper, from a salted hash of its arxiv_id."""
    u = unit_interval(hash_strings(ids, key=salt))
    edges = np.cumsum([fractions[s] for s in SPLITS])[:-1]
    return np.searchsorted(edges, u, side="right")


# ------------------------------------------------------------------------------------------------- build
def build(cfg: DictConfig) -> tuple[dict[str, pa.Table], dict[str, int]]:
    """Load, normalize, filter, dedupe and split. Returns the split tables and the row funnel; writes nothing."""
    columns, schema, positions, funnel = _plan(cfg)
    return _take_splits(columns, schema, positions), funnel


Plan = tuple[dict[str, pa.ChunkedArray], pa.Schema, dict[str, np.ndarray], dict[str, int]]


def _plan(cfg: DictConfig) -> Plan:
    """:func:`build` up to the split tables: the normalized table's columns and schema, the positions of each
    split's rows in it (sorted by arxiv_id), and the row funnel."""
    p = cfg.preprocess
    t0 = time.perf_counter()
    raw = load_raw(cfg.data, list(p.keep_columns))
    funnel: dict[str, int] = {"loaded": raw.num_rows}
    logger.info(f"Loaded {raw.num_rows:,} rows from data.source={cfg.data.source} in {time.perf_counter() - t0:.1f}s.")

    # The filters below never copy the table: `rows` holds the positions of the rows still in, the small columns the
    # filters need are taken at those positions, and each split is taken from `table` once, at the end.
    columns = dict(zip(raw.column_names, raw.columns, strict=True))
    del raw  # normalize_columns releases each raw column as it goes
    table, valid = normalize_columns(columns, list(p.keep_columns))
    funnel["dropped_bad_subject"] = int((~valid).sum())

    ok = pc.and_(
        pc.greater_equal(pc.utf8_length(table.column("title")), int(p.min_title_chars)),
        pc.greater_equal(word_counts(table.column("abstract")), int(p.min_abstract_words)),
    )
    ok = pc.and_(ok, pc.greater(pc.utf8_length(table.column("arxiv_id")), 0))
    rows = np.flatnonzero(valid & pc.fill_null(ok, False).to_numpy(zero_copy_only=False))
    funnel["dropped_short_text"] = int(valid.sum()) - len(rows)

    # Duplicates: keep one row per arxiv_id, then one per exact abstract (the smallest arxiv_id), so the
    # choice does not depend on the order of the input. Only rows that can have a duplicate go through the sorts
    # and the full hash of the abstract: those sharing an arxiv_id hash, then those sharing a cheap key of the
    # abstract (equal texts have equal keys, so a row with a key of its own has no duplicate).
    abstracts = table.column("abstract")
    take_abstracts = RowTaker(abstracts)
    ids = take_rows(table.column("arxiv_id"), rows)
    id_rank = np.empty(len(rows), dtype=np.int64)
    id_rank[pc.sort_indices(ids).to_numpy()] = np.arange(len(rows))
    id_hash = hash_strings(ids)
    shared = np.flatnonzero(_repeated(id_hash))
    id_keep = np.ones(len(rows), dtype=bool)
    if len(shared):
        abstract_hash = hash_strings(take_abstracts(rows[shared])).astype(np.int64)
        id_keep[shared] = _dedupe(pa.table({"arxiv_id": ids.take(shared)}), "arxiv_id", id_hash[shared], abstract_hash)
    funnel["dropped_duplicate_id"] = int((~id_keep).sum())
    rows, ids, id_rank = rows[id_keep], ids.filter(id_keep), id_rank[id_keep]
    maybe = np.flatnonzero(_repeated(text_keys(abstracts)[rows]))
    abs_keep = np.ones(len(rows), dtype=bool)
    if len(maybe):
        abstract_hash = hash_strings(take_abstracts(rows[maybe]))
        abs_keep[maybe] = _unique_mask(take_abstracts, abstract_hash, id_rank[maybe], rows[maybe])
    funnel["dropped_duplicate_abstract"] = int((~abs_keep).sum())
    rows, ids, id_rank = rows[abs_keep], ids.filter(abs_keep), id_rank[abs_keep]
    del abstracts, take_abstracts

    seeded = hash_strings(ids, key=f"choice-{cfg.seed}")
    if p.max_papers is not None and len(rows) > int(p.max_papers):
        keep = np.zeros(len(rows), dtype=bool)
        keep[np.argpartition(seeded, int(p.max_papers) - 1)[: int(p.max_papers)]] = True
        funnel["dropped_subsample"] = int((~keep).sum())
        rows, ids, id_rank, seeded = rows[keep], ids.filter(keep), id_rank[keep], seeded[keep]

    codes, names = _subject_codes(pa.table({"primary_subject": take_rows(table.column("primary_subject"), rows)}))
    counts = np.bincount(codes, minlength=len(names))
    keep = counts[codes] >= int(p.min_per_subject)
    if not keep.any():
        largest = int(counts.max()) if len(counts) else 0
        raise ConfigError(
            f"preprocess.min_per_subject={p.min_per_subject} removes every paper: the largest subject has {largest} "
            f"papers after cleaning. Lower preprocess.min_per_subject (at most {largest}) or use a larger corpus."
        )
    funnel["dropped_rare_subject"] = int((~keep).sum())
    rows, ids, id_rank, codes, seeded = rows[keep], ids.filter(keep), id_rank[keep], codes[keep], seeded[keep]

    if p.max_per_subject is not None:
        keep = _within_group_rank(codes, seeded) < int(p.max_per_subject)
        funnel["dropped_subject_cap"] = int((~keep).sum())
        rows, ids, id_rank = rows[keep], ids.filter(keep), id_rank[keep]

    fractions = {s: float(p.split[s]) for s in SPLITS}
    assignment = split_assignment(ids, fractions, str(p.split.salt))
    positions: dict[str, np.ndarray] = {}
    for i, name in enumerate(SPLITS):
        part = assignment == i
        if not part.any():
            raise ConfigError(
                f"Split '{name}' would be empty ({len(rows)} papers in all, preprocess.split.{name}={fractions[name]}). "
                "Raise that fraction or use more papers."
            )
        # Sorted by arxiv_id: the ids are distinct by now, so their ranks order them as a sort of the strings would.
        positions[name] = rows[part][np.argsort(id_rank[part], kind="stable")]
    funnel["kept"] = len(rows)
    return dict(zip(table.column_names, table.columns, strict=True)), table.schema, positions, funnel


def _take_splits(
    columns: dict[str, pa.ChunkedArray], schema: pa.Schema, positions: dict[str, np.ndarray]
) -> dict[str, pa.Table]:
    """Each split's rows of the table ``columns`` holds, one column at a time; ``columns`` is emptied as it goes, so
    a column's source is freed as soon as its rows are taken."""
    taken: dict[str, list[pa.Array]] = {split: [] for split in positions}
    for name in schema.names:
        take = RowTaker(columns.pop(name))
        for split, idx in positions.items():
            taken[split].append(take(idx))
        del take
    return {split: pa.Table.from_arrays(arrays, schema=schema) for split, arrays in taken.items()}


def _write_split(takers: list[RowTaker], schema: pa.Schema, rows: np.ndarray, path: Path) -> tuple[Path, str]:
    """Write the table's ``rows`` (in that order) to ``path`` as :func:`write_parquet` would write them, taking one
    row group at a time, so the split is never whole in memory. Returns the path and the file's sha256."""
    row_groups = (
        pa.Table.from_arrays([take(rows[i : i + PARQUET_ROW_GROUP_SIZE]) for take in takers], schema=schema)
        for i in range(0, len(rows), PARQUET_ROW_GROUP_SIZE)
    )
    path = write_parquet_row_groups(row_groups, schema, path)
    return path, file_sha256(path)


def _subject_counts(table: pa.Table) -> dict[str, int]:
    vc = pc.value_counts(table.column("primary_subject")).to_pylist()
    return dict(sorted(((d["values"], d["counts"]) for d in vc), key=lambda kv: (-kv[1], kv[0])))


# --------------------------------------------------------------------------------------------------- run
def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the stage: returns the output folder, the counts per split and the row funnel."""
    validate(cfg)
    started = time.perf_counter()
    columns, schema, positions, funnel = _plan(cfg)
    out_dir = artifact_path(cfg.paths.processed_dir)
    manifest: dict[str, Any] = {
        "stage": "preprocess",
        "source": to_plain(cfg.data),
        "config": to_plain(cfg.preprocess),
        "seed": cfg.seed,
        "funnel": funnel,
        "splits": {},
    }
    takers = [RowTaker(columns[name]) for name in schema.names]
    with atomic_dir(out_dir) as tmp:
        # zstd compression is the slowest step and one file compresses on one core: write the splits side by side.
        with ThreadPoolExecutor(max_workers=len(positions)) as pool:
            futures = {
                name: pool.submit(_write_split, takers, schema, rows, tmp / split_file(name))
                for name, rows in positions.items()
            }
        for name, split_rows in positions.items():
            path, digest = futures[name].result()
            primary = take_rows(columns["primary_subject"], split_rows)
            manifest["splits"][name] = {
                "file": path.name,
                "rows": len(split_rows),
                "sha256": digest,
                "subjects": _subject_counts(pa.table({"primary_subject": primary})),
            }
        all_subjects = sorted(set().union(*(m["subjects"] for m in manifest["splits"].values())))
        manifest["num_subjects"] = len(all_subjects)
        write_json(tmp / MANIFEST_FILE, manifest)
    rows = ", ".join(f"{k} {v['rows']:,}" for k, v in manifest["splits"].items())
    seconds = time.perf_counter() - started
    logger.success(
        f"preprocess: {funnel['loaded']:,} rows -> {funnel['kept']:,} papers in {manifest['num_subjects']} subjects "
        f"({rows}) written to {out_dir} in {seconds:.1f}s."
    )
    return {"dir": out_dir, "counts": {k: v["rows"] for k, v in manifest["splits"].items()}, "funnel": funnel}


def _outputs(cfg: DictConfig) -> list[Path]:
    return [processed_split(cfg, s) for s in SPLITS] + [artifact_path(cfg.paths.processed_dir) / MANIFEST_FILE]


def _inputs(cfg: DictConfig) -> list[Path]:
    if cfg.data.source == "hf":
        return []  # the dataset name and revision are in the config fingerprint
    import glob

    from arxiv_embeddings.papers import SAMPLE_PATH

    path = str(cfg.data.path or SAMPLE_PATH)
    return [Path(p) for p in sorted(glob.glob(path))] or [Path(path)]


SPEC = StageSpec(
    name="preprocess",
    run=run,
    inputs=_inputs,
    outputs=_outputs,
    stamp_dir=lambda cfg: artifact_path(cfg.paths.processed_dir),
    validate=validate,
    config_keys=("data", "preprocess", "seed"),
)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="preprocess")
def main(cfg: DictConfig) -> None:
    from arxiv_embeddings.runner import cli_main

    cli_main(SPEC, cfg)


if __name__ == "__main__":
    main()

"""preprocess: normalize, clean, deduplicate and split the papers into train / eval / test parquet files.

    uv run inv preprocess --overrides "data=files data.path=papers.parquet preprocess.max_per_subject=500"

Everything is vectorized over Arrow columns and NumPy arrays (no Python loop over rows), so the full
2.5M-paper dataset goes through in bounded memory. A paper's split is a function of a salted hash of its
``arxiv_id`` alone, so it never changes when papers are added, and duplicates are removed before splitting,
so no paper or abstract can land in two splits. Outputs appear all at once, or not at all.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from loguru import logger
from omegaconf import DictConfig

from arxiv_embeddings.config import CONFIG_DIR, ConfigError, check_missing, require, to_plain
from arxiv_embeddings.data import LOADERS, hash_strings, load_raw, normalize, unit_interval
from arxiv_embeddings.io import atomic_dir, file_sha256, write_json, write_parquet
from arxiv_embeddings.stage import StageSpec

SPLITS = ("train", "eval", "test")
MANIFEST = "manifest.json"


# --------------------------------------------------------------------------------------------- validation
def validate(cfg: DictConfig) -> None:
    """Check the config before any work, naming the offending key."""
    check_missing(cfg)
    if cfg.data.source not in LOADERS:
        raise ConfigError(f"data.source={cfg.data.source!r} is not known; valid values: {', '.join(sorted(LOADERS))}.")
    p, s = cfg.preprocess, cfg.preprocess.split
    fractions = {k: s[k] for k in SPLITS}
    for k, v in fractions.items():
        require(isinstance(v, (int, float)) and 0 < v < 1, f"preprocess.split.{k}", f"got {v!r}; each split fraction must be in (0, 1).")
    total = sum(fractions.values())
    require(
        abs(total - 1.0) < 1e-6,
        "preprocess.split",
        f"train + eval + test = {s.train} + {s.eval} + {s.test} = {total:g}; the fractions must sum to 1.",
    )
    require(int(p.min_per_subject) >= 2, "preprocess.min_per_subject", f"got {p.min_per_subject}; pairs need at least 2 papers per subject.")
    require(int(p.min_abstract_words) >= 0, "preprocess.min_abstract_words", f"got {p.min_abstract_words}; must be >= 0.")
    if p.max_per_subject is not None:
        require(
            int(p.max_per_subject) >= int(p.min_per_subject),
            "preprocess.max_per_subject",
            f"{p.max_per_subject} is below preprocess.min_per_subject={p.min_per_subject}; every subject would be dropped.",
        )
    if p.max_papers is not None:
        require(int(p.max_papers) > 0, "preprocess.max_papers", f"got {p.max_papers}; use a positive number or null for all papers.")


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
    sort = np.lexsort((order, hashes))
    keep = _keep_first(hashes, sort)
    # Map every dropped row to the kept row of its hash and confirm the strings really are equal.
    h_sorted = hashes[sort]
    run_start = np.r_[0, np.flatnonzero(h_sorted[1:] != h_sorted[:-1]) + 1]
    kept_of = np.repeat(sort[run_start], np.diff(np.r_[run_start, len(sort)]))
    dropped = np.flatnonzero(~keep[sort])
    if len(dropped):
        rows, partners = sort[dropped], kept_of[dropped]
        col = table.column(column)
        same = pc.equal(col.take(pa.array(rows)), col.take(pa.array(partners))).to_numpy(zero_copy_only=False)
        keep[rows[~same]] = True
    return keep


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
    p = cfg.preprocess
    t0 = time.perf_counter()
    raw = load_raw(cfg.data)
    funnel: dict[str, int] = {"loaded": raw.num_rows}
    logger.info(f"Loaded {raw.num_rows:,} rows from data.source={cfg.data.source} in {time.perf_counter() - t0:.1f}s.")

    table, n_bad = normalize(raw, list(p.keep_columns))
    del raw
    funnel["dropped_bad_subject"] = n_bad

    ok = pc.and_(
        pc.greater_equal(pc.utf8_length(table.column("title")), int(p.min_title_chars)),
        pc.greater_equal(pc.count_substring_regex(table.column("abstract"), r"\S+"), int(p.min_abstract_words)),
    )
    ok = pc.and_(ok, pc.greater(pc.utf8_length(table.column("arxiv_id")), 0))
    before = table.num_rows
    table = table.filter(pc.fill_null(ok, False))
    funnel["dropped_short_text"] = before - table.num_rows

    # Duplicates: keep one row per arxiv_id, then one per exact abstract (the smallest arxiv_id), so the
    # choice does not depend on the order of the input.
    id_rank = np.empty(table.num_rows, dtype=np.int64)
    id_rank[pc.sort_indices(table.column("arxiv_id")).to_numpy()] = np.arange(table.num_rows)
    abstract_hash = hash_strings(table.column("abstract"))
    id_keep = _dedupe(table, "arxiv_id", hash_strings(table.column("arxiv_id")), abstract_hash.astype(np.int64))
    funnel["dropped_duplicate_id"] = int((~id_keep).sum())
    table, abstract_hash, id_rank = table.filter(pa.array(id_keep)), abstract_hash[id_keep], id_rank[id_keep]
    abs_keep = _dedupe(table, "abstract", abstract_hash, id_rank)
    funnel["dropped_duplicate_abstract"] = int((~abs_keep).sum())
    table = table.filter(pa.array(abs_keep))

    seeded = hash_strings(table.column("arxiv_id"), key=f"choice-{cfg.seed}")
    if p.max_papers is not None and table.num_rows > int(p.max_papers):
        keep = np.zeros(table.num_rows, dtype=bool)
        keep[np.argpartition(seeded, int(p.max_papers) - 1)[: int(p.max_papers)]] = True
        funnel["dropped_subsample"] = int((~keep).sum())
        table, seeded = table.filter(pa.array(keep)), seeded[keep]

    codes, names = _subject_codes(table)
    counts = np.bincount(codes, minlength=len(names))
    keep = counts[codes] >= int(p.min_per_subject)
    if not keep.any():
        largest = int(counts.max()) if len(counts) else 0
        raise ConfigError(
            f"preprocess.min_per_subject={p.min_per_subject} removes every paper: the largest subject has {largest} "
            f"papers after cleaning. Lower preprocess.min_per_subject (at most {largest}) or use a larger corpus."
        )
    funnel["dropped_rare_subject"] = int((~keep).sum())
    table, codes, seeded = table.filter(pa.array(keep)), codes[keep], seeded[keep]

    if p.max_per_subject is not None:
        keep = _within_group_rank(codes, seeded) < int(p.max_per_subject)
        funnel["dropped_subject_cap"] = int((~keep).sum())
        table = table.filter(pa.array(keep))

    fractions = {s: float(p.split[s]) for s in SPLITS}
    assignment = split_assignment(table.column("arxiv_id"), fractions, str(p.split.salt))
    splits: dict[str, pa.Table] = {}
    for i, name in enumerate(SPLITS):
        part = table.filter(pa.array(assignment == i))
        if part.num_rows == 0:
            raise ConfigError(
                f"Split '{name}' would be empty ({table.num_rows} papers in all, preprocess.split.{name}={fractions[name]}). "
                "Raise that fraction or use more papers."
            )
        splits[name] = part.take(pc.sort_indices(part, [("arxiv_id", "ascending")]))
    funnel["kept"] = table.num_rows
    return splits, funnel


def _subject_counts(table: pa.Table) -> dict[str, int]:
    vc = pc.value_counts(table.column("primary_subject")).to_pylist()
    return dict(sorted(((d["values"], d["counts"]) for d in vc), key=lambda kv: (-kv[1], kv[0])))


# --------------------------------------------------------------------------------------------------- run
def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the stage: returns the output folder, the counts per split and the row funnel."""
    validate(cfg)
    started = time.perf_counter()
    splits, funnel = build(cfg)
    out_dir = Path(cfg.paths.processed_dir)
    manifest: dict[str, Any] = {
        "stage": "preprocess",
        "source": to_plain(cfg.data),
        "config": to_plain(cfg.preprocess),
        "seed": cfg.seed,
        "funnel": funnel,
        "splits": {},
    }
    with atomic_dir(out_dir) as tmp:
        for name, part in splits.items():
            path = write_parquet(part, tmp / f"{name}.parquet")
            manifest["splits"][name] = {
                "file": path.name,
                "rows": part.num_rows,
                "sha256": file_sha256(path),
                "subjects": _subject_counts(part),
            }
        all_subjects = sorted(set().union(*(m["subjects"] for m in manifest["splits"].values())))
        manifest["num_subjects"] = len(all_subjects)
        write_json(tmp / MANIFEST, manifest)
    rows = ", ".join(f"{k} {v['rows']:,}" for k, v in manifest["splits"].items())
    seconds = time.perf_counter() - started
    logger.success(
        f"preprocess: {funnel['loaded']:,} rows -> {funnel['kept']:,} papers in {manifest['num_subjects']} subjects "
        f"({rows}) written to {out_dir} in {seconds:.1f}s."
    )
    return {"dir": out_dir, "counts": {k: v["rows"] for k, v in manifest["splits"].items()}, "funnel": funnel}


def split_path(cfg: DictConfig, split: str) -> Path:
    """Path of a processed split, with an error naming the command that makes it when it is missing."""
    path = Path(cfg.paths.processed_dir) / f"{split}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"Processed data not found at {path}; run 'uv run inv preprocess' first.")
    return path


def _outputs(cfg: DictConfig) -> list[Path]:
    d = Path(cfg.paths.processed_dir)
    return [d / f"{s}.parquet" for s in SPLITS] + [d / MANIFEST]


def _inputs(cfg: DictConfig) -> list[Path]:
    if cfg.data.source == "hf":
        return []  # the dataset name and revision are in the config fingerprint
    from arxiv_embeddings.data import SAMPLE_PATH

    import glob

    path = str(cfg.data.path or SAMPLE_PATH)
    return [Path(p) for p in sorted(glob.glob(path))] or [Path(path)]


SPEC = StageSpec(
    name="preprocess",
    run=run,
    inputs=_inputs,
    outputs=_outputs,
    stamp_dir=lambda cfg: Path(cfg.paths.processed_dir),
    validate=validate,
)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="preprocess")
def main(cfg: DictConfig) -> None:
    from arxiv_embeddings.stage import cli_main

    cli_main(SPEC, cfg)


if __name__ == "__main__":
    main()

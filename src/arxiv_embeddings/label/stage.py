"""The label stage: ``validate(cfg)``, ``run(cfg)``, its :class:`~arxiv_embeddings.runner.StageSpec` and the
``@hydra.main`` entry point of ``python -m arxiv_embeddings.label``."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from loguru import logger
from omegaconf import DictConfig

from arxiv_embeddings.config import (
    CONFIG_DIR,
    ConfigError,
    check_missing,
    choose,
    require,
    require_http_url,
    require_in,
    to_plain,
)
from arxiv_embeddings.io import artifact_path, atomic_dir, file_sha256, is_remote, read_parquet, write_json
from arxiv_embeddings.label.candidates import ScoringError, sample_candidates
from arxiv_embeddings.label.csv_import import CSV_HEADER, PAIR_TYPE, PAPER_COLUMNS, SOURCES, csv_splits
from arxiv_embeddings.label.scorers import SCORERS, build_scorer
from arxiv_embeddings.layout import MANIFEST_FILE, pair_meta_file, processed_split, split_file
from arxiv_embeddings.pair_format import PAIR_SPLITS, SAMPLING, write_pairs
from arxiv_embeddings.runner import StageSpec, folder_files
from arxiv_embeddings.texts import TEXT_FIELDS


def _paper_splits(cfg: DictConfig) -> tuple[dict[str, tuple[pa.Table, pa.Table]], dict[str, Any]]:
    from arxiv_embeddings.layout import split_path

    lab, cand = cfg.label, cfg.label.candidates
    scorer = build_scorer(cfg)
    splits: dict[str, tuple[pa.Table, pa.Table]] = {}
    stats: dict[str, Any] = {}
    for i, (split, key) in enumerate(PAIR_SPLITS.items()):
        n = int(cand[key])
        if n <= 0:
            continue
        papers = read_parquet(split_path(cfg, split), columns=PAPER_COLUMNS)
        rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), i]))
        candidates = sample_candidates(
            papers, n, rng, float(cand.same_subject_fraction), str(cand.sampling), str(lab.text)
        )
        scores = np.asarray(scorer.score(candidates), dtype=np.float32)
        failed = np.isnan(scores)
        limit = float(lab.llm.max_failed_fraction) if lab.scorer == "llm" else 0.0
        if failed.mean() > limit:
            raise ScoringError(
                f"{int(failed.sum()):,} of {n:,} {split} pairs could not be scored by {scorer.description} (more "
                f"than label.llm.max_failed_fraction={limit:g}); see the warnings above. Scores received are kept in "
                "the cache, so a re-run requests only the missing pairs."
            )
        if failed.any():
            logger.warning(f"{split}: {int(failed.sum()):,} unscored pair(s) left out.")
        keep = ~failed
        left, right = candidates.left[keep], candidates.right[keep]
        values = candidates.text_values()
        table = pa.table(
            {
                "sentence1": pa.DictionaryArray.from_arrays(pa.array(left.astype(np.int32)), values),
                "sentence2": pa.DictionaryArray.from_arrays(pa.array(right.astype(np.int32)), values),
                "score": pa.array(scores[keep], pa.float32()),
            }
        )
        ids, subjects = papers.column("arxiv_id"), papers.column("primary_subject")
        meta = pa.table(
            {
                "a_id": pc.take(ids, pa.array(left)),
                "a_subject": pc.take(subjects, pa.array(left)),
                "b_id": pc.take(ids, pa.array(right)),
                "b_subject": pc.take(subjects, pa.array(right)),
            }
        )
        splits[split] = (table, meta)
        stats[split] = {k: v for k, v in scorer.stats.items() if v}
        logger.info(f"{split}: {table.num_rows:,} pairs scored by {scorer.description}, mean {np.nanmean(scores):.3f}.")
    return splits, {"source": "papers", "scorer": scorer.description, "scorer_stats": stats}


def validate(cfg: DictConfig) -> None:
    check_missing(cfg)
    lab = cfg.label
    require_in("label.source", lab.source, SOURCES)
    require_in("label.text", lab.text, TEXT_FIELDS)
    if lab.source == "csv":
        require(
            lab.csv.path is not None, "label.csv.path", "set it to the CSV of scored pairs, e.g. label.csv.path=x.csv."
        )
        require(
            0 <= float(lab.csv.eval_fraction) < 1,
            "label.csv.eval_fraction",
            f"got {lab.csv.eval_fraction}; must be in [0, 1).",
        )
        if not Path(str(lab.csv.path)).is_file():
            raise FileNotFoundError(f"label.csv.path={lab.csv.path}: no such file.")
        return
    cand = lab.candidates
    require(int(cand.num_train) > 0, "label.candidates.num_train", f"got {cand.num_train}; must be positive.")
    require(int(cand.num_eval) >= 0, "label.candidates.num_eval", f"got {cand.num_eval}; must be >= 0.")
    require(
        0 <= float(cand.same_subject_fraction) <= 1,
        "label.candidates.same_subject_fraction",
        f"got {cand.same_subject_fraction}; must be in [0, 1].",
    )
    require_in("label.candidates.sampling", cand.sampling, SAMPLING)
    choose("label.scorer", str(lab.scorer), SCORERS)
    if lab.scorer == "cross_encoder":
        require(
            lab.cross_encoder.model is not None,
            "label.cross_encoder.model",
            "set it to a CrossEncoder folder or Hub name, e.g. label.cross_encoder.model=cross-encoder/stsb-roberta-base.",
        )
    if lab.scorer == "llm":
        _validate_llm(lab.llm)


def _validate_llm(c: DictConfig) -> None:
    require_http_url(c.base_url, "label.llm.base_url")
    if c.api_key_env and not os.environ.get(str(c.api_key_env)):
        raise ConfigError(
            f"label.llm.api_key_env: the environment variable {c.api_key_env} is not set. Export the API key in it, "
            "or set label.llm.api_key_env=null for a server that needs no key."
        )
    require(int(c.concurrency) >= 1, "label.llm.concurrency", f"got {c.concurrency}; must be >= 1.")
    require(int(c.max_retries) >= 0, "label.llm.max_retries", f"got {c.max_retries}; must be >= 0.")
    require(float(c.timeout_s) > 0, "label.llm.timeout_s", f"got {c.timeout_s}; must be > 0.")
    require(
        0 <= float(c.max_failed_fraction) < 1,
        "label.llm.max_failed_fraction",
        f"got {c.max_failed_fraction}; must be in [0, 1).",
    )
    require(
        not is_remote(str(c.cache)),
        "label.llm.cache",
        f"{c.cache} is in a bucket; the cache is appended to after every score, so it must be a local file.",
    )


def _write(cfg: DictConfig, splits: dict[str, tuple[pa.Table, pa.Table]], info: dict[str, Any]) -> Path:
    out_dir = artifact_path(cfg.paths.labels_dir)
    files: dict[str, dict[str, Any]] = {}
    with atomic_dir(out_dir) as tmp:
        for split, (table, meta) in splits.items():
            write_pairs(meta, tmp / pair_meta_file(split))
            files[split] = {
                "file": split_file(split),
                "meta": pair_meta_file(split),
                "rows": table.num_rows,
                "sha256": file_sha256(write_pairs(table, tmp / split_file(split))),
            }
        manifest = {
            "stage": "label",
            "type": PAIR_TYPE,
            "columns": list(CSV_HEADER),
            # The train stage reads config.text: the kind of paper text its evaluators use.
            "config": to_plain(cfg.label),
            "seed": cfg.seed,
            **info,
            "files": files,
        }
        write_json(tmp / MANIFEST_FILE, manifest)
    return out_dir


def run(cfg: DictConfig) -> dict[str, Any]:
    """Score candidate pairs (or import a CSV of scored pairs) and write them as graded pairs; returns the output
    folder, the pair counts and, for a scorer, its statistics."""
    validate(cfg)
    started = time.perf_counter()
    splits, info = csv_splits(cfg) if cfg.label.source == "csv" else _paper_splits(cfg)
    out_dir = _write(cfg, splits, info)
    counts = {split: table.num_rows for split, (table, _) in splits.items()}
    scores = np.concatenate([table.column("score").to_numpy() for table, _ in splits.values()])
    origin = f"from {info['csv']}" if info["source"] == "csv" else f"scored by {info['scorer']}"
    totals: dict[str, int] = {}
    for split_stats in info.get("scorer_stats", {}).values():
        for k, v in split_stats.items():
            totals[k] = totals.get(k, 0) + v
    calls = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in totals.items())
    logger.success(
        f"label: {', '.join(f'{k} {v:,}' for k, v in counts.items())} graded pairs {origin} "
        f"(score mean {scores.mean():.3f}, {np.mean(scores >= 0.5):.0%} >= 0.5{'; ' + calls if calls else ''}) "
        f"written to {out_dir} in {time.perf_counter() - started:.1f}s."
    )
    return {"dir": out_dir, "type": PAIR_TYPE, "counts": counts, **info}


def _inputs(cfg: DictConfig) -> list[Path]:
    if cfg.label.source == "csv":
        return [Path(str(cfg.label.csv.path))]
    return [processed_split(cfg, s) for s in PAIR_SPLITS]


SPEC = StageSpec(
    name="label",
    run=run,
    inputs=_inputs,
    outputs=lambda cfg: folder_files(cfg.paths.labels_dir),
    stamp_dir=lambda cfg: artifact_path(cfg.paths.labels_dir),
    validate=validate,
    config_keys=("label", "seed"),
)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="label")
def main(cfg: DictConfig) -> None:
    from arxiv_embeddings.runner import cli_main

    cli_main(SPEC, cfg)

"""evaluate: score a sentence-transformers model on the test split and write metrics.json, report.md and plots.

    uv run inv evaluate --overrides "evaluate.model=my-run"            # models/my-run/final
    uv run inv evaluate --overrides "evaluate.model=sentence-transformers/all-MiniLM-L6-v2"

Four views of the same test embeddings: subject retrieval (each test paper against the other test papers,
relevant = same primary subject), title -> abstract retrieval, a logistic-regression probe fit on (a seeded
sample of) the train split, and k-means clustering. The scoring functions take vectors, not a model, so the
TF-IDF baseline goes through exactly the same code (see :mod:`arxiv_embeddings.baseline`).

With ``paths=gcs`` the splits are read from the bucket, a run's model is copied from the bucket to
``${paths.cache_dir}`` (once per content) to be loaded, and the report folder is published to the bucket.

The scoring itself lives in :mod:`arxiv_embeddings.evaluation`, shared with the baselines.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
from loguru import logger
from omegaconf import DictConfig

from arxiv_embeddings.backends.loading import model_files
from arxiv_embeddings.config import (
    CONFIG_DIR,
    check_missing,
    require_model_name,
)
from arxiv_embeddings.evaluation.data import fresh_inputs, load_data
from arxiv_embeddings.evaluation.scoring import evaluate_model, summary_line
from arxiv_embeddings.evaluation.settings import (
    check_report_name,
    local_model_dir,
    model_source,
    report_dir,
    report_files,
    report_name,
    validate_evaluation,
)
from arxiv_embeddings.layout import processed_split
from arxiv_embeddings.runner import StageSpec


def validate(cfg: DictConfig) -> None:
    """Check the config before any work, naming the offending key."""
    check_missing(cfg)
    require_model_name(cfg.evaluate.model, "evaluate.model")
    validate_evaluation(cfg)
    check_report_name(report_name(cfg), "evaluate.report_name")


# --------------------------------------------------------------------------------------------------- run
def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the stage: returns the report folder, the metrics and the files written."""
    validate(cfg)
    started = time.perf_counter()
    model_source(cfg)  # fail on a missing model before reading any data
    data = load_data(cfg)
    result = evaluate_model(cfg, str(cfg.evaluate.model), report_name(cfg), data)
    logger.success(f"evaluate: {summary_line(result)}; wrote {result['dir']} in {time.perf_counter() - started:.1f}s.")
    return result


def _inputs(cfg: DictConfig) -> list[Path]:
    model_dir = local_model_dir(cfg)
    return [
        *(model_files(model_dir) if model_dir is not None else []),
        processed_split(cfg, "test"),
        processed_split(cfg, "train"),
        *fresh_inputs(cfg),
    ]


SPEC = StageSpec(
    name="evaluate",
    run=run,
    inputs=_inputs,
    outputs=lambda cfg: report_files(report_dir(cfg)),
    stamp_dir=lambda cfg: report_dir(cfg),
    validate=validate,
    config_keys=("evaluate", "seed"),
)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from arxiv_embeddings.runner import cli_main

    cli_main(SPEC, cfg)


if __name__ == "__main__":
    main()

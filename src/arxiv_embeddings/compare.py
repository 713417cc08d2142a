"""compare: every run's report side by side, with each run's gains over zero-shot and their intervals.

    uv run inv compare                                     # reports/comparison.md from every reports/<run>/
    python -m arxiv_embeddings.compare paths.reports_dir=results

It reads the ``metrics.json`` that evaluate and baseline wrote under ``paths.reports_dir`` and writes
``comparison.md`` there (:func:`arxiv_embeddings.report.compare`); the reference run and the bootstrap settings come
from the baseline config (``baseline.zero_shot.name``, ``evaluate.bootstrap``).
"""

from __future__ import annotations

import sys

import hydra
from loguru import logger
from omegaconf import DictConfig

from arxiv_embeddings.config import CONFIG_DIR
from arxiv_embeddings.report import compare


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="baseline")
def main(cfg: DictConfig) -> None:
    """``python -m arxiv_embeddings.compare [paths.reports_dir=...]``: the comparison of every report."""
    from arxiv_embeddings.logging_utils import setup_logging

    setup_logging()
    try:
        boot = cfg.evaluate.bootstrap
        compare(
            cfg.paths.reports_dir,
            reference=str(cfg.baseline.zero_shot.name),
            resamples=int(boot.resamples),
            confidence=float(boot.confidence),
        )
    except FileNotFoundError as err:
        logger.error(str(err))
        sys.exit(2)


if __name__ == "__main__":
    main()

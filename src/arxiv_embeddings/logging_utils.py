"""Loguru set-up, done once by each entry point (library modules only import ``logger``)."""

from __future__ import annotations

import os
import sys

from loguru import logger


def setup_logging(level: str | None = None, json_logs: bool | None = None) -> None:
    """Configure loguru for a command-line entry point.

    ``LOG_LEVEL`` and ``LOG_JSON=1`` in the environment override the defaults, so containers can ask for
    machine-readable logs without a code change.
    """
    level = level or os.environ.get("LOG_LEVEL", "INFO")
    if json_logs is None:
        json_logs = os.environ.get("LOG_JSON", "").lower() in {"1", "true", "yes"}
    logger.remove()
    if json_logs:
        logger.add(sys.stderr, level=level, serialize=True)
    else:
        logger.add(
            sys.stderr,
            level=level,
            format="<green>{time:HH:mm:ss}</green> <level>{level: <7}</level> <cyan>{name}</cyan> | {message}",
        )

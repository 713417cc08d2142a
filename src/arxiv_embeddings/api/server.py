"""Run the API under uvicorn with the settings' host, port, logging and graceful shutdown.

uvicorn handles SIGTERM (what Cloud Run sends before stopping a container) and SIGINT: it stops accepting
connections, lets in-flight requests finish for up to ``serve.shutdown_timeout_s``, then runs the app's lifespan
shutdown, which finishes the texts already queued for the model. The process then exits with status 0.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from loguru import logger

from arxiv_embeddings.config import ConfigError

USAGE = """usage: python -m arxiv_embeddings.api [HYDRA OVERRIDES...]

Serve the embedding API with configs/serve.yaml (section serve: of configs/base.yaml), e.g.
  python -m arxiv_embeddings.api serve.port=9000 serve.model_path=models/my-run/final
Environment variables override the config: MODEL_PATH, INDEX_PATH, PORT, HOST, API_KEY, API_KEY_FILE, LOG_JSON,
LOG_LEVEL, BACKEND, VARIANT, DEVICE, and SERVE_<KEY> for any key of serve:.
"""

# The standard library's level for each loguru level (uvicorn logs through the standard library; 5 = its TRACE).
_STD_LEVELS = {"TRACE": 5, "DEBUG": 10, "INFO": 20, "SUCCESS": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
# Cloud Logging reads `severity`; loguru's level names map onto its values.
_SEVERITY = {"TRACE": "DEBUG", "DEBUG": "DEBUG", "INFO": "INFO", "SUCCESS": "NOTICE", "WARNING": "WARNING"}


def _json_sink(message: Any) -> None:
    record = message.record
    entry = {
        "severity": _SEVERITY.get(record["level"].name, record["level"].name),
        "message": record["message"],
        "time": record["time"].isoformat(),
        "logger": record["name"],
        "function": record["function"],
        "line": record["line"],
    }
    if record["exception"] is not None:
        entry["exception"] = "".join(_format_exception(record["exception"]))
    sys.stderr.write(json.dumps(entry, default=str) + "\n")
    sys.stderr.flush()


def _format_exception(exc: Any) -> list[str]:
    import traceback

    return traceback.format_exception(exc.type, exc.value, exc.traceback)


class _InterceptHandler(logging.Handler):
    """Send the standard library's records (uvicorn's) to loguru, so every line has one format."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(exception=record.exc_info, depth=6).log(level, record.getMessage())


def setup_server_logging(level: str, json_logs: bool) -> None:
    """loguru to stderr (JSON lines for Cloud Logging when ``json_logs``), with uvicorn's loggers routed into it."""
    logger.remove()
    if json_logs:
        logger.add(_json_sink, level=level)
    else:
        logger.add(
            sys.stderr,
            level=level,
            format="<green>{time:HH:mm:ss}</green> <level>{level: <7}</level> <cyan>{name}</cyan> | {message}",
        )
    # Not level 0: uvicorn wraps the app in a per-message logger when its loggers are at TRACE.
    logging.basicConfig(handlers=[_InterceptHandler()], level=_STD_LEVELS.get(level, 20), force=True)
    logging.captureWarnings(True)  # library warnings become log records too (one JSON object per line)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        std = logging.getLogger(name)
        std.handlers = [_InterceptHandler()]
        std.propagate = False


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m arxiv_embeddings.api``; exits 2 on a configuration error."""
    import uvicorn

    from arxiv_embeddings.api.app import create_app
    from arxiv_embeddings.api.settings import Settings

    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return
    try:
        settings = Settings.load(args)
        setup_server_logging(settings.log_level, settings.log_json)
        app = create_app(settings)
    except ConfigError as err:
        setup_server_logging("INFO", json_logs=False)
        logger.error(str(err))
        sys.exit(2)
    except Exception as err:  # a bad Hydra override
        setup_server_logging("INFO", json_logs=False)
        logger.error(f"Cannot start the server: {err}")
        sys.exit(2)
    logger.info(f"Serving on http://{settings.host}:{settings.port} (docs at /docs, metrics at /metrics).")
    # uvicorn handles SIGTERM/SIGINT itself, then re-raises the signal to the handler it found; with this one in
    # place the process exits with status 0 after a graceful shutdown instead of dying by the signal.
    received: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: received.append(signum))
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=_STD_LEVELS.get(settings.log_level, 20),
        access_log=settings.access_log,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout_s)),
        proxy_headers=True,
        forwarded_allow_ips="*",
    )
    if received:
        logger.info(f"Stopped on {signal.Signals(received[0]).name} after a graceful shutdown.")

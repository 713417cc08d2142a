"""Running a stage: validate, skip when nothing changed since the last success, record the run.

Each stage writes a stamp (``.stage-<name>.json``) beside its outputs after it succeeds. The stamp holds a
fingerprint of the stage's resolved config and of the bytes of its inputs, and the hashes of its outputs. The next
run of the stage is skipped when the fingerprint is the same and the outputs are still there, unchanged. Because a
stage's inputs are the previous stage's outputs, changing one config value re-runs that stage and, through the
changed bytes, only the stages downstream of it.

Paths may be local or in a bucket (``paths=gcs``): inputs, outputs and stamps go through :mod:`arxiv_embeddings.io`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger
from omegaconf import DictConfig

from arxiv_embeddings.config import to_plain
from arxiv_embeddings.io import artifact_path, exists, read_json, tree_sha256, write_json

# Keys that do not change what a stage produces.
_IGNORED_KEYS = ("force", "hydra", "logging", "task_name")


@dataclass(frozen=True)
class StageSpec:
    """What the runner needs to know about a stage."""

    name: str
    run: Callable[[DictConfig], dict[str, Any]]
    inputs: Callable[[DictConfig], Sequence[Path]]
    outputs: Callable[[DictConfig], Sequence[Path]]
    stamp_dir: Callable[[DictConfig], Path]
    validate: Callable[[DictConfig], None]
    # Top-level config sections the stage reads; only these enter its fingerprint, so changing another stage's
    # settings does not re-run it. None = every section.
    config_keys: tuple[str, ...] | None = None


def fingerprint(cfg: DictConfig, inputs: Sequence[Path], keys: Sequence[str] | None = None) -> str:
    """Hash of the resolved config (the ``keys`` sections, or all but bookkeeping keys) and the inputs' bytes."""
    plain = {k: v for k, v in to_plain(cfg).items() if k not in _IGNORED_KEYS and (keys is None or k in keys)}
    mix = plain.get("mix")
    if isinstance(mix, dict) and isinstance(mix.get("tasks"), dict):  # a dropped task (null) is no task at all
        plain["mix"] = {**mix, "tasks": {k: v for k, v in mix["tasks"].items() if v is not None}}
    digest = hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode())
    for path in sorted(map(str, inputs)):
        digest.update(path.encode())
        digest.update(tree_sha256(path).encode() if exists(path) else b"<missing>")
    return digest.hexdigest()


def stamp_path(spec: StageSpec, cfg: DictConfig) -> Path:
    return spec.stamp_dir(cfg) / f".stage-{spec.name}.json"


def is_up_to_date(spec: StageSpec, cfg: DictConfig) -> bool:
    """True when the last successful run had the same fingerprint and its outputs are intact."""
    path = stamp_path(spec, cfg)
    if not exists(path):
        return False
    try:
        stamp = read_json(path)
    except (OSError, ValueError):
        return False
    if stamp.get("fingerprint") != fingerprint(cfg, spec.inputs(cfg), spec.config_keys):
        return False
    outputs = stamp.get("outputs", {})
    return bool(outputs) and all(exists(p) and tree_sha256(p) == h for p, h in outputs.items())


def execute(spec: StageSpec, cfg: DictConfig, force: bool = False) -> dict[str, Any] | None:
    """Validate ``cfg``, then run the stage unless it is up to date. Returns the result, or None when skipped."""
    spec.validate(cfg)
    if not force and is_up_to_date(spec, cfg):
        logger.info(
            f"{spec.name}: inputs and config unchanged since the last successful run; skipping "
            "(pass --force, or force=true, to run it anyway)."
        )
        return None
    started = time.perf_counter()
    # The fingerprint is taken before the run so that inputs changed while it runs trigger the next run.
    fp = fingerprint(cfg, spec.inputs(cfg), spec.config_keys)
    result = spec.run(cfg)
    if int(os.environ.get("RANK", "0")) != 0:  # in a distributed run only the main process records the stage
        return result
    write_json(
        stamp_path(spec, cfg),
        {
            "stage": spec.name,
            "fingerprint": fp,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "seconds": round(time.perf_counter() - started, 2),
            "outputs": {str(p): tree_sha256(p) for p in spec.outputs(cfg)},
        },
    )
    return result


def cli_main(spec: StageSpec, cfg: DictConfig) -> None:
    """Body of every stage's ``@hydra.main``: logging, the skip check, and a clean exit on a user error."""
    import sys

    from arxiv_embeddings.config import ConfigError
    from arxiv_embeddings.logging_utils import setup_logging

    setup_logging()
    try:
        from hydra.core.hydra_config import HydraConfig

        logger.add(Path(HydraConfig.get().runtime.output_dir) / f"{spec.name}.log", level="DEBUG")
    except ValueError:  # not running under @hydra.main
        pass
    try:
        execute(spec, cfg, force=bool(cfg.get("force", False)))
    except (ConfigError, FileNotFoundError) as err:
        logger.error(str(err))
        sys.exit(2)


def folder_files(folder: str | Path) -> list[Path]:
    """The files a stage wrote into ``folder`` (a local path or a bucket URL), its stamp and other hidden files left
    out: the outputs of a stage whose output is a whole folder."""
    return sorted((p for p in artifact_path(folder).glob("*") if not p.name.startswith(".")), key=str)

"""Vertex AI jobs: render a CustomJob spec from configs/vertex/ and submit it with gcloud.

    uv run inv vertex-train --overrides "vertex=multi_gpu paths=gcs paths.bucket=my-bucket trainer.max_steps=2000"
    uv run inv vertex-train --dry-run --overrides "..."      # print the spec and the gcloud command only
    uv run inv vertex-index --dry-run --overrides "vertex=cpu vertex.replica_count=4 paths=gcs ..."   # a sharded index
    python -m arxiv_embeddings.vertex_jobs [--index] [--dry-run] [OVERRIDES...]

An index job (``--index``) runs :mod:`arxiv_embeddings.index_launcher` on each machine: machine k of N embeds its
share of the corpus into the bucket, and the first one builds the index once every share is there.

Overrides of the ``vertex`` group (``vertex=multi_gpu``, ``vertex.machine_type=...``) shape the job; every other
override is passed to the container as an argument, i.e. as a Hydra override of the train stage, so the job trains
exactly what ``uv run inv train --overrides "<the same>"`` would train locally. The container is the train image
(dockerfiles/train.dockerfile), whose entry point starts one process per GPU (:mod:`arxiv_embeddings.train_launcher`).

The job's disk is discarded when it ends, so its artifacts must be in a bucket (``paths=gcs``); the pairs are read
from there and the model is written there. The W&B key is never part of the spec: name a Secret Manager secret
with ``vertex.wandb_secret`` and the container reads it at start-up.
"""

from __future__ import annotations

import copy
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loguru import logger
from omegaconf import DictConfig

from arxiv_embeddings.config import ConfigError, compose, require, to_plain

GROUP = "vertex"
SCHEDULING_STRATEGIES = ("STANDARD", "SPOT")
BOOT_DISK_TYPES = ("pd-ssd", "pd-standard", "hyperdisk-balanced")


def override_key(override: str) -> str:
    """The config key an override sets: ``vertex.machine_type=x`` -> ``vertex.machine_type``, ``+a=b`` -> ``a``."""
    return override.split("=", 1)[0].lstrip("+~")


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(job overrides, train overrides)``: those of the vertex group, and the container's arguments."""
    job: list[str] = []
    train: list[str] = []
    for override in overrides:
        key = override_key(override)
        (job if key == GROUP or key.startswith(f"{GROUP}.") else train).append(override)
    return job, train


def gcloud_project() -> str | None:
    """gcloud's configured project, or None (no gcloud, or no project set)."""
    if shutil.which("gcloud") is None:
        return None
    try:
        out = subprocess.run(
            ["gcloud", "config", "get-value", "project"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = out.stdout.strip()
    return value if out.returncode == 0 and value and value != "(unset)" else None


def resolve_project(cfg: DictConfig) -> str:
    project = cfg.vertex.project or gcloud_project()
    if not project:
        raise ConfigError(
            "vertex.project is not set: pass vertex.project=<project id>, export GOOGLE_CLOUD_PROJECT, or run "
            "'gcloud config set project <project id>'."
        )
    return str(project)


def image_uri(cfg: DictConfig, project: str) -> str:
    v = cfg.vertex
    if v.image_uri:
        return str(v.image_uri)
    return f"{v.region}-docker.pkg.dev/{project}/{v.repository}/train:{v.image_tag}"


#: What a job runs: the train stage (the train image's entry point), or the index stage split over the job's
#: machines (:mod:`arxiv_embeddings.index_launcher`, in the same image).
JOBS = ("train", "index")
INDEX_COMMAND = ["python", "-m", "arxiv_embeddings.index_launcher"]


def validate(cfg: DictConfig, job: str = "train") -> None:
    """Check the job settings, naming the offending key."""
    v = cfg.vertex
    for key in ("region", "machine_type", "display_name", "timeout"):
        require(bool(v[key]), f"vertex.{key}", "must be set.")
    require(
        isinstance(v.accelerator_count, int) and v.accelerator_count >= 0,
        "vertex.accelerator_count",
        f"got {v.accelerator_count!r}; use the number of GPUs per machine (0 = none).",
    )
    if v.accelerator_count > 0:
        require(
            bool(v.accelerator_type),
            "vertex.accelerator_type",
            f"vertex.accelerator_count={v.accelerator_count} needs a GPU type, e.g. NVIDIA_L4.",
        )
    else:
        require(
            not v.accelerator_type,
            "vertex.accelerator_count",
            f"is 0 but vertex.accelerator_type={v.accelerator_type}; set the count or accelerator_type=null.",
        )
    require(
        isinstance(v.replica_count, int) and v.replica_count >= 1,
        "vertex.replica_count",
        f"got {v.replica_count!r}; use the number of machines (1 or more).",
    )
    require(
        str(v.timeout).endswith("s") and str(v.timeout)[:-1].isdigit(),
        "vertex.timeout",
        f"got {v.timeout!r}; write a duration in seconds such as 86400s.",
    )
    if v.scheduling_strategy not in SCHEDULING_STRATEGIES:
        raise ConfigError(
            f"vertex.scheduling_strategy={v.scheduling_strategy!r} is not valid; choose one of: "
            f"{', '.join(SCHEDULING_STRATEGIES)}."
        )
    if v.boot_disk_type not in BOOT_DISK_TYPES:
        raise ConfigError(
            f"vertex.boot_disk_type={v.boot_disk_type!r} is not valid; choose one of: {', '.join(BOOT_DISK_TYPES)}."
        )
    if v.wandb_secret is not None:
        require(
            str(v.wandb_secret).startswith("projects/") and "/secrets/" in str(v.wandb_secret),
            "vertex.wandb_secret",
            f"got {v.wandb_secret!r}; use projects/<project>/secrets/<name>/versions/latest.",
        )
    from arxiv_embeddings.layout import PAIR_SOURCES, pair_source

    if job == "index":
        keys = ("processed_dir", "models_dir", "indexes_dir")  # the corpus, the model, the shards and the index
    else:
        keys = ("processed_dir", PAIR_SOURCES[pair_source(cfg)][0], "models_dir")
    for key in keys:
        location = str(cfg.paths[key])
        require(
            location.startswith("gs://"),
            f"paths.{key}",
            f"is {location!r}, on the job's own disk, which is discarded when the job ends. Keep the artifacts in "
            "a bucket: add 'paths=gcs paths.bucket=<bucket>' to the overrides (and run preprocess and pairs with "
            "the same overrides first).",
        )


def _env(cfg: DictConfig) -> list[dict[str, str]]:
    v = cfg.vertex
    env = {"NPROC_PER_NODE": str(max(1, int(v.accelerator_count))), "PYTHONUNBUFFERED": "1"}
    if v.wandb_secret:
        env["WANDB_API_KEY_SECRET"] = str(v.wandb_secret)
    for name, value in (to_plain(v.env) or {}).items():
        if str(name) == "WANDB_API_KEY":
            raise ConfigError(
                "vertex.env.WANDB_API_KEY would put the key in the job spec; name a Secret Manager secret with "
                "vertex.wandb_secret instead."
            )
        env[str(name)] = str(value)
    return [{"name": k, "value": val} for k, val in env.items()]


def job_spec(
    cfg: DictConfig, train_overrides: Sequence[str], project: str, command: Sequence[str] | None = None
) -> dict[str, Any]:
    """The CustomJobSpec ``gcloud ai custom-jobs create --config`` reads: one worker pool per machine role.
    ``command`` replaces the image's entry point (the index job's launcher)."""
    v = cfg.vertex
    machine: dict[str, Any] = {"machineType": str(v.machine_type)}
    if v.accelerator_count > 0:
        machine |= {"acceleratorType": str(v.accelerator_type), "acceleratorCount": int(v.accelerator_count)}
    pool: dict[str, Any] = {
        "machineSpec": machine,
        "replicaCount": 1,
        "diskSpec": {"bootDiskType": str(v.boot_disk_type), "bootDiskSizeGb": int(v.boot_disk_size_gb)},
        "containerSpec": {"imageUri": image_uri(cfg, project), "args": list(train_overrides), "env": _env(cfg)},
    }
    if command is not None:
        pool["containerSpec"]["command"] = list(command)
    pools = [pool]
    if v.replica_count > 1:  # the chief is pool 0 (one machine), the other machines pool 1
        pools.append({**copy.deepcopy(pool), "replicaCount": int(v.replica_count) - 1})
    spec: dict[str, Any] = {
        "workerPoolSpecs": pools,
        "scheduling": {
            "timeout": str(v.timeout),
            "restartJobOnWorkerRestart": bool(v.restart_job_on_worker_restart),
        },
    }
    if v.scheduling_strategy != "STANDARD":
        spec["scheduling"]["strategy"] = str(v.scheduling_strategy)
    if v.service_account:
        spec["serviceAccount"] = str(v.service_account)
    return spec


def gcloud_command(cfg: DictConfig, spec_file: Path | str, project: str) -> list[str]:
    v = cfg.vertex
    return [
        "gcloud",
        "ai",
        "custom-jobs",
        "create",
        f"--project={project}",
        f"--region={v.region}",
        f"--display-name={v.display_name}",
        f"--config={spec_file}",
    ]


def render(overrides: Sequence[str], job: str = "train") -> tuple[DictConfig, dict[str, Any], str]:
    """Compose configs/vertex.yaml with ``overrides``; returns the config, the job spec and the project. ``job``:
    ``train`` (the train stage) or ``index`` (the index stage, each machine embedding its share of the corpus)."""
    if job not in JOBS:
        raise ConfigError(f"Unknown job {job!r}; choose one of {', '.join(JOBS)}.")
    _, stage_overrides = split_overrides(overrides)
    cfg = compose("vertex", list(overrides))
    validate(cfg, job)
    # The container composes the stage's config from the same overrides: fail here, not an hour into a job.
    if job == "index":
        from arxiv_embeddings.index.stage import validate as validate_index

        validate_index(compose("index", stage_overrides))
        if any(override_key(o) == "index.part" for o in stage_overrides):
            raise ConfigError("index.part is set on each machine of the job by its launcher; drop it.")
    else:
        from arxiv_embeddings.train.stage import validate as validate_train

        validate_train(compose("train", stage_overrides))
    project = resolve_project(cfg)
    command = INDEX_COMMAND if job == "index" else None
    return cfg, job_spec(cfg, stage_overrides, project, command), project


def submit(overrides: Sequence[str], dry_run: bool = False, job: str = "train") -> dict[str, Any]:
    """Render the job, write its spec under ``${paths.log_dir}/vertex/`` and submit it (or only print it)."""
    import yaml

    cfg, spec, project = render(overrides, job)
    text = yaml.safe_dump(spec, sort_keys=False)
    spec_file = Path(cfg.paths.log_dir) / "vertex" / f"{cfg.vertex.display_name}-{time.strftime('%Y%m%d-%H%M%S')}.yaml"
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(text)
    cmd = gcloud_command(cfg, spec_file, project)
    if dry_run:
        print(text, end="")
        print("# submit with:\n" + shlex.join(cmd))
        return {"spec": spec, "spec_file": spec_file, "command": cmd, "submitted": False}
    if shutil.which("gcloud") is None:
        raise ConfigError("gcloud is not installed; install the Google Cloud CLI or use --dry-run to get the spec.")
    logger.info(f"Submitting {cfg.vertex.display_name} to Vertex AI ({spec_file}).")
    proc = subprocess.run(cmd, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"gcloud ai custom-jobs create failed with exit status {proc.returncode}.")
    return {"spec": spec, "spec_file": spec_file, "command": cmd, "submitted": True}


def main(argv: Sequence[str] | None = None) -> None:
    from arxiv_embeddings.logging_utils import setup_logging

    setup_logging()
    args = list(sys.argv[1:] if argv is None else argv)
    dry_run = "--dry-run" in args
    job = "index" if "--index" in args else "train"
    overrides = [a for a in args if a not in ("--dry-run", "--index")]
    unknown = [a for a in overrides if a.startswith("--")]
    if unknown:
        logger.error(
            f"Unknown option {unknown[0]}; usage: python -m arxiv_embeddings.vertex_jobs [--index] [--dry-run] "
            "[OVERRIDES]"
        )
        sys.exit(2)
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        submit(overrides, dry_run=dry_run, job=job)
    except (ConfigError, HydraException, OmegaConfBaseException) as err:
        logger.error(str(err))
        sys.exit(2)
    except RuntimeError as err:
        logger.error(str(err))
        sys.exit(1)


if __name__ == "__main__":
    main()

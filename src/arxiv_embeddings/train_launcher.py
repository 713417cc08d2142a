"""Entry point of the train image: the train stage with Hydra overrides as arguments, one process per GPU.

    python -m arxiv_embeddings.train_launcher trainer.max_steps=100 logger=wandb     # what the image's ENTRYPOINT runs

The same command runs locally (``docker run --gpus all <image> <overrides>``) and on Vertex AI (the job's
``args:`` are the overrides):

- one GPU or none: ``python -m arxiv_embeddings.train <overrides>``, in place of this process;
- N > 1 GPUs: ``python -m torch.distributed.run --standalone --nproc-per-node N -m arxiv_embeddings.train
  <overrides>``: one DDP process per GPU, the path tests/train/test_train.py runs on two CPU processes;
- several machines (a Vertex AI job with a second worker pool): the same with ``--nnodes``, ``--node-rank`` and the
  address of the first machine, taken from ``MASTER_ADDR``/``MASTER_PORT``/``WORLD_SIZE``/``RANK`` when the platform
  sets them, else from Vertex AI's ``CLUSTER_SPEC``.

GPUs per machine: ``$NPROC_PER_NODE`` (``inv vertex-train`` sets it from ``vertex.accelerator_count``), else the
number torch sees. The W&B key comes from the environment (``WANDB_API_KEY``); on GCP,
``WANDB_API_KEY_SECRET=projects/<p>/secrets/<name>/versions/<v>`` reads it from Secret Manager at start-up with the
job's service account. It is never read from a file in the image or the repository.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from loguru import logger

from arxiv_embeddings.config import ConfigError

STAGE_MODULE = "arxiv_embeddings.train"
SECRET_ENV = "WANDB_API_KEY_SECRET"
SECRET_URL = "https://secretmanager.googleapis.com/v1/{name}:access"
# Worker pools of a Vertex AI job that train: pool 0 (the chief, one machine) and pool 1 (the other machines).
# Pool 2 is a reduction server and pool 3 an evaluator; neither runs the trainer.
TRAINING_POOLS = ("workerpool0", "workerpool1")
DEFAULT_MASTER_PORT = 29500


@dataclass(frozen=True)
class Cluster:
    """Where this machine sits in a multi-machine job."""

    nodes: int
    node_rank: int
    master_addr: str
    master_port: int


def gpus_per_node(env: Mapping[str, str]) -> int:
    """``$NPROC_PER_NODE``, else the number of CUDA devices torch sees (at least 1: one process on the CPU)."""
    value = env.get("NPROC_PER_NODE", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"NPROC_PER_NODE={value!r} is not a positive whole number of processes per machine.")
        return int(value)
    import torch

    return max(1, torch.cuda.device_count())


def cluster_from_env(env: Mapping[str, str]) -> Cluster | None:
    """The multi-machine layout, or None on a single machine."""
    if env.get("MASTER_ADDR") and int(env.get("WORLD_SIZE", "1") or 1) > 1:
        return Cluster(
            nodes=int(env["WORLD_SIZE"]),
            node_rank=int(env.get("RANK", "0") or 0),
            master_addr=env["MASTER_ADDR"],
            master_port=int(env.get("MASTER_PORT", DEFAULT_MASTER_PORT) or DEFAULT_MASTER_PORT),
        )
    spec = env.get("CLUSTER_SPEC")
    if not spec:
        return None
    try:
        parsed = json.loads(spec)
        pools: dict[str, list[str]] = parsed["cluster"]
        task = parsed["task"]
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"CLUSTER_SPEC is not Vertex AI's cluster JSON ({err}): {spec[:200]}") from None
    machines = [addr for pool in TRAINING_POOLS for addr in pools.get(pool, [])]
    if len(machines) <= 1:
        return None
    if task.get("type") not in TRAINING_POOLS:
        raise ConfigError(
            f"CLUSTER_SPEC task type {task.get('type')!r} does not train; expected one of {TRAINING_POOLS}."
        )
    rank = 0 if task["type"] == "workerpool0" else 1 + int(task.get("index", 0))
    host, _, port = pools["workerpool0"][0].rpartition(":")
    return Cluster(nodes=len(machines), node_rank=rank, master_addr=host, master_port=int(port or DEFAULT_MASTER_PORT))


def command(overrides: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """The command that runs the train stage with ``overrides`` on this machine."""
    nproc = gpus_per_node(env)
    cluster = cluster_from_env(env)
    stage = ["-m", STAGE_MODULE, *overrides]
    if nproc == 1 and cluster is None:
        return [sys.executable, *stage]
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if cluster is None:
        return [*launcher, "--standalone", *stage]
    return [
        *launcher,
        f"--nnodes={cluster.nodes}",
        f"--node-rank={cluster.node_rank}",
        f"--master-addr={cluster.master_addr}",
        f"--master-port={cluster.master_port}",
        *stage,
    ]


def read_secret(name: str, session: Any = None) -> str:
    """The latest payload of a Secret Manager secret version (``projects/<p>/secrets/<s>/versions/<v>``), read with
    the machine's default credentials (the job's service account on Vertex AI)."""
    if not name.startswith("projects/") or "/secrets/" not in name:
        raise ConfigError(
            f"{SECRET_ENV}={name!r} is not a secret version name; use projects/<project>/secrets/<name>/versions/latest."
        )
    if "/versions/" not in name:
        name = f"{name}/versions/latest"
    if session is None:
        import google.auth
        from google.auth.transport.requests import AuthorizedSession

        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        session = AuthorizedSession(credentials)
    response = session.get(SECRET_URL.format(name=name), timeout=30)
    if response.status_code != 200:
        raise RuntimeError(
            f"Secret Manager refused {name} (HTTP {response.status_code}): {response.text[:300]}. Grant the job's "
            "service account roles/secretmanager.secretAccessor on the secret."
        )
    return base64.b64decode(response.json()["payload"]["data"]).decode("utf-8").strip()


def child_env(env: Mapping[str, str], session: Any = None) -> dict[str, str]:
    """The environment of the train processes: ``WANDB_API_KEY`` from Secret Manager when only its name is given."""
    out = dict(env)
    if not out.get("WANDB_API_KEY") and out.get(SECRET_ENV):
        out["WANDB_API_KEY"] = read_secret(out[SECRET_ENV], session)
        logger.info(f"W&B key read from Secret Manager ({out[SECRET_ENV]}).")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    from arxiv_embeddings.logging_utils import setup_logging

    setup_logging()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        env = child_env(os.environ)
        cmd = command(args, env)
    except ConfigError as err:
        logger.error(str(err))
        sys.exit(2)
    logger.info("Launching: " + " ".join(cmd))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(cmd[0], cmd, env)


if __name__ == "__main__":
    main()

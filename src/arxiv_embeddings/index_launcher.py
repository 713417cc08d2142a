"""Entry point of an index job on several machines (a Vertex AI job with ``inv vertex-index``): each machine embeds
its share of the corpus, and the first one builds the index once every share is in the bucket.

    python -m arxiv_embeddings.index_launcher paths=gcs paths.bucket=my-bucket index.model=my-run

On one machine (no ``CLUSTER_SPEC``, or a job of one machine) it is the index stage itself. On machine ``k`` of
``N`` (Vertex AI's ``CLUSTER_SPEC``: the chief is 0, the second worker pool 1..N-1) it runs the stage with
``index.part=k/N``, which embeds shards ``k, k + N, ...`` of every output the index needs and copies each to
``${paths.indexes_dir}/.embeddings/`` in the bucket as it finishes. The chief then waits for the other machines'
shards (``index.part_wait_s``) and runs the stage without ``index.part``: it copies them down and builds the index.
A share that never arrives is embedded by the chief itself (the build is resumable), so a lost machine costs time,
not the index.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from loguru import logger

from arxiv_embeddings.config import ConfigError
from arxiv_embeddings.io import is_remote


def replica(env: Mapping[str, str]) -> tuple[int, int]:
    """``(this machine, machines)`` of the job from Vertex AI's ``CLUSTER_SPEC`` (or ``RANK``/``WORLD_SIZE``);
    ``(0, 1)`` on one machine."""
    from arxiv_embeddings.train_launcher import cluster_from_env

    cluster = cluster_from_env(env)
    return (0, 1) if cluster is None else (cluster.node_rank, cluster.nodes)


def wait_for_shards(folders: Sequence[str], shards: int, timeout_s: float, poll_s: float = 30.0) -> bool:
    """True once each of ``folders`` (a bucket URL or a local folder) holds ``shards`` shard files; False after
    ``timeout_s``."""
    from arxiv_embeddings.io import artifact_path

    deadline = time.monotonic() + timeout_s
    while True:
        counts = [len(list(artifact_path(f).glob("shard-*.npy"))) for f in folders]
        if all(c >= shards for c in counts):
            return True
        if time.monotonic() >= deadline:
            logger.warning(
                f"index: after {timeout_s:.0f} s, {min(counts)} of {shards} shards are in the shared folder(s); "
                "building with what is there (the missing shards are embedded here)."
            )
            return False
        logger.info(f"index: {min(counts)} of {shards} shards shared so far; waiting for the other machines.")
        time.sleep(poll_s)


def run(overrides: Sequence[str], env: Mapping[str, str]) -> dict[str, Any] | None:
    """This machine's part of the job; the chief's build result (None on the other machines)."""
    from arxiv_embeddings.config import compose
    from arxiv_embeddings.index import stage as index_stage
    from arxiv_embeddings.runner import execute

    rank, machines = replica(env)
    if machines == 1:
        return execute(index_stage.SPEC, compose("index", list(overrides)))
    if any(o.split("=", 1)[0].lstrip("+~") == "index.part" for o in overrides):
        raise ConfigError("index.part is set by the launcher from the job's machines; drop it from the overrides.")
    cfg = compose("index", [*overrides, f"index.part={rank}/{machines}"])
    if not is_remote(cfg.paths.indexes_dir):
        raise ConfigError(
            f"paths.indexes_dir={cfg.paths.indexes_dir!r} is on this machine's own disk, where the other {machines - 1} "
            "machine(s) of the job cannot leave their shards; keep the indexes in a bucket (paths=gcs "
            "paths.bucket=<bucket>)."
        )
    logger.info(f"index: machine {rank} of {machines}: embedding shards {rank}, {rank + machines}, ...")
    part = index_stage.run(cfg)
    if rank != 0:
        return None
    wait_for_shards(part["shared"], int(part["shards"]), float(cfg.index.part_wait_s))
    return execute(index_stage.SPEC, compose("index", list(overrides)))


def main(argv: Sequence[str] | None = None) -> None:
    import os

    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from arxiv_embeddings.logging_utils import setup_logging

    setup_logging()
    try:
        run(list(sys.argv[1:] if argv is None else argv), os.environ)
    except (ConfigError, FileNotFoundError, HydraException, OmegaConfBaseException) as err:
        logger.error(str(err))
        sys.exit(2)


if __name__ == "__main__":
    main()

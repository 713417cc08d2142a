"""Checkpoints: where they go (local disk, also with the models in a bucket), resuming from the last one, and
:class:`CheckpointUploader`, which copies each to ``<models_dir>/<run>/checkpoints/`` in the bucket in the
background so that a run on a machine that can vanish resumes on the next one (:func:`download_checkpoint`)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, cast

from loguru import logger
from omegaconf import DictConfig

from arxiv_embeddings.io import (
    download_dir,
    exists,
    is_remote,
    publish_dir,
    read_json,
    remove_tree,
    write_json,
)
from arxiv_embeddings.layout import CHECKPOINTS_DIR, run_dir


def checkpoint_to_resume(cfg: DictConfig, ckpt_dir: Path, fp: str) -> str | None:
    """The checkpoint to resume from, per ``train.resume``; checkpoints of another config are set aside."""
    from transformers.trainer_utils import get_last_checkpoint

    mode = str(cfg.train.resume)
    if mode not in ("auto", "never"):
        if not Path(mode).is_dir():
            raise FileNotFoundError(
                f"train.resume={mode} is not a checkpoint folder; use auto, never or a checkpoint-N path."
            )
        return mode
    marker = ckpt_dir / "run.json"
    last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    if last is None:
        return None
    info = read_json(marker) if marker.exists() else {}
    if mode == "auto" and info.get("fingerprint") == fp and not info.get("completed"):
        logger.info(f"Resuming the interrupted run from {last}.")
        return last
    stale = ckpt_dir.with_name(f"{ckpt_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(ckpt_dir, stale)
    logger.info(
        f"Previous checkpoints ({'finished run' if info.get('completed') else 'another config'}) moved to {stale}."
    )
    return None


def model_dir(cfg: DictConfig) -> Path:
    """This run's folder, ``${paths.models_dir}/<run_name>``."""
    return run_dir(cfg, str(cfg.run_name))


def checkpoint_dir(cfg: DictConfig) -> Path:
    """Where the trainer keeps its checkpoints: beside the model, or on local disk
    (``${paths.log_dir}/checkpoints/<run_name>``) when the models are in a bucket, since the trainer writes plain
    files. The final model is published to the bucket, and with ``train.checkpoint_sync`` each checkpoint is copied
    there too (:func:`remote_checkpoint_dir`), so a run resumes on another machine."""
    if is_remote(cfg.paths.models_dir):
        return Path(cfg.paths.log_dir) / CHECKPOINTS_DIR / str(cfg.run_name)
    return model_dir(cfg) / CHECKPOINTS_DIR


def remote_checkpoint_dir(cfg: DictConfig) -> Path | None:
    """Where checkpoints are copied in the bucket, ``<models_dir>/<run_name>/checkpoints``; None when the models
    are on local disk (the checkpoints are there already) or ``train.checkpoint_sync`` is false."""
    if not is_remote(cfg.paths.models_dir) or not cfg.train.checkpoint_sync:
        return None
    return model_dir(cfg) / CHECKPOINTS_DIR


def _step(name: str) -> int:
    return int(name.rsplit("-", 1)[-1])


def upload_checkpoint(local: Path, remote_dir: Path, fp: str, keep: int | None) -> list[str]:
    """Publish the checkpoint folder ``local`` to ``remote_dir/<its name>``, record it in ``remote_dir/run.json``,
    then delete the remote checkpoints beyond the newest ``keep`` (the trainer's ``save_total_limit``; None = keep
    all). Returns the checkpoints kept. A checkpoint enters run.json only once its upload is complete, so a resume
    never picks a half-uploaded one."""
    started = time.perf_counter()
    publish_dir(local, remote_dir / local.name)
    marker = remote_dir / "run.json"
    info = read_json(marker) if exists(marker) else {}
    listed = info.get("checkpoints", []) if info.get("fingerprint") == fp else []
    names = sorted({*listed, local.name}, key=_step)
    kept = names[-keep:] if keep else names
    write_json(marker, {"fingerprint": fp, "completed": False, "checkpoints": kept})
    for name in names:
        if name not in kept:
            remove_tree(remote_dir / name)
    dropped = [n for n in names if n not in kept]
    logger.info(
        f"Checkpoint {local.name} copied to {remote_dir / local.name} in {time.perf_counter() - started:.1f}s"
        + (f"; removed {', '.join(dropped)} there (trainer.save_total_limit={keep})." if dropped else ".")
    )
    return kept


def download_checkpoint(cfg: DictConfig, ckpt_dir: Path, remote_dir: Path, fp: str) -> Path | None:
    """With ``train.resume=auto`` and no checkpoint in ``ckpt_dir`` (a new machine, e.g. after a preemption): the
    last checkpoint that an interrupted run of the same config copied to the bucket, downloaded into ``ckpt_dir``
    (with its run.json, so the usual resume picks it up). None when there is nothing to resume."""
    from transformers.trainer_utils import get_last_checkpoint

    if str(cfg.train.resume) != "auto" or (ckpt_dir.is_dir() and get_last_checkpoint(str(ckpt_dir)) is not None):
        return None
    marker = remote_dir / "run.json"
    info = read_json(marker) if exists(marker) else {}
    if info.get("fingerprint") != fp or info.get("completed") or not info.get("checkpoints"):
        return None
    name = info["checkpoints"][-1]
    target = ckpt_dir / name
    remove_tree(target)  # a partial folder of a crashed download (downloads are renamed into place, but be sure)
    started = time.perf_counter()
    download_dir(remote_dir / name, target)
    write_json(ckpt_dir / "run.json", {"fingerprint": fp, "completed": False})
    logger.info(f"Downloaded checkpoint {remote_dir / name} to {target} in {time.perf_counter() - started:.1f}s.")
    return target


def set_aside_remote_checkpoints(remote_dir: Path) -> None:
    """Move the checkpoints of a finished run or of another config out of the way (server-side), as is done on
    local disk, so that they never mix with the new run's."""
    if not exists(remote_dir):
        return
    stale = remote_dir.with_name(f"{remote_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    fs, root, to = cast(Any, remote_dir).fs, cast(Any, remote_dir).path.rstrip("/"), cast(Any, stale).path
    # Server-side copies, then deletes (fs.mv first tries an API that not every store or emulator offers).
    names = sorted(fs.find(root))
    fs.copy(names, [f"{to}/{n[len(root) :].lstrip('/')}" for n in names])
    fs.rm(names)
    fs.invalidate_cache(root)
    logger.info(f"Previous checkpoints in the bucket moved to {stale}.")


class CheckpointUploader:
    """Copies checkpoints to the bucket in a background thread, so that training does not wait for the network.

    On each save the checkpoint folder is first hard-linked (instant, no copy) into ``<checkpoints>/.uploading/``:
    the trainer may delete its own folder (``save_total_limit``) while the upload still reads the links. Uploads
    run one at a time, oldest first; a checkpoint still waiting when a newer one is saved is dropped (a resume only
    wants the newest). :meth:`wait` blocks until the queue is empty; the train stage calls it when training ends,
    normally or by an exception, so the last checkpoint saved is in the bucket before the process exits. A failed
    upload is logged and training goes on (the checkpoint stays on local disk); :attr:`errors` lists them.
    """

    def __init__(self, local_dir: Path, remote_dir: Path, fp: str, keep: int | None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.local_dir, self.remote_dir, self.fp, self.keep = local_dir, remote_dir, fp, keep
        self.staging = local_dir / ".uploading"
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-upload")
        self._waiting: Any = None  # (future, staged folder) of the upload queued behind the running one
        self.uploaded: list[str] = []
        self.errors: list[str] = []

    def submit(self, checkpoint: Path) -> None:
        """Queue ``checkpoint`` (a folder the trainer just saved) for upload."""
        staged = self.staging / checkpoint.name
        shutil.rmtree(staged, ignore_errors=True)
        staged.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copytree(checkpoint, staged, copy_function=os.link)
        except OSError:  # a file system without hard links: a real copy, still local and quick next to an upload
            shutil.rmtree(staged, ignore_errors=True)
            shutil.copytree(checkpoint, staged)
        if self._waiting is not None:
            future, older = self._waiting
            if future.cancel():
                shutil.rmtree(older, ignore_errors=True)
                logger.info(f"Checkpoint {older.name} not uploaded: {checkpoint.name} replaces it in the queue.")
        self._waiting = (self._pool.submit(self._upload, staged), staged)

    def _upload(self, staged: Path) -> None:
        try:
            upload_checkpoint(staged, self.remote_dir, self.fp, self.keep)
            self.uploaded.append(staged.name)
        except Exception as err:  # logged; training goes on with the checkpoint on local disk
            self.errors.append(f"{staged.name}: {type(err).__name__}: {err}")
            logger.error(f"Upload of checkpoint {staged.name} to {self.remote_dir} failed ({err}); it stays local.")
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def wait(self) -> None:
        """Block until every queued upload has finished (uploaded or failed)."""
        if self._waiting is not None:
            logger.info("Waiting for the checkpoint upload to the bucket to finish ...")
        self._pool.shutdown(wait=True)
        self._waiting = None
        shutil.rmtree(self.staging, ignore_errors=True)


def checkpoint_sync_callback(uploader: CheckpointUploader) -> Any:
    """A trainer callback that hands each checkpoint the trainer saves to ``uploader``."""
    from transformers import TrainerCallback

    class CheckpointSync(TrainerCallback):  # type: ignore[misc]
        """Queues each checkpoint the trainer saves for upload to the bucket (on the main process only)."""

        def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if state.is_world_process_zero:
                uploader.submit(uploader.local_dir / f"checkpoint-{state.global_step}")
            return control

    return CheckpointSync()

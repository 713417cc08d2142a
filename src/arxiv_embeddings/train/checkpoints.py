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

from arxiv_embeddings.io import (
    download_dir,
    exists,
    publish_dir,
    read_json,
    remove_tree,
    write_json,
)

#: The marker of a run's checkpoints folder (local and in the bucket): its config's fingerprint, whether it
#: completed, and in the bucket the checkpoints whose upload completed.
RUN_FILE = "run.json"


def checkpoint_to_resume(mode: str, ckpt_dir: Path, fp: str) -> str | None:
    """The checkpoint to resume from, per ``mode`` (``train.resume``: auto, never or a checkpoint folder);
    checkpoints of another config are set aside."""
    from transformers.trainer_utils import get_last_checkpoint

    if mode not in ("auto", "never"):
        if not Path(mode).is_dir():
            raise FileNotFoundError(
                f"train.resume={mode} is not a checkpoint folder; use auto, never or a checkpoint-N path."
            )
        return mode
    marker = ckpt_dir / RUN_FILE
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


def _step(name: str) -> int:
    return int(name.rsplit("-", 1)[-1])


def upload_checkpoint(local: Path, remote_dir: Path, fp: str, keep: int | None) -> list[str]:
    """Publish the checkpoint folder ``local`` to ``remote_dir/<its name>``, record it in ``remote_dir/run.json``,
    then delete the remote checkpoints beyond the newest ``keep`` (the trainer's ``save_total_limit``; None = keep
    all). Returns the checkpoints kept. A checkpoint enters run.json only once its upload is complete, so a resume
    never picks a half-uploaded one."""
    started = time.perf_counter()
    publish_dir(local, remote_dir / local.name)
    marker = remote_dir / RUN_FILE
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


def download_checkpoint(mode: str, ckpt_dir: Path, remote_dir: Path, fp: str) -> Path | None:
    """With ``mode`` (``train.resume``) auto and no checkpoint in ``ckpt_dir`` (a new machine, e.g. after a preemption): the
    last checkpoint that an interrupted run of the same config copied to the bucket, downloaded into ``ckpt_dir``
    (with its run.json, so the usual resume picks it up). None when there is nothing to resume."""
    from transformers.trainer_utils import get_last_checkpoint

    if mode != "auto" or (ckpt_dir.is_dir() and get_last_checkpoint(str(ckpt_dir)) is not None):
        return None
    marker = remote_dir / RUN_FILE
    info = read_json(marker) if exists(marker) else {}
    if info.get("fingerprint") != fp or info.get("completed") or not info.get("checkpoints"):
        return None
    name = info["checkpoints"][-1]
    target = ckpt_dir / name
    remove_tree(target)  # a partial folder of a crashed download (downloads are renamed into place, but be sure)
    started = time.perf_counter()
    download_dir(remote_dir / name, target)
    write_json(ckpt_dir / RUN_FILE, {"fingerprint": fp, "completed": False})
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


class CheckpointRun:
    """The resume protocol of one training run, behind one seam: :meth:`open` (before training: fetch the last
    checkpoint from the bucket onto a new machine, choose the one to resume from, mark the folders as this config's
    unfinished run, start the uploads), :meth:`wait` (when training ends, however it ends: the last checkpoint saved
    reaches the bucket) and :meth:`finish` (after the model is saved: the run is marked completed, so the next run
    starts afresh).

    ``local``: the trainer's checkpoints folder; ``remote``: its copy in the bucket (None: no copies); ``fp``: the
    run's fingerprint; ``mode``: ``train.resume``; ``keep``: the trainer's ``save_total_limit``. Only the main
    process (``rank0``) touches the markers and the bucket.
    """

    def __init__(
        self, local: Path, remote: Path | None, fp: str, mode: str, keep: int | None, rank0: bool = True
    ) -> None:
        self.local, self.remote, self.fp, self.mode, self.keep, self.rank0 = local, remote, fp, mode, keep, rank0
        self.uploader: CheckpointUploader | None = None

    def open(self) -> tuple[str | None, list[Any]]:
        """The checkpoint to resume from (None: from the start) and the trainer callbacks the run needs."""
        if not self.rank0:
            return None, []
        if self.remote is not None:
            download_checkpoint(self.mode, self.local, self.remote, self.fp)
        resume_from = checkpoint_to_resume(self.mode, self.local, self.fp)
        write_json(self.local / RUN_FILE, {"fingerprint": self.fp, "completed": False})
        if self.remote is None:
            return resume_from, []
        marker = self.remote / RUN_FILE
        info = read_json(marker) if exists(marker) else {}
        continuing = resume_from is not None and info.get("fingerprint") == self.fp and not info.get("completed")
        if not continuing:
            set_aside_remote_checkpoints(self.remote)
        listed = info.get("checkpoints", []) if continuing else []
        write_json(marker, {"fingerprint": self.fp, "completed": False, "checkpoints": listed})
        self.uploader = CheckpointUploader(self.local, self.remote, self.fp, self.keep)
        return resume_from, [checkpoint_sync_callback(self.uploader)]

    def wait(self) -> None:
        """Block until the queued checkpoint uploads have finished (nothing to do without a bucket copy)."""
        if self.uploader is not None:
            self.uploader.wait()

    def finish(self) -> None:
        """Mark the run completed, locally and in the bucket."""
        if not self.rank0:
            return
        write_json(self.local / RUN_FILE, {"fingerprint": self.fp, "completed": True})
        if self.remote is not None:
            marker = self.remote / RUN_FILE
            info = read_json(marker) if exists(marker) else {}
            write_json(marker, {**info, "fingerprint": self.fp, "completed": True})

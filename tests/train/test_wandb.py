"""W&B tracking: a short training with logger=wandb, offline, writes a run folder whose config, metric history and
summary the test reads back."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import time
import zlib
from pathlib import Path

import pytest

from arxiv_embeddings import pairs
from arxiv_embeddings.config import compose
from arxiv_embeddings.train import stage as train_stage

STEPS = 4

pytestmark = pytest.mark.slow


def read_wandb_records(path: Path, timeout: float = 60.0) -> list[dict]:
    """The records of a finished run's .wandb transaction log as dicts, once the log holds its ``exit`` record.

    ``wandb.finish()`` can return before the W&B service has flushed the log's last block, so a read can see a
    truncated tail: the read is repeated until every chunk is whole and checks out and the exit record is in, and
    fails after ``timeout`` seconds saying what was missing.
    """
    deadline = time.monotonic() + timeout
    while True:
        records, problem = _parse_wandb_log(path.read_bytes())
        if problem is None and not any("exit" in r for r in records):
            problem = "no exit record yet"
        if problem is None:
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} after {timeout:.0f} s: {problem} ({len(records)} records read)")
        time.sleep(0.2)


def _parse_wandb_log(data: bytes) -> tuple[list[dict], str | None]:
    """The records of a .wandb transaction log, and what is wrong with it (None when every chunk is whole).

    The file is a 7-byte header (``:W&B``, magic, version) followed by LevelDB-log framed records (32 KiB blocks
    counted from the start of the file; each chunk: CRC-32 of its type and data, length, type FULL/FIRST/MIDDLE/
    LAST), each a protobuf ``Record``.
    """
    from google.protobuf.json_format import MessageToDict
    from wandb.proto import wandb_internal_pb2 as pb

    assert data[:4] == b":W&B", "not a W&B transaction log"
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room left in the block for a header: padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        if len(chunk) < length:
            return records, f"chunk at byte {pos} cut short ({len(chunk)} of {length} bytes)"
        if kind == 0 and length == 0:  # zero padding at the end of a flushed block
            pos += 7
            continue
        if zlib.crc32(bytes([kind]) + chunk) != crc:
            return records, f"chunk at byte {pos} fails its CRC"
        pos += 7 + length
        pending += chunk
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(MessageToDict(record))
            pending = b""
    if pending:
        return records, "the last record's chunks end before its LAST chunk"
    return records, None


def test_offline_wandb_run_has_config_metrics_and_summary(
    tmp_path: Path, processed_root: Path, tiny_model_dir: Path
) -> None:
    shutil.copytree(processed_root / "data" / "processed", tmp_path / "data" / "processed")
    pairs.run(compose("pairs", [f"paths.root_dir={tmp_path}", "pairs.num_train=64", "pairs.num_eval=16"]))
    overrides = [
        f"paths.root_dir={tmp_path}",
        f"model.name={tiny_model_dir}",
        "run_name=tracked",
        "logger=wandb",
        "logger.project=arxiv-embeddings-test",
        "logger.tags=[ops,test]",
        f"trainer.max_steps={STEPS}",
        "trainer.per_device_train_batch_size=8",
        "trainer.logging_steps=1",
        "trainer.eval_steps=2",
        "trainer.save_steps=2",
        "train.eval_papers=40",
        "train.test_papers=40",
        "train.max_seq_length=32",
        "train.freeze_layers=1",
        "train.head.enabled=false",
    ]
    saved = dict(os.environ)
    try:
        for name in [k for k in os.environ if k.startswith("WANDB_")]:
            del os.environ[name]
        os.environ |= {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
        result = train_stage.run(compose("train", overrides))
        import wandb

        wandb.finish()  # the trainer leaves the run open; a process exit would close it the same way
    finally:  # the stage sets WANDB_PROJECT, WANDB_DIR, WANDB_TAGS for the trainer: keep them out of other tests
        os.environ.clear()
        os.environ.update(saved)
    assert (Path(result["model"]) / "train_summary.json").exists()

    # Offline, the run folder's transaction log holds everything `wandb sync` uploads later.
    (run_dir,) = (tmp_path / "logs" / "wandb").glob("offline-run-*")
    (log,) = run_dir.glob("run-*.wandb")
    records = read_wandb_records(log)  # waits for the exit record: the run was finished, not cut off

    run = next(r["run"] for r in records if "run" in r)
    assert run["project"] == "arxiv-embeddings-test" and run["tags"] == ["ops", "test"]
    assert run["displayName"] == "tracked"

    config = {k: v for r in records if "config" in r for k, v in _items(r["config"]["update"]).items()}
    assert config["max_steps"] == STEPS and config["run_name"] == "tracked"
    assert config["per_device_train_batch_size"] == 8 and config["seed"] == 42

    history = [_items(r["history"]["item"]) for r in records if "history" in r]
    train_rows = [h for h in history if "train/loss" in h]
    assert [h["train/global_step"] for h in train_rows] == list(range(1, STEPS + 1))
    # A bf16 loss can be a whole number (2.0), which the log writes as the JSON number 2.
    assert all(isinstance(h["train/loss"], int | float) and math.isfinite(h["train/loss"]) for h in train_rows)
    assert all(h["train/loss"] > 0 for h in train_rows)
    eval_rows = [h for h in history if "eval/cosine_precision@10" in h]
    assert [h["train/global_step"] for h in eval_rows] == [2, 4]
    assert all(0.0 <= h["eval/cosine_precision@10"] <= 1.0 for h in eval_rows)

    summary = {k: v for r in records if "summary" in r for k, v in _items(r["summary"]["update"]).items()}
    assert summary["train/global_step"] == STEPS and summary["train_loss"] > 0
    assert (run_dir / "files" / "output.log").exists()


def _items(items: list[dict]) -> dict:
    """``{key: value}`` of a record's items (``key`` or a one-part ``nestedKey``, JSON-encoded values)."""
    out = {}
    for item in items:
        key = item.get("key") or "/".join(item["nestedKey"])
        out[key] = json.loads(item["valueJson"])
    return out

"""Artifacts in a bucket (paths=gcs), against a real GCS emulator started here: preprocess -> pairs byte for byte the
same as on local disk, train, evaluate / baseline / compare with the same metrics as on local disk, export and index
of a model in the bucket, checkpoints copied to the bucket and resumed on a new machine; with the skip/re-run stamps
and the publish-or-keep-the-old-version guarantee."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import fresh_overrides

from arxiv_embeddings import pairs, preprocess
from arxiv_embeddings.config import compose
from arxiv_embeddings.io import artifact_path, atomic_dir, exists, read_json, read_parquet, tree_sha256, write_json
from arxiv_embeddings.runner import execute

REPO = Path(__file__).resolve().parents[1]
BUCKET = "test-bucket"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def gcs() -> Iterator[object]:
    """A GCS emulator (PyPI gcp-storage-emulator) with an empty bucket; yields gcsfs pointed at it."""
    exe = Path(sys.executable).parent / "gcp-storage-emulator"
    port = _free_port()
    proc = subprocess.Popen(
        [str(exe), "start", "--port", str(port), "--in-memory", "--default-bucket", BUCKET, "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    host = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{host}/storage/v1/b", timeout=2).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("the GCS emulator did not start") from None
            time.sleep(0.2)
    old = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = host
    from gcsfs.core import GCSFileSystem

    GCSFileSystem.clear_instance_cache()
    try:
        yield artifact_path(f"gs://{BUCKET}").fs  # type: ignore[attr-defined]
    finally:
        GCSFileSystem.clear_instance_cache()
        if old is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = old
        proc.terminate()
        proc.wait(timeout=30)


def _objects(fs, prefix: str) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    return {name[len(prefix) + 1 :]: fs.cat(name) for name in sorted(fs.find(prefix))}


def test_artifact_paths_are_pathlib_locally_and_upath_in_a_bucket(tmp_path: Path) -> None:
    local = artifact_path(str(tmp_path / "data"))
    assert type(local) is type(tmp_path)  # a plain pathlib path: local behaviour is unchanged
    assert artifact_path(f"file://{tmp_path}") == tmp_path
    cfg = compose("pairs", ["paths=gcs", f"paths.bucket={BUCKET}", "paths.prefix=exp/1"])
    assert cfg.paths.processed_dir == f"gs://{BUCKET}/exp/1/data/processed"
    assert not str(cfg.paths.log_dir).startswith("gs://")  # Hydra's run folders stay on the machine
    remote = artifact_path(cfg.paths.processed_dir) / "train.parquet"
    assert str(remote) == f"gs://{BUCKET}/exp/1/data/processed/train.parquet"
    assert remote.name == "train.parquet" and str(remote.parent) == cfg.paths.processed_dir


def test_paths_gcs_needs_a_bucket() -> None:
    from arxiv_embeddings.config import ConfigError

    with pytest.raises(ConfigError, match=r"not set: paths\.bucket"):
        preprocess.validate(compose("preprocess", ["paths=gcs"]))


@pytest.mark.slow
def test_preprocess_then_pairs_in_a_bucket_match_local_disk(
    gcs, tmp_path: Path, processed_root: Path, slice_overrides: list[str]
) -> None:
    fs = gcs
    prefix = f"{BUCKET}/round-trip"
    remote = ["paths=gcs", f"paths.bucket={BUCKET}", "paths.prefix=round-trip", f"paths.log_dir={tmp_path}/logs"]
    pair_args = ["pairs.num_train=500", "pairs.num_eval=50"]

    assert execute(preprocess.SPEC, compose("preprocess", [*remote, *slice_overrides])) is not None
    processed = _objects(fs, f"{prefix}/data/processed")
    assert set(processed) == {
        "train.parquet",
        "eval.parquet",
        "test.parquet",
        "manifest.json",
        ".stage-preprocess.json",
    }
    # The same bytes as the local run of the same config (the session's processed_root).
    local_processed = processed_root / "data" / "processed"
    for name in ("train.parquet", "eval.parquet", "test.parquet"):
        assert processed[name] == (local_processed / name).read_bytes(), name
    # Nothing of the publishing is left behind: no staging prefix in the bucket.
    assert [n for n in fs.find(prefix) if ".tmp-" in n] == []

    assert execute(pairs.SPEC, compose("pairs", [*remote, *pair_args])) is not None
    local_root = tmp_path / "local"
    shutil.copytree(local_processed, local_root / "data" / "processed")
    pairs.run(compose("pairs", [f"paths.root_dir={local_root}", *pair_args]))
    remote_pairs = _objects(fs, f"{prefix}/data/pairs")
    for name in ("train.parquet", "train_meta.parquet", "eval.parquet", "eval_meta.parquet"):
        assert remote_pairs[name] == (local_root / "data" / "pairs" / name).read_bytes(), name
    manifest = read_json(f"gs://{prefix}/data/pairs/manifest.json")
    assert manifest["files"]["train"]["rows"] == 500
    assert manifest["files"]["train"]["source"] == f"gs://{prefix}/data/processed/train.parquet"
    assert read_parquet(f"gs://{prefix}/data/pairs/train.parquet", columns=["anchor"]).num_rows == 500

    # Unchanged: both skipped, from the stamps and the objects' checksums in the bucket.
    assert execute(preprocess.SPEC, compose("preprocess", [*remote, *slice_overrides])) is None
    assert execute(pairs.SPEC, compose("pairs", [*remote, *pair_args])) is None
    # A changed pairs value re-runs pairs only; a deleted output re-runs its stage.
    assert execute(preprocess.SPEC, compose("preprocess", [*remote, *slice_overrides])) is None
    assert execute(pairs.SPEC, compose("pairs", [*remote, "pairs.num_train=300", "pairs.num_eval=50"])) is not None
    assert read_json(f"gs://{prefix}/data/pairs/manifest.json")["files"]["train"]["rows"] == 300
    fs.rm(f"{prefix}/data/processed/test.parquet")
    assert execute(preprocess.SPEC, compose("preprocess", [*remote, *slice_overrides])) is not None
    assert fs.cat(f"{prefix}/data/processed/test.parquet") == (local_processed / "test.parquet").read_bytes()


@pytest.mark.slow
def test_inv_preprocess_with_paths_gcs(gcs, tmp_path: Path, sample_slice: Path) -> None:
    """The command line: Hydra's run folder (and its log) on local disk, the artifacts in the bucket."""
    overrides = (
        f"paths=gcs paths.bucket={BUCKET} paths.prefix=cli data=files data.path={sample_slice} "
        "preprocess.min_per_subject=10"
    )
    env = {**os.environ, "ARXIV_EMBEDDINGS_LOG_DIR": str(tmp_path / "logs")}
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "preprocess", "--overrides", overrides],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"written to gs://{BUCKET}/cli/data/processed" in proc.stderr
    assert gcs.exists(f"{BUCKET}/cli/data/processed/train.parquet")  # type: ignore[attr-defined]
    assert list((tmp_path / "logs" / "preprocess").glob("*/preprocess.log"))


@pytest.mark.slow
def test_atomic_dir_in_a_bucket_publishes_all_or_keeps_the_old_version(gcs) -> None:
    fs = gcs
    target = f"gs://{BUCKET}/atomic/out"
    with atomic_dir(target) as tmp:
        assert isinstance(tmp, Path) and tmp.is_dir()  # the stage writes with local file code
        (tmp / "a.txt").write_text("one")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("two")
        write_json(tmp / "manifest.json", {"v": 1})
    staged = tmp
    assert not staged.exists()  # the local staging folder is removed
    before = _objects(fs, f"{BUCKET}/atomic/out")
    assert before == {"a.txt": b"one", "sub/b.txt": b"two", "manifest.json": b'{\n  "v": 1\n}\n'}
    digest = tree_sha256(target)

    with pytest.raises(RuntimeError, match="stage failed"), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("half-written")
        raise RuntimeError("stage failed")
    assert _objects(fs, f"{BUCKET}/atomic/out") == before and tree_sha256(target) == digest
    assert [n for n in fs.find(f"{BUCKET}/atomic") if ".tmp-" in n] == []

    # A new version replaces the old one entirely: changed files, a new file, and the dropped file gone.
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("three")
        (tmp / "c.txt").write_text("four")
        write_json(tmp / "manifest.json", {"v": 2})
    assert _objects(fs, f"{BUCKET}/atomic/out") == {
        "a.txt": b"three",
        "c.txt": b"four",
        "manifest.json": b'{\n  "v": 2\n}\n',
    }
    assert tree_sha256(target) != digest and exists(target) and not exists(f"{target}/sub/b.txt")


def _remote(prefix: str, tmp_path: Path) -> list[str]:
    return [
        "paths=gcs",
        f"paths.bucket={BUCKET}",
        f"paths.prefix={prefix}",
        f"paths.log_dir={tmp_path}/logs",
        f"paths.cache_dir={tmp_path}/cache",
    ]


def _bucket_with_pairs(fs: Any, processed_root: Path, prefix: str, tmp_path: Path) -> list[str]:
    """The processed splits copied to gs://BUCKET/<prefix> and small pair files built there; its overrides."""
    fs.put(str(processed_root / "data" / "processed"), f"{BUCKET}/{prefix}/data/processed", recursive=True)
    remote = _remote(prefix, tmp_path)
    pairs.run(compose("pairs", [*remote, "pairs.num_train=64", "pairs.num_eval=16"]))
    return remote


@pytest.mark.slow
def test_train_reads_pairs_from_and_writes_the_model_to_the_bucket(
    gcs, tmp_path: Path, processed_root: Path, tiny_model_dir: Path
) -> None:
    """What a Vertex AI job does: pairs in the bucket -> train -> the final model in the bucket."""
    from arxiv_embeddings.train import stage as train_stage

    fs = gcs
    prefix = f"{BUCKET}/vertex-like"
    remote = _bucket_with_pairs(fs, processed_root, "vertex-like", tmp_path)
    fast = [
        f"model.name={tiny_model_dir}",
        "run_name=t",
        "trainer.max_steps=2",
        "trainer.per_device_train_batch_size=8",
        "trainer.eval_steps=2",
        "trainer.save_steps=2",
        "train.eval_papers=40",
        "train.test_papers=40",
        "train.max_seq_length=32",
        "train.freeze_layers=1",
        "train.head.enabled=false",
    ]
    cfg = compose("train", [*remote, *fast])
    result = execute(train_stage.SPEC, cfg)
    assert result is not None and str(result["model"]) == f"gs://{prefix}/models/t/final"
    saved = set(_objects(fs, f"{prefix}/models/t/final"))
    assert {"modules.json", "config_sentence_transformers.json", "train_summary.json", "train_config.yaml"} <= saved
    assert read_json(f"gs://{prefix}/models/t/final/train_summary.json")["global_step"] == 2
    assert fs.exists(f"{prefix}/models/t/.stage-train.json")
    # The trainer's checkpoints are written on the machine's disk (and copied to the bucket, see below).
    assert (tmp_path / "logs" / "checkpoints" / "t" / "checkpoint-2").is_dir()
    # The model downloaded from the bucket loads and embeds.
    from sentence_transformers import SentenceTransformer

    local = tmp_path / "downloaded"
    fs.get(f"{prefix}/models/t/final", str(local), recursive=True)
    assert SentenceTransformer(str(local), device="cpu").encode(["a title"]).shape == (1, 32)
    assert execute(train_stage.SPEC, compose("train", [*remote, *fast])) is None  # unchanged: skipped


# ------------------------------------------------------------------ evaluate, baseline, compare, export, index
STAGES = "stages"
EVAL = [
    "run_name=tiny",
    "evaluate.encode.device=cpu",
    "evaluate.encode.max_seq_length=64",
    "evaluate.classification.max_train_papers=200",
]
#: An exact index of run 'tiny' in the bucket, on 256-paper shards.
INDEX = [
    "index.model=tiny",
    "index.type=flat",
    "index.encode.device=cpu",
    "index.shard_size=256",
    "index.eval.queries=50",
    "index.threads=1",
]
SECTIONS = ("num_subjects", "subject_retrieval", "title_abstract", "classification", "clustering")


@pytest.fixture(scope="module")
def stage_bucket(gcs, processed_root: Path, tiny_model_dir: Path) -> str:
    """The bucket prefix ``stages`` with the processed splits and the tiny model as the final model of run 'tiny'."""
    fs = gcs
    fs.put(str(processed_root / "data" / "processed"), f"{BUCKET}/{STAGES}/data/processed", recursive=True)
    fs.put(str(tiny_model_dir), f"{BUCKET}/{STAGES}/models/tiny/final", recursive=True)
    return f"{BUCKET}/{STAGES}"


@pytest.mark.slow
def test_evaluate_baseline_and_compare_in_a_bucket_match_local_disk(
    gcs, stage_bucket: str, tmp_path: Path, processed_root: Path, tiny_model_dir: Path, make_cfg
) -> None:
    from arxiv_embeddings import baseline, evaluate
    from arxiv_embeddings.evaluation.settings import model_source
    from arxiv_embeddings.report import compare

    fs, prefix = gcs, stage_bucket
    remote = [*_remote(STAGES, tmp_path), *fresh_overrides()]
    base_args = ["baseline.runs=[tfidf,zero_shot]", f"baseline.zero_shot.model=gs://{prefix}/models/tiny/final"]

    assert execute(evaluate.SPEC, compose("evaluate", [*remote, *EVAL])) is not None
    report = _objects(fs, f"{prefix}/reports/tiny")
    assert {"metrics.json", "report.md", ".stage-evaluate.json"} <= set(report)
    assert {"plots/per_subject_precision.png", "plots/confusion_matrix.png", "plots/embedding_map.png"} <= set(report)
    metrics = read_json(f"gs://{prefix}/reports/tiny/metrics.json")
    assert metrics["features"]["model_path"] == f"gs://{prefix}/models/tiny/final"
    assert metrics["data"]["test"]["path"] == f"gs://{prefix}/data/processed/test.parquet"
    # The model was copied to the local cache once, keyed by the bucket folder's content.
    copies = [p for p in (tmp_path / "cache").glob("*/*") if p.is_dir()]
    assert len(copies) == 1 and (copies[0] / "modules.json").is_file()
    copied_at = copies[0].stat().st_mtime_ns

    # The same run on local disk: the same numbers.
    local = tmp_path / "local"
    shutil.copytree(tiny_model_dir, local / "models" / "tiny" / "final")
    local_args = [f"paths.processed_dir={processed_root / 'data' / 'processed'}", *EVAL]
    local_metrics = evaluate.run(make_cfg("evaluate", local, local_args))["metrics"]
    for key in SECTIONS:
        assert metrics[key] == local_metrics[key], key
    assert metrics["data"]["test"]["sha256"] == local_metrics["data"]["test"]["sha256"]

    # Unchanged: skipped, from the stamp and the checksums in the bucket; the model is not downloaded again.
    assert execute(evaluate.SPEC, compose("evaluate", [*remote, *EVAL])) is None
    assert model_source(compose("evaluate", [*remote, *EVAL])) == str(copies[0])
    assert [p for p in (tmp_path / "cache").glob("*/*") if p.is_dir()] == copies
    assert copies[0].stat().st_mtime_ns == copied_at

    # Baselines in the bucket: TF-IDF as on local disk; the zero-shot run of the same model as its evaluation.
    assert execute(baseline.SPEC, compose("baseline", [*remote, *EVAL, *base_args])) is not None
    assert fs.exists(f"{prefix}/reports/.stage-baseline.json")
    zero_shot = read_json(f"gs://{prefix}/reports/zero-shot/metrics.json")
    tfidf = read_json(f"gs://{prefix}/reports/tfidf/metrics.json")
    local_tfidf = baseline.run(make_cfg("baseline", local, [*local_args, "baseline.runs=[tfidf]"]))["runs"]["tfidf"]
    for key in SECTIONS:
        assert zero_shot[key] == metrics[key], key
        assert tfidf[key] == local_tfidf["metrics"][key], key
    assert execute(baseline.SPEC, compose("baseline", [*remote, *EVAL, *base_args])) is None

    # compare over the bucket's reports folder.
    text = compare(f"gs://{prefix}/reports")
    assert fs.cat(f"{prefix}/reports/comparison.md").decode() == text
    assert all(f"`{run}`" in text for run in ("tiny", "tfidf", "zero-shot"))


def test_missing_models_in_a_bucket_name_the_url_and_the_command(gcs, stage_bucket: str, tmp_path: Path) -> None:
    from arxiv_embeddings import evaluate
    from arxiv_embeddings.backends.loading import fetch_model
    from arxiv_embeddings.export import stage as export_stage
    from arxiv_embeddings.index import stage as index_stage
    from arxiv_embeddings.layout import ModelNotFoundError

    remote = _remote(STAGES, tmp_path)
    expected = rf"gs://{stage_bucket}/models/nope/final.*uv run inv train"
    with pytest.raises(ModelNotFoundError, match=expected):
        evaluate.run(compose("evaluate", [*remote, *EVAL, "evaluate.model=nope"]))
    with pytest.raises(ModelNotFoundError, match=expected):
        export_stage.run(compose("export", [*remote, "export.model=nope", "export.quantize=false"]))
    with pytest.raises(ModelNotFoundError, match=expected):
        index_stage.run(compose("index", [*remote, "index.model=nope"]))
    url = f"gs://{stage_bucket}/models/other/final"
    with pytest.raises(ModelNotFoundError, match=rf"No sentence-transformers model at {url}.*uv run inv train"):
        fetch_model(url, tmp_path / "cache")
    with pytest.raises(ModelNotFoundError, match=rf"{url}.*uv run inv train"):
        evaluate.run(compose("evaluate", [*remote, *EVAL, f"evaluate.model={url}"]))
    assert not gcs.exists(f"{stage_bucket}/reports/other")  # type: ignore[attr-defined]


@pytest.mark.slow
def test_export_and_index_of_a_model_in_the_bucket(gcs, stage_bucket: str, tmp_path: Path, make_cfg) -> None:
    import numpy as np

    from arxiv_embeddings.export import stage as export_stage
    from arxiv_embeddings.index import stage as index_stage
    from arxiv_embeddings.index.search import PaperIndex
    from arxiv_embeddings.io import local_copy

    fs, prefix = gcs, stage_bucket
    remote = _remote(STAGES, tmp_path)
    model = f"{prefix}/models/tiny/final"
    model_before = _objects(fs, model)
    export_args = [
        "run_name=tiny",
        "export.optimization_levels=[]",
        "export.quantize=false",
        "export.parity.max_papers=40",
        "export.throughput.texts=8",
        "export.throughput.batch_size=8",
        "export.throughput.seq_lengths=[32]",
        "export.throughput.repeats=1",
        "export.throughput.torch=[fp32]",
    ]
    result = execute(export_stage.SPEC, compose("export", [*remote, *export_args]))
    assert result is not None and str(result["dir"]) == f"gs://{model}"
    after = _objects(fs, model)
    assert {k: v for k, v in after.items() if k in model_before} == model_before  # the model's own files untouched
    # model.onnx and, calibrated on the bucket's train split, openvino-int8's static quantization of it
    written = {"onnx/model.onnx", "onnx/model_qint8_static.onnx", "onnx/.stage-export.json", "export_report.json"}
    assert set(after) - set(model_before) == written
    report = read_json(f"gs://{model}/export_report.json")
    assert report["model"] == f"gs://{model}" and report["variants"]["onnx-fp32"]["parity"]["passed"]
    assert [n for n in fs.find(prefix) if ".tmp-" in n] == []
    assert execute(export_stage.SPEC, compose("export", [*remote, *export_args])) is None  # unchanged: skipped

    # The index embeds with the ONNX export read from the bucket (through the model's local copy).
    index_args = [*INDEX, "index.backend=onnx"]
    result = execute(index_stage.SPEC, compose("index", [*remote, *index_args]))
    assert result is not None and str(result["dir"]) == f"gs://{prefix}/indexes/tiny"
    assert set(_objects(fs, f"{prefix}/indexes")) == {
        "tiny/index.faiss",
        "tiny/metadata.parquet",
        "tiny/manifest.json",
        "tiny/.stage-index.json",
    }
    manifest = read_json(f"gs://{prefix}/indexes/tiny/manifest.json")
    assert manifest["model_location"] == f"gs://{model}" and manifest["backend"] == "onnx"
    # The embedding shards (the resume cache) stay on local disk, under paths.cache_dir.
    assert Path(result["embeddings"]).is_relative_to(tmp_path / "cache" / "embeddings")
    assert list(Path(result["embeddings"]).glob("shard-*.npy"))
    assert execute(index_stage.SPEC, compose("index", [*remote, *index_args])) is None  # unchanged: skipped

    # The same build on local disk, from a local copy of the exported model: the same papers and vectors.
    local_model = local_copy(f"gs://{model}", tmp_path / "copy")
    local_args = [f"paths.processed_dir={local_copy(f'gs://{prefix}/data/processed', tmp_path / 'copy')}"]
    local = index_stage.run(
        make_cfg("index", tmp_path / "local", [*local_args, *index_args, f"index.model={local_model}"])
    )
    built = PaperIndex.load(local_copy(f"gs://{prefix}/indexes/tiny", tmp_path / "copy"), verify=True)
    reference = PaperIndex.load(local["dir"])
    assert built.metadata.equals(reference.metadata) and len(built) > 500
    np.testing.assert_allclose(
        built.index.reconstruct_n(0, len(built)), reference.index.reconstruct_n(0, len(built)), atol=1e-5
    )


def test_an_index_job_on_two_machines_shares_its_shards_through_the_bucket(
    gcs, stage_bucket: str, tmp_path: Path, make_cfg
) -> None:
    """The index launcher on machine 1 of 2 embeds its shards and copies them to the bucket; machine 0 embeds its
    own, finds the others there, copies them down and builds: the index of one machine, vector for vector. Each
    machine has its own disk (paths.cache_dir)."""
    import io

    import numpy as np

    from arxiv_embeddings import index_launcher as launcher
    from arxiv_embeddings.index import stage as index_stage
    from arxiv_embeddings.index.search import PaperIndex
    from arxiv_embeddings.io import local_copy

    fs, prefix = gcs, stage_bucket
    index_args = [*INDEX, "index.backend=torch", "index.name=job", "index.part_wait_s=5"]
    spec = '{"cluster": {"workerpool0": ["m0:2222"], "workerpool1": ["m1:2222"]}, "task": {"type": "%s", "index": 0}}'

    def machine(i: int) -> list[str]:
        return [*_remote(STAGES, tmp_path / f"machine{i}"), *index_args]

    assert launcher.run(machine(1), {"CLUSTER_SPEC": spec % "workerpool1"}) is None  # a worker: no index
    shared = [n for n in fs.find(f"{prefix}/indexes/.embeddings") if n.endswith(".npy")]
    assert [n.rsplit("/", 1)[1] for n in shared] == ["shard-00001.npy"]  # its share of the 3 shards
    assert not fs.exists(f"{prefix}/indexes/job/index.faiss")
    # Mark machine 1's shard (its vectors negated, still a valid shard): the index holds it only if it is copied down
    # rather than embedded again.
    buffer = io.BytesIO()
    np.save(buffer, -np.load(io.BytesIO(fs.cat(shared[0]))))
    fs.pipe(shared[0], buffer.getvalue())
    built = launcher.run(machine(0), {"CLUSTER_SPEC": spec % "workerpool0"})
    assert built is not None
    count = built["manifest"]["count"]
    assert built["manifest"]["build"]["reused_papers"] == count  # the build run embedded nothing: the parts did
    local_model = local_copy(f"gs://{prefix}/models/tiny/final", tmp_path / "copy")
    local_args = [f"paths.processed_dir={local_copy(f'gs://{prefix}/data/processed', tmp_path / 'copy')}"]
    local = index_stage.run(
        make_cfg("index", tmp_path / "local", [*local_args, *index_args, f"index.model={local_model}"])
    )
    job = PaperIndex.load(local_copy(f"gs://{prefix}/indexes/job", tmp_path / "copy"), verify=True)
    reference = PaperIndex.load(local["dir"])
    assert job.metadata.equals(reference.metadata) and len(job) == count > 2 * 256
    expected = reference.index.reconstruct_n(0, count)
    expected[256:512] *= -1  # machine 1's shard, as the bucket held it
    np.testing.assert_allclose(job.index.reconstruct_n(0, count), expected, atol=1e-5)


# ---------------------------------------------------------------------------------------- serving from a bucket
@pytest.mark.slow
def test_the_api_serves_a_model_and_an_index_from_the_bucket_copied_once(
    gcs, tmp_path: Path, make_cfg, processed_root: Path, tiny_model_dir: Path, monkeypatch
) -> None:
    import re

    import numpy as np
    from fastapi.testclient import TestClient
    from helpers.api import assert_error, clear_serving_env, make_settings, wait_ready

    from arxiv_embeddings.api.app import create_app
    from arxiv_embeddings.backends import load_embedder
    from arxiv_embeddings.index import stage as index_stage
    from arxiv_embeddings.index.search import PaperIndex

    clear_serving_env(monkeypatch)
    fs = gcs
    built = index_stage.run(
        make_cfg(
            "index",
            tmp_path / "local",
            [
                f"paths.processed_dir={processed_root / 'data' / 'processed'}",
                f"index.model={tiny_model_dir}",
                "index.name=tiny",
                "index.type=flat",
                "index.encode.device=cpu",
                "index.eval.queries=20",
            ],
        )
    )
    fs.put(str(built["dir"]), f"{BUCKET}/serving/indexes/tiny", recursive=True)
    # A model folder of its own: the stages' copy gains an ONNX export in an earlier test, and the server would then
    # serve whichever variant that export found fastest on this CPU (OpenVINO bf16 on some) instead of torch fp32.
    fs.put(str(tiny_model_dir), f"{BUCKET}/serving/models/tiny/final", recursive=True)
    model_url, index_url = f"gs://{BUCKET}/serving/models/tiny/final", f"gs://{BUCKET}/serving/indexes/tiny"
    cache = tmp_path / "serve-cache"
    settings = make_settings(
        tmp_path, model_url, "serve.search=true", f"serve.index_path={index_url}", f"serve.cache_dir={cache}"
    )
    texts = ["Graph neural networks for molecules", "Dark matter halos in dwarf galaxies"]
    with TestClient(create_app(settings)) as client:
        health = wait_ready(client)
        assert health["model_path"] == model_url and health["index_size"] == len(PaperIndex.load(built["dir"]))
        assert health["backend"] == "torch", health
        served = np.asarray(client.post("/embed", json={"input": texts}).json()["embeddings"])
        hits = client.post("/search", json={"text": texts[0], "k": 3})
        assert hits.status_code == 200 and len(hits.json()["results"]) == 3
    reference = load_embedder(tiny_model_dir, backend="torch", device="cpu").encode(texts)
    np.testing.assert_allclose(served, reference, atol=1e-5)

    # One copy of each folder, named by its content; a restart with the same files downloads nothing.
    copies = sorted(p for p in cache.rglob("*") if p.is_dir() and re.fullmatch(r"[0-9a-f]{16}", p.name))
    assert len(copies) == 2, copies
    files = {f: f.stat().st_mtime_ns for c in copies for f in c.rglob("*") if f.is_file()}
    with TestClient(create_app(settings)) as client:
        assert wait_ready(client)["index_size"] == health["index_size"]
    assert {f: f.stat().st_mtime_ns for f in files} == files
    assert sorted(p for p in cache.rglob("*") if p.is_dir() and re.fullmatch(r"[0-9a-f]{16}", p.name)) == copies

    # A folder the bucket does not hold: the start-up fails, /health says 503 and why, and nothing else is served.
    missing = f"gs://{BUCKET}/serving/models/none/final"
    with TestClient(create_app(make_settings(tmp_path, missing, f"serve.cache_dir={cache}"))) as client:
        app_service = client.app.state.service  # type: ignore[attr-defined]
        assert not app_service.wait_loaded(60) and app_service.status == "failed"
        error = assert_error(client.get("/health"), 503, "model_load_failed")
        assert f"could not copy the model {missing}" in error["message"] and "MODEL_PATH" in error["message"]
        assert client.post("/embed", json={"input": texts}).status_code == 503
    bad_index = make_settings(
        tmp_path, model_url, "serve.search=true", f"serve.index_path={index_url}-gone", f"serve.cache_dir={cache}"
    )
    with TestClient(create_app(bad_index)) as client:
        assert not client.app.state.service.wait_loaded(60)  # type: ignore[attr-defined]
        error = assert_error(client.get("/health"), 503, "model_load_failed")
        assert f"could not copy the index {index_url}-gone" in error["message"] and "INDEX_PATH" in error["message"]


# ------------------------------------------------------------------------------------- checkpoints in a bucket
def test_checkpoint_sync_applies_to_a_bucket_only(tmp_path: Path) -> None:
    from arxiv_embeddings.config import ConfigError
    from arxiv_embeddings.layout import remote_checkpoint_dir
    from arxiv_embeddings.train import stage as train_stage

    remote = compose("train", ["paths=gcs", f"paths.bucket={BUCKET}", "run_name=r"])
    assert str(remote_checkpoint_dir(remote)) == f"gs://{BUCKET}/arxiv-embeddings/models/r/checkpoints"
    assert remote_checkpoint_dir(compose("train", [f"paths.root_dir={tmp_path}"])) is None
    off = compose("train", ["paths=gcs", f"paths.bucket={BUCKET}", "train.checkpoint_sync=false"])
    assert remote_checkpoint_dir(off) is None
    with pytest.raises(ConfigError, match=r"train\.checkpoint_sync: got 'yes'"):
        train_stage.validate(compose("train", ["train.checkpoint_sync=yes"]))


@pytest.mark.slow
def test_checkpoints_are_copied_to_the_bucket_and_a_new_machine_resumes_from_them(
    gcs, tmp_path: Path, processed_root: Path, tiny_model_dir: Path
) -> None:
    """A SPOT VM: the run is killed after its step-2 checkpoint, the next VM has an empty disk and resumes."""
    from transformers import TrainerCallback

    from arxiv_embeddings.train import stage as train_stage

    fs = gcs
    prefix = f"{BUCKET}/spot"
    remote = _bucket_with_pairs(fs, processed_root, "spot", tmp_path)
    args = [
        *remote,
        f"model.name={tiny_model_dir}",
        "run_name=t",
        "trainer.max_steps=4",
        "trainer.save_steps=2",
        "trainer.eval_steps=100",
        "trainer.save_total_limit=1",
        "trainer.per_device_train_batch_size=8",
        "train.eval_papers=0",
        "train.test_papers=0",
        "train.max_seq_length=32",
        "train.freeze_layers=1",
        "train.head.enabled=false",
    ]

    class Preempted(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if state.global_step == 3:
                raise KeyboardInterrupt("the VM is gone after the step-2 checkpoint")

    with pytest.raises(KeyboardInterrupt):
        train_stage.run(compose("train", args), callbacks=[Preempted()])
    local = tmp_path / "logs" / "checkpoints" / "t"
    remote_ckpts = f"{prefix}/models/t/checkpoints"
    uploaded = _objects(fs, f"{remote_ckpts}/checkpoint-2")
    assert {"trainer_state.json", "optimizer.pt", "modules.json"} <= set(uploaded)
    assert uploaded == {
        p.relative_to(local / "checkpoint-2").as_posix(): p.read_bytes()
        for p in (local / "checkpoint-2").rglob("*")
        if p.is_file()
    }
    marker = read_json(f"gs://{remote_ckpts}/run.json")
    assert marker["checkpoints"] == ["checkpoint-2"] and marker["completed"] is False
    assert not fs.exists(f"{prefix}/models/t/final")

    shutil.rmtree(tmp_path / "logs")  # the next VM starts with an empty disk
    seen: list[int] = []

    class Record(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            seen.append(state.global_step)

    result = train_stage.run(compose("train", args), callbacks=[Record()])
    assert seen[0] == 2  # picked up after the downloaded checkpoint, not from step 0
    assert result["summary"]["global_step"] == 4
    assert fs.exists(f"{prefix}/models/t/final/modules.json")
    # The newest save_total_limit checkpoints are kept in the bucket, and the run is marked finished there.
    assert {n.rsplit("/", 1)[-1] for n in fs.ls(remote_ckpts)} == {"checkpoint-4", "run.json"}
    marker = read_json(f"gs://{remote_ckpts}/run.json")
    assert marker["checkpoints"] == ["checkpoint-4"] and marker["completed"] is True

    # Another config starts afresh: the finished run's checkpoints are moved aside in the bucket, not resumed.
    train_stage.run(compose("train", [*args, "trainer.max_steps=2"]))
    stale = [n for n in fs.ls(f"{prefix}/models/t") if ".old-" in n]
    assert len(stale) == 1 and fs.exists(f"{stale[0]}/checkpoint-4/trainer_state.json")
    marker = read_json(f"gs://{remote_ckpts}/run.json")
    assert marker["checkpoints"] == ["checkpoint-2"] and marker["completed"] is True

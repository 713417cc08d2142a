"""Invoke tasks end to end: `inv preprocess` and `inv pairs` on a slice, skipping and re-running as configs change;
`inv search-encoder` on the tiny model."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from arxiv_embeddings.io import read_json

REPO = Path(__file__).resolve().parents[1]
SKIP = "skipping"

pytestmark = pytest.mark.slow


def inv(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_stages_skip_when_unchanged_and_rerun_downstream(tmp_path: Path, sample_slice: Path) -> None:
    base = f"paths.root_dir={tmp_path} data=files data.path={sample_slice} preprocess.min_per_subject=10"
    pair_args = f"paths.root_dir={tmp_path} pairs.num_train=2000 pairs.num_eval=200"

    out = inv("preprocess", "--overrides", base)
    assert SKIP not in out and (tmp_path / "data" / "processed" / "train.parquet").exists()
    out = inv("pairs", "--overrides", pair_args)
    assert (
        SKIP not in out and read_json(tmp_path / "data" / "pairs" / "manifest.json")["files"]["train"]["rows"] == 2000
    )

    # Nothing changed: both skipped.
    assert SKIP in inv("preprocess", "--overrides", base)
    assert SKIP in inv("pairs", "--overrides", pair_args)

    # A pairs value changed: pairs re-runs, preprocess stays skipped.
    assert SKIP in inv("preprocess", "--overrides", base)
    assert SKIP not in inv("pairs", "--overrides", pair_args + " pairs.num_train=1500")
    assert read_json(tmp_path / "data" / "pairs" / "manifest.json")["files"]["train"]["rows"] == 1500

    # A preprocess value changed: preprocess re-runs, and pairs re-runs because its inputs changed.
    assert SKIP not in inv("preprocess", "--overrides", base + " preprocess.split.salt=other")
    assert SKIP not in inv("pairs", "--overrides", pair_args + " pairs.num_train=1500")

    # --force re-runs regardless.
    assert SKIP not in inv("pairs", "--force", "--overrides", pair_args + " pairs.num_train=1500")


def test_a_deleted_output_is_rebuilt(tmp_path: Path, sample_slice: Path) -> None:
    base = f"paths.root_dir={tmp_path} data=files data.path={sample_slice} preprocess.min_per_subject=10"
    inv("preprocess", "--overrides", base)
    (tmp_path / "data" / "processed" / "test.parquet").unlink()
    assert SKIP not in inv("preprocess", "--overrides", base)
    assert (tmp_path / "data" / "processed" / "test.parquet").exists()


def test_a_bad_override_exits_nonzero_with_the_key(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "arxiv_embeddings.preprocess",
            f"paths.root_dir={tmp_path}",
            "preprocess.split.train=0.5",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "preprocess.split" in proc.stderr and "sum to 1" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists()


def test_search_encoder_trains_on_title_abstract_pairs_in_their_own_folder(
    tmp_path: Path, processed_root: Path, tiny_model_dir: Path
) -> None:
    from helpers.train import FAST

    from arxiv_embeddings.config import compose
    from arxiv_embeddings.train import stage as train_stage

    shutil.copytree(processed_root / "data" / "processed", tmp_path / "data" / "processed")
    overrides = f"paths.root_dir={tmp_path} model.name={tiny_model_dir} pairs.num_eval=16 {' '.join(FAST)}"
    inv("search-encoder", "--pairs", "64", "--overrides", overrides)

    assert read_json(tmp_path / "data" / "pairs-search" / "manifest.json")["files"]["train"]["rows"] == 64
    assert not (tmp_path / "data" / "pairs").exists()  # the subject pairs' folder is not touched
    final = tmp_path / "models" / "search-encoder" / "final"
    summary = read_json(final / "train_summary.json")
    assert summary["pair_type"] == "title_abstract" and summary["global_step"] == 3
    assert summary["head"] is None and summary["search_model"] == "trained"
    assert read_json(final / "tasks.json")["tasks"]["search"] == "model"
    # a subject model can keep it for search
    train_stage.validate(compose("train", [f"paths.root_dir={tmp_path}", f"train.search_model={final}"]))

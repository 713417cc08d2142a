"""DVC: the committed remote config and data.dvc; add -> push to a local remote -> pull into a fresh clone."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "init.defaultBranch=main"]


def dvc(cwd: Path, *args: str) -> None:
    """Run a dvc command in ``cwd`` in this process (its CLI entry point, without a fresh interpreter per call)."""
    from dvc.cli import main

    old = Path.cwd()
    os.chdir(cwd)
    try:
        code = main(list(args))
    finally:
        os.chdir(old)
    assert code == 0, f"dvc {' '.join(args)} exited {code}"


def git(cwd: Path, *args: str) -> str:
    proc = subprocess.run([*GIT, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_committed_dvc_files_name_a_gcs_remote_and_track_data() -> None:
    text = (REPO / ".dvc" / "config").read_text()
    assert "['remote \"gcs\"']" in text and "remote = gcs" in text
    url = next(line.split("=", 1)[1].strip() for line in text.splitlines() if line.strip().startswith("url"))
    assert url.startswith("gs://")
    tracked = yaml.safe_load((REPO / "data.dvc").read_text())
    (out,) = tracked["outs"]
    assert out["path"] == "data" and out["md5"].endswith(".dir") and out["nfiles"] > 0


@pytest.mark.slow
def test_add_push_then_pull_into_a_fresh_clone_gives_the_same_bytes(
    tmp_path: Path, processed_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    origin, clone, remote = tmp_path / "origin", tmp_path / "clone", tmp_path / "remote"
    origin.mkdir()
    git(origin, "init", "-q")
    dvc(origin, "init", "-q")
    # The project's own DVC config (remote `gcs` on a bucket), with the remote moved to a local folder the way the
    # README says to point it at a bucket: a --local override that is not committed.
    shutil.copy(REPO / ".dvc" / "config", origin / ".dvc" / "config")
    dvc(origin, "remote", "modify", "--local", "gcs", "url", str(remote))
    shutil.copytree(processed_root / "data" / "processed", origin / "data" / "processed")
    (origin / "data" / "processed" / "nested").mkdir()
    (origin / "data" / "processed" / "nested" / "notes.txt").write_text("a file in a sub-folder\n")

    dvc(origin, "add", "-q", "data")
    git(origin, "add", ".dvc/config", ".dvc/.gitignore", ".dvcignore", "data.dvc", ".gitignore")
    git(origin, "commit", "-q", "-m", "data")
    dvc(origin, "push", "-q")
    assert any(p.is_file() for p in remote.rglob("*"))  # the objects are in the remote

    git(tmp_path, "clone", "-q", str(origin), str(clone))
    assert not (clone / "data").exists()  # git carries data.dvc, not the data
    dvc(clone, "remote", "modify", "--local", "gcs", "url", str(remote))
    dvc(clone, "pull", "-q")

    files = sorted(p.relative_to(origin / "data") for p in (origin / "data").rglob("*") if p.is_file())
    assert len(files) >= 5 and Path("processed/train.parquet") in files
    assert files == sorted(p.relative_to(clone / "data") for p in (clone / "data").rglob("*") if p.is_file())
    for rel in files:
        assert filecmp.cmp(origin / "data" / rel, clone / "data" / rel, shallow=False), rel

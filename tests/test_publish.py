"""publish: a user's runs go to reports/ (ignored), the published results/ change only through `inv publish`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from arxiv_embeddings.config import compose
from arxiv_embeddings.publish import RESULTS_DIR, publish

REPO = Path(__file__).resolve().parents[1]
RUNS = ("minilm-sample", "zero-shot", "tfidf")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A reports folder as the stages leave it: the committed runs, each with a stage stamp beside its files."""
    src = tmp_path / "reports"
    for run in RUNS:
        shutil.copytree(REPO / RESULTS_DIR / run, src / run)
        (src / run / ".stage-evaluate.json").write_text("{}")
    (src / ".stage-baseline.json").write_text("{}")
    return src


def test_the_stages_write_reports_where_git_ignores_them_not_into_the_published_results() -> None:
    for stage in ("evaluate", "baseline", "train", "index"):
        cfg = compose(stage, [])
        for key in ("reports_dir", "models_dir", "data_dir", "indexes_dir", "log_dir", "cache_dir"):
            path = Path(str(cfg.paths[key]))
            assert RESULTS_DIR not in path.parts, f"{stage}: paths.{key}={path} is inside the published results"
    if shutil.which("git") and (REPO / ".git").exists():
        for written in ("reports/minilm-sample/metrics.json", "reports/comparison.md", "models/x/final/a", "data/x"):
            ignored = subprocess.run(["git", "check-ignore", "-q", written], cwd=REPO, check=False)
            assert ignored.returncode == 0, f"{written} is not ignored by git: a pipeline run would dirty the tree"
        tracked = subprocess.run(["git", "ls-files", RESULTS_DIR], cwd=REPO, capture_output=True, text=True, check=True)
        assert "results/comparison.md" in tracked.stdout.split()


def test_publish_copies_the_runs_without_stamps_and_rebuilds_the_comparison(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "results"
    (dest / "older-run").mkdir(parents=True)
    shutil.copy2(source / "tfidf" / "metrics.json", dest / "older-run" / "metrics.json")
    (dest / "older-run" / "report.md").write_text("# older\n")

    assert publish(source, dest, ["minilm-sample", "zero-shot"]) == ["minilm-sample", "zero-shot"]
    for run in ("minilm-sample", "zero-shot"):
        assert (dest / run / "metrics.json").read_bytes() == (source / run / "metrics.json").read_bytes()
        assert sorted(p.name for p in (dest / run / "plots").glob("*.png")) == sorted(
            p.name for p in (source / run / "plots").glob("*.png")
        )
        assert not list((dest / run).glob(".stage-*"))
    assert not (dest / "tfidf").exists()  # not asked for
    comparison = (dest / "comparison.md").read_text()
    rows = [line.split(" | ")[0] for line in comparison.splitlines() if line.startswith("| `")]
    # The two published runs, and the run already there (named by its metrics: a copy of the TF-IDF run).
    assert sorted(rows) == ["| `minilm-sample`", "| `tfidf`", "| `zero-shot`"]


def test_publish_of_every_run_and_its_command_line(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "published"
    done = subprocess.run(
        [sys.executable, "-m", "arxiv_embeddings.cli", "publish", "--source", str(source), "--dest", str(dest)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in dest.iterdir() if p.is_dir()) == sorted(RUNS)
    rows = [line for line in (dest / "comparison.md").read_text().splitlines() if line.startswith("| `")]
    assert len(rows) == len(RUNS)


def test_publish_refuses_bad_input_and_publishes_nothing(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "results"
    with pytest.raises(FileNotFoundError, match=r"No report for run\(s\) nope .*minilm-sample, tfidf, zero-shot"):
        publish(source, dest, ["minilm-sample", "nope"])
    with pytest.raises(FileNotFoundError, match="run 'uv run inv pipeline'"):
        publish(tmp_path / "empty", dest)
    with pytest.raises(ValueError, match="same folder"):
        publish(source, source)

    shutil.copytree(source / "tfidf", dest / "tfidf")
    before = (dest / "tfidf" / "metrics.json").read_bytes()
    (source / "tfidf" / "metrics.json").write_text('{"truncated": ')
    with pytest.raises(ValueError, match=r"tfidf/metrics.json is not valid JSON"):
        publish(source, dest)
    # Checked before anything was copied: no run was published, the earlier copy is intact.
    assert sorted(p.name for p in dest.iterdir()) == ["tfidf"]
    assert (dest / "tfidf" / "metrics.json").read_bytes() == before
    json.loads(before)

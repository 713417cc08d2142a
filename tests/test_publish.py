"""publish: a user's runs go to reports/ (ignored), the published results/ change only through `inv publish`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
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
    comparison = (dest / "comparison.md").read_text().split("## Gain")[0]
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
    table = (dest / "comparison.md").read_text().split("## Gain")[0]
    assert len([line for line in table.splitlines() if line.startswith("| `")]) == len(RUNS)


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


# --------------------------------------------------------------------------------------- the generalization gate
def _report(root: Path, run: str, kind: str, test_p10: np.ndarray, fresh_p10: np.ndarray) -> None:
    ids = [f"t{i}" for i in range(len(test_p10))]
    fresh_ids = [f"f{i}" for i in range(len(fresh_p10))]
    metrics = {
        "run": run,
        "kind": kind,
        "data": {"test": {"papers": len(ids)}, "fresh": {"papers": len(fresh_ids), "subjects": 7}},
        "subject_retrieval": {
            "precision@10": float(test_p10.mean()),
            "per_query": {"arxiv_id": ids, "precision@10": test_p10.tolist(), "mrr@10": test_p10.tolist()},
        },
        "fresh_retrieval": {
            "precision@10": float(fresh_p10.mean()),
            "per_query": {"arxiv_id": fresh_ids, "precision@10": fresh_p10.tolist(), "mrr@10": fresh_p10.tolist()},
        },
    }
    (root / run).mkdir(parents=True)
    (root / run / "metrics.json").write_text(json.dumps(metrics))
    (root / run / "report.md").write_text(f"# {run}\n")


def test_gate_needs_the_whole_fresh_interval_above_zero_and_publish_refuses_a_failing_model(tmp_path: Path) -> None:
    from arxiv_embeddings.publish import GateError
    from arxiv_embeddings.report import gains_over_reference, load_reports

    rng = np.random.default_rng(0)
    test, fresh = rng.random(300), rng.random(400)
    src = tmp_path / "reports"
    _report(src, "zero-shot", "sentence-transformers", test, fresh)
    _report(src, "good", "sentence-transformers", test + 0.05, fresh + 0.02 + rng.normal(0, 0.01, 400))
    # Better on the test split, worse on the fresh papers: what the gate is for.
    _report(src, "overfit", "sentence-transformers", test + 0.05, fresh - 0.02)
    _report(src, "noise", "sentence-transformers", test, fresh + rng.normal(0, 0.05, 400))

    gains = {g["run"]: g for g in gains_over_reference(load_reports(src), "zero-shot", resamples=1000)}
    assert set(gains) == {"good", "overfit", "noise"}
    assert gains["good"]["gate"] == "pass" and gains["good"]["gains"]["fresh P@10"]["low"] > 0
    assert gains["overfit"]["gate"] == "fail" and gains["overfit"]["gains"]["test P@10"]["diff"] == pytest.approx(0.05)
    assert gains["noise"]["gate"] == "fail"  # an interval that holds 0 has not shown a gain
    low, high = gains["noise"]["gains"]["fresh P@10"]["low"], gains["noise"]["gains"]["fresh P@10"]["high"]
    assert low < 0 < high

    dest = tmp_path / "results"
    with pytest.raises(GateError, match=r"overfit: fresh P@10 gain -0\.0200 .*--allow-failing-gate"):
        publish(src, dest, ["zero-shot", "good", "overfit"])
    assert not dest.exists()
    assert publish(src, dest, ["zero-shot", "good"]) == ["zero-shot", "good"]
    comparison = (dest / "comparison.md").read_text()
    assert "## Gain over `zero-shot`" in comparison and "| `good` |" in comparison and "**yes**" in comparison
    assert publish(src, dest, ["overfit"], allow_failing_gate=True) == ["overfit"]
    assert "**no**" in (dest / "comparison.md").read_text()

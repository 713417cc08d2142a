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
def _report(
    root: Path, run: str, kind: str, test_p10: np.ndarray, fresh_p10: np.ndarray, fresh_r1: np.ndarray | None = None
) -> None:
    ids = [f"t{i}" for i in range(len(test_p10))]
    fresh_ids = [f"f{i}" for i in range(len(fresh_p10))]
    metrics: dict = {
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
    if fresh_r1 is not None:
        r1 = fresh_r1.tolist()
        metrics["fresh_title_abstract"] = {
            "recall@1": float(fresh_r1.mean()),
            "per_query": {"arxiv_id": fresh_ids, "recall@1": r1, "mrr@10": r1},
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


# ------------------------------------------------------------------------------------------- the search gate
def test_search_gate_is_a_point_comparison_of_fresh_r1_with_a_tolerance(tmp_path: Path) -> None:
    from arxiv_embeddings.publish import GateError
    from arxiv_embeddings.report import SEARCH_TOLERANCE, gains_over_reference, load_reports

    assert SEARCH_TOLERANCE == 0.005
    rng = np.random.default_rng(1)
    test, fresh = rng.random(300), rng.random(1000)
    better = fresh + 0.05  # beats zero-shot on the fresh papers: passes the generalization gate

    def r1(hits: int) -> np.ndarray:
        return (np.arange(1000) < hits).astype(float)

    src = tmp_path / "reports"
    _report(src, "zero-shot", "sentence-transformers", test, fresh, r1(900))
    _report(src, "within", "sentence-transformers", test, better, r1(896))  # 0.896 >= 0.900 - 0.005
    _report(src, "above", "sentence-transformers", test, better, r1(950))
    _report(src, "loses", "sentence-transformers", test, better, r1(894))  # 0.894 < 0.895
    _report(src, "old", "sentence-transformers", test, better)  # no fresh title -> abstract figures
    _report(src, "tfidf", "tfidf", test, fresh - 0.1, r1(500))  # a baseline is never gated

    gains = {g["run"]: g for g in gains_over_reference(load_reports(src), "zero-shot", resamples=500)}
    assert {r: gains[r]["search_gate"] for r in gains} == {
        "within": "pass",
        "above": "pass",
        "loses": "fail",
        "old": "not checked",
        "tfidf": "fail",
    }
    assert gains["loses"]["search"] == {"run": 0.894, "reference": 0.9, "n": 1000, "tolerance": 0.005}
    assert gains["loses"]["gate"] == "pass"  # it beats zero-shot on subjects: only search fails
    assert gains["loses"]["gains"]["fresh title→abstract R@1"]["diff"] == pytest.approx(-0.006)
    # A stricter tolerance fails the run within 0.005.
    strict = {g["run"]: g for g in gains_over_reference(load_reports(src), "zero-shot", 500, search_tolerance=0.0)}
    assert strict["within"]["search_gate"] == "fail" and strict["above"]["search_gate"] == "pass"

    dest = tmp_path / "results"
    with pytest.raises(GateError) as refused:
        publish(src, dest, ["zero-shot", "within", "loses"])
    message = str(refused.value)
    assert "loses loses search: title→abstract R@1 on the fresh papers 0.8940 against zero-shot's 0.9000" in message
    assert "more than 0.005 below" in message and "--allow-failing-gate" in message and "within" not in message
    assert not dest.exists()
    assert publish(src, dest, ["zero-shot", "within", "old", "tfidf"]) == ["zero-shot", "within", "old", "tfidf"]
    comparison = (dest / "comparison.md").read_text()
    assert "### Title → abstract retrieval" in comparison and "Keeps search on fresh papers" in comparison
    assert publish(src, dest, ["loses"], allow_failing_gate=True) == ["loses"]


@pytest.fixture(scope="module")
def tiny_features(tmp_path_factory: pytest.TempPathFactory, processed_root: Path, tiny_model_dir: Path, make_cfg):
    """The tiny model's features of the processed slice (and the fresh slices), and the config and data behind them."""
    from arxiv_embeddings.evaluation.data import load_data
    from arxiv_embeddings.evaluation.features import embed, load_encoder

    root = tmp_path_factory.mktemp("gate_root")
    cfg = make_cfg(
        "evaluate",
        root,
        [
            f"paths.processed_dir={processed_root / 'data' / 'processed'}",
            f"evaluate.model={tiny_model_dir}",
            "evaluate.encode.device=cpu",
            "evaluate.classification.max_train_papers=100",
            "evaluate.max_test_papers=60",
        ],
    )
    data = load_data(cfg)
    model, info = load_encoder(cfg)
    features = embed(model, data, cfg)
    features.info = info
    return cfg, data, features


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_publish_refuses_a_real_run_that_loses_search_and_passes_one_that_keeps_it(tiny_features) -> None:
    """Reports written by the evaluation itself (evaluate_features): a zero-shot run (the tiny model), a run whose
    fresh paper vectors carry their subject (beats zero-shot on the fresh papers) and one that also scrambles the
    fresh abstracts (loses title -> abstract search)."""
    from dataclasses import replace

    from arxiv_embeddings.evaluation.data import labels_of
    from arxiv_embeddings.evaluation.scoring import evaluate_features
    from arxiv_embeddings.evaluation.settings import report_dir
    from arxiv_embeddings.publish import GateError

    cfg, data, features = tiny_features
    fresh = np.asarray(features.fresh)
    _, codes = np.unique(labels_of(data.fresh), return_inverse=True)
    subject = np.eye(fresh.shape[1], dtype=np.float32)[codes % fresh.shape[1]]
    tuned = replace(features, fresh=_unit(fresh + 0.5 * subject))
    scrambled = np.roll(np.asarray(features.fresh_abstracts), 1, axis=0)  # title i now finds abstract i - 1
    for name, feats in (
        ("zero-shot", features),
        ("keeps-search", tuned),
        ("loses-search", replace(tuned, fresh_abstracts=scrambled)),
    ):
        evaluate_features(name, "tiny", feats, data, cfg)
    source = report_dir(cfg, "zero-shot").parent
    reports = {n: json.loads((source / n / "metrics.json").read_text()) for n in ("zero-shot", "loses-search")}
    zero_r1 = reports["zero-shot"]["fresh_title_abstract"]["recall@1"]
    lost_r1 = reports["loses-search"]["fresh_title_abstract"]["recall@1"]
    # Chance is 1/60: the tiny model finds titles' abstracts by shared words, the scrambled run far less (gate: 0.005).
    assert zero_r1 > 0.05 and lost_r1 < zero_r1 - 0.03

    dest = source.parent / "results"
    with pytest.raises(GateError) as refused:
        publish(source, dest, ["zero-shot", "keeps-search", "loses-search"])
    message = str(refused.value)
    assert f"loses-search loses search: title→abstract R@1 on the fresh papers {lost_r1:.4f}" in message
    assert f"against zero-shot's {zero_r1:.4f}" in message and "--allow-failing-gate" in message
    assert "keeps-search" not in message and "fresh P@10 gain" not in message  # both beat zero-shot on subjects
    assert not dest.exists()

    assert publish(source, dest, ["zero-shot", "keeps-search"]) == ["zero-shot", "keeps-search"]
    comparison = (dest / "comparison.md").read_text()
    row = next(
        line for line in comparison.split("### Title → abstract retrieval")[1].splitlines() if "keeps-search" in line
    )
    assert row.endswith("| **yes** |")
    assert "### Graded relatedness" in comparison and "natural Spearman gain" in comparison

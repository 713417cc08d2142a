"""The baseline stage (TF-IDF, zero-shot) shares evaluate's schema; compare puts every run side by side."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from arxiv_embeddings import baseline, evaluate
from arxiv_embeddings.config import ConfigError
from arxiv_embeddings.evaluation.settings import METRICS_KEYS
from arxiv_embeddings.report import COMPARE_COLUMNS, compare

SECTIONS = ("subject_retrieval", "title_abstract", "classification", "clustering")


def overrides(processed_root: Path, *extra: str) -> list[str]:
    return [
        f"paths.processed_dir={processed_root / 'data' / 'processed'}",
        "evaluate.encode.device=cpu",
        "evaluate.encode.max_seq_length=64",
        "evaluate.classification.max_train_papers=200",
        *extra,
    ]


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory, processed_root: Path, tiny_model_dir: Path, make_cfg) -> Path:
    """A project root whose reports/ holds the TF-IDF baseline and the tiny model's evaluation."""
    root = tmp_path_factory.mktemp("baseline_root")
    baseline.run(make_cfg("baseline", root, overrides(processed_root, "baseline.runs=[tfidf]")))
    shutil.copytree(tiny_model_dir, root / "models" / "tiny" / "final")
    evaluate.run(make_cfg("evaluate", root, overrides(processed_root, "evaluate.model=tiny")))
    return root / "reports"


def _metrics(reports: Path, run: str) -> dict:
    return json.loads((reports / run / "metrics.json").read_text())


def test_tfidf_has_the_schema_of_a_model_evaluation(reports: Path) -> None:
    tfidf, tiny = _metrics(reports, "tfidf"), _metrics(reports, "tiny")
    assert tuple(tfidf) == tuple(tiny) == METRICS_KEYS
    for section in SECTIONS:
        assert set(tfidf[section]) == set(tiny[section]), section
    assert tfidf["kind"] == "tfidf" and tfidf["model"] == "tfidf"
    assert tfidf["data"]["test"]["sha256"] == tiny["data"]["test"]["sha256"]
    assert tfidf["classification"]["num_train_papers"] == tiny["classification"]["num_train_papers"]
    assert tfidf["config"]["baseline"]["tfidf"]["ngram_max"] == 2
    for name in (
        "report.md",
        "plots/confusion_matrix.png",
        "plots/embedding_map.png",
        "plots/per_subject_precision.png",
    ):
        assert (reports / "tfidf" / name).stat().st_size > 0


def test_tfidf_numbers_are_those_of_a_lexical_baseline(reports: Path) -> None:
    m = _metrics(reports, "tfidf")
    n = m["data"]["test"]["papers"]
    # A title shares rare words with its own abstract: TF-IDF finds it most of the time.
    assert m["title_abstract"]["recall@1"] > 0.6
    # Same-subject papers share vocabulary: far better than chance on subject retrieval and classification.
    assert m["subject_retrieval"]["precision@1"] > 3 / m["num_subjects"]
    assert m["classification"]["accuracy"] > 2 / m["num_subjects"]
    assert m["features"]["dim"] > 1000 and m["subject_retrieval"]["corpus_size"] == n


def test_compare_builds_one_table_of_every_run(reports: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = compare(reports)
    written = (reports / "comparison.md").read_text()
    assert written == text
    printed = capsys.readouterr().out
    overview, _, by_task = text.partition("## Each task on each slice")
    table = [line for line in overview.splitlines() if line.startswith("|")]
    assert table[0].split("|")[1:-1] == [
        f" {h} " for h in ("Run", "Kind", "Test papers", *(c for c, _, _ in COMPARE_COLUMNS))
    ]
    rows = {line.split("|")[1].strip(): line for line in table[2:]}
    assert set(rows) == {"`tfidf`", "`tiny`"}
    ndcg = {run: _metrics(reports, run)["subject_retrieval"]["ndcg@10"] for run in ("tfidf", "tiny")}
    best = max(ndcg, key=ndcg.get)
    assert table[2].split("|")[1].strip() == f"`{best}`"  # rows ordered by NDCG@10
    assert f"**{ndcg[best]:.4f}**" in rows[f"`{best}`"]
    assert rows["`tfidf`"] in printed
    # One table per task, each on the test split and both fresh slices, said which is which.
    assert "balanced fresh papers" in by_task and "natural arXiv proportions" in by_task
    for title, header in (
        ("### Subject retrieval", "| Run | test P@10 | test MRR@10 | fresh P@10 | fresh MRR@10 | natural P@10 |"),
        ("### Title → abstract retrieval", "| Run | test R@1 | test MRR@10 | fresh R@1 | fresh MRR@10 | natural R@1 |"),
        ("### Graded relatedness", "| Run | test Spearman | fresh Spearman | natural Spearman |"),
    ):
        part = by_task.split(title)[1].split("###")[0]
        assert header in part and part in printed
        lines = {line.split("|")[1].strip(): line for line in part.splitlines() if line.startswith("| `")}
        assert set(lines) == {"`tfidf`", "`tiny`"} and "–" not in lines["`tfidf`"]
    natural = _metrics(reports, "tiny")["fresh_natural_title_abstract"]["recall@1"]
    assert f"{natural:.4f}" in by_task.split("### Title → abstract retrieval")[1].split("###")[0]


def test_tfidf_graded_score_uses_the_same_pairs_and_gains_are_bootstrapped(reports: Path) -> None:
    """Sparse TF-IDF rows get cosines of the same pairs as the tiny model's, so every gain (15: three tasks on three
    sets of papers) is paired, the graded ones over the pairs."""
    from scipy.stats import spearmanr

    from arxiv_embeddings.report import GAIN_METRICS, gains_over_reference, load_reports

    tfidf, tiny = _metrics(reports, "tfidf"), _metrics(reports, "tiny")
    for key in ("graded", "fresh_graded", "fresh_natural_graded"):
        a, b = tfidf[key]["per_pair"], tiny[key]["per_pair"]
        assert (a["a"], a["b"], a["overlap"]) == (b["a"], b["b"], b["overlap"]) and a["cosine"] != b["cosine"]
        assert all(-1e-6 <= c <= 1 + 1e-6 for c in a["cosine"])  # TF-IDF rows are non-negative
        assert tfidf[key]["spearman"] == pytest.approx(spearmanr(a["cosine"], a["overlap"]).statistic, abs=1e-4)
    # TF-IDF sees shared vocabulary: same-subject pairs (overlap > 0) are more similar than random ones.
    assert tfidf["graded"]["spearman"] > 0.1

    (gains,) = gains_over_reference(load_reports(reports), "tiny", resamples=300)
    assert gains["run"] == "tfidf" and set(gains["gains"]) == {label for label, _, _ in GAIN_METRICS}
    graded = gains["gains"]["test Spearman"]
    assert graded["a"] == pytest.approx(tfidf["graded"]["spearman"], abs=1e-4)
    assert graded["b"] == pytest.approx(tiny["graded"]["spearman"], abs=1e-4)
    assert graded["n"] == tiny["graded"]["num_pairs"] and graded["low"] <= graded["diff"] <= graded["high"]
    search = gains["gains"]["fresh title→abstract R@1"]
    assert search["n"] == tiny["fresh_title_abstract"]["num_queries"]
    assert search["a"] == pytest.approx(tfidf["fresh_title_abstract"]["recall@1"], abs=1e-5)
    assert gains["search_gate"] == ("pass" if search["a"] >= search["b"] - 0.005 else "fail")


def test_compare_without_reports_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="uv run inv evaluate"):
        compare(tmp_path)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("baseline.runs=[bm25]", "baseline.runs"),
        ("baseline.runs=[]", "baseline.runs"),
        ("baseline.zero_shot.name=tfidf", "baseline.zero_shot.name"),
        ("baseline.tfidf.max_df=1.5", "baseline.tfidf.max_df"),
        ("evaluate.text=body", "evaluate.text"),
    ],
)
def test_validation_names_the_key(override: str, key: str, tmp_path: Path, make_cfg) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        baseline.validate(make_cfg("baseline", tmp_path, [override]))


def test_missing_processed_data_names_the_command(tmp_path: Path, make_cfg) -> None:
    with pytest.raises(FileNotFoundError, match="uv run inv preprocess"):
        baseline.run(make_cfg("baseline", tmp_path, ["baseline.runs=[tfidf]"]))


def test_missing_zero_shot_model(tmp_path: Path, processed_root: Path, make_cfg) -> None:
    cfg = make_cfg("baseline", tmp_path, overrides(processed_root, "baseline.zero_shot.model=/no/such/model"))
    with pytest.raises(FileNotFoundError, match="Model path not found"):
        baseline.run(cfg)
    assert not (tmp_path / "reports").exists()  # checked before any baseline ran


@pytest.mark.slow
def test_zero_shot_minilm_loads_offline_and_beats_the_random_model(
    reports: Path, processed_root: Path, make_cfg
) -> None:
    cfg = make_cfg(
        "baseline",
        reports.parent,
        overrides(
            processed_root,
            "baseline.runs=[zero_shot]",
            "evaluate.encode.max_seq_length=128",
            "evaluate.classification.max_train_papers=60",
        ),
    )
    result = baseline.run(cfg)["runs"]["zero-shot"]
    m = result["metrics"]
    assert result["dir"] == reports / "zero-shot"
    assert tuple(m) == METRICS_KEYS
    assert m["model"] == "sentence-transformers/all-MiniLM-L6-v2" and m["features"]["dim"] == 384
    tiny = _metrics(reports, "tiny")
    assert m["subject_retrieval"]["ndcg@10"] > tiny["subject_retrieval"]["ndcg@10"] + 0.1
    assert m["title_abstract"]["recall@1"] > 0.8


@pytest.mark.slow
def test_compare_command_line(reports: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "arxiv_embeddings.compare",
            f"paths.reports_dir={reports}",
            "hydra.run.dir=.",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=reports.parent,
    )
    assert done.returncode == 0, done.stderr
    assert "| `tfidf` |" in done.stdout
    assert (reports / "comparison.md").exists()

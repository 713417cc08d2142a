"""The evaluate stage on the processed slice with a tiny random model: the report, its schema, and its errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from arxiv_embeddings import evaluate
from arxiv_embeddings.config import ConfigError
from arxiv_embeddings.evaluation.data import fresh_path, graded_pairs, labels_of, load_fresh
from arxiv_embeddings.evaluation.settings import (
    FRESH_FILE,
    FRESH_NATURAL_FILE,
    METRICS_KEYS,
    local_model_dir,
    report_name,
)
from arxiv_embeddings.layout import ModelNotFoundError
from arxiv_embeddings.runner import execute

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TRAIN_CAP = 200


def eval_overrides(processed_root: Path, *extra: str) -> list[str]:
    """Read the shared processed splits; write everything else under the test's own root."""
    return [
        f"paths.processed_dir={processed_root / 'data' / 'processed'}",
        "evaluate.encode.device=cpu",
        "evaluate.encode.max_seq_length=64",  # the tiny model's own length; keeps encoding fast on CPU
        f"evaluate.classification.max_train_papers={TRAIN_CAP}",
        *extra,
    ]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A project root with the tiny model saved as the final model of run 'tiny'."""
    root = tmp_path_factory.mktemp("evaluate_root")
    shutil.copytree(tiny_model_dir, root / "models" / "tiny" / "final")
    return root


@pytest.fixture(scope="module")
def tiny_result(project: Path, processed_root: Path, make_cfg) -> dict:
    cfg = make_cfg("evaluate", project, eval_overrides(processed_root, "run_name=tiny"))
    assert cfg.evaluate.model == "tiny"  # by default, the model this run trained
    return evaluate.run(cfg)


def test_run_name_resolves_to_the_final_model_and_writes_the_report(tiny_result: dict, project: Path) -> None:
    out = project / "reports" / "tiny"
    assert tiny_result["dir"] == out
    metrics = json.loads((out / "metrics.json").read_text())
    assert tuple(metrics) == METRICS_KEYS
    assert metrics["run"] == "tiny" and metrics["kind"] == "sentence-transformers" and metrics["split"] == "test"
    assert metrics["features"]["model_path"] == str(project / "models" / "tiny" / "final")
    for name in ("per_subject_precision.png", "confusion_matrix.png", "embedding_map.png"):
        data = (out / "plots" / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000, name
    report = (out / "report.md").read_text()
    for heading in ("## Subject retrieval", "## Title → abstract retrieval", "## Classification", "## Clustering"):
        assert heading in report
    assert "](plots/confusion_matrix.png)" in report
    assert not list(project.joinpath("reports").glob(".tiny.tmp-*"))  # the atomic folder was renamed into place


def test_metrics_describe_the_test_split(tiny_result: dict, processed_root: Path) -> None:
    m = tiny_result["metrics"]
    test = pq.read_table(processed_root / "data" / "processed" / "test.parquet")
    train = pq.read_table(processed_root / "data" / "processed" / "train.parquet")
    labels = np.array(test.column("primary_subject").to_pylist())
    names, counts = np.unique(labels, return_counts=True)
    assert m["data"]["test"]["papers"] == test.num_rows and m["num_subjects"] == len(names)

    sr = m["subject_retrieval"]
    assert sr["corpus_size"] == test.num_rows
    assert sr["num_queries"] == int(counts[counts > 1].sum())  # papers alone in their subject have nothing to find
    wanted = {f"{n}@{k}" for n in ("precision", "recall", "accuracy") for k in (1, 5, 10)} | {
        "mrr@10",
        "ndcg@10",
        "map@100",
    }
    assert wanted <= set(sr)
    assert all(0.0 <= sr[k] <= 1.0 for k in wanted)
    # The overall P@10 is the query-weighted mean of the per-subject P@10.
    per = sr["per_subject"]
    assert set(per) == set(names[counts > 1].tolist())
    weighted = sum(v["precision@10"] * v["queries"] for v in per.values()) / sum(v["queries"] for v in per.values())
    assert sr["precision@10"] == pytest.approx(weighted)

    ta = m["title_abstract"]
    ranks = {f"{m}@{k}" for m in ("recall", "precision") for k in (1, 10)}
    assert set(ta) == {"num_queries", "corpus_size", "mrr@10", "search", "per_query", *ranks}
    # Each title's figures, by arxiv id, for the paired bootstrap: every test paper is a query, in the split's order.
    assert ta["per_query"]["arxiv_id"] == test.column("arxiv_id").to_pylist()
    for key in ("recall@1", "mrr@10"):
        assert np.mean(ta["per_query"][key]) == pytest.approx(ta[key], abs=1e-5)
    assert set(ta["per_query"]["recall@1"]) <= {0.0, 1.0}
    assert ta["search"] == "faiss-flat"  # a FAISS index of the abstracts
    assert ta["num_queries"] == ta["corpus_size"] == test.num_rows
    assert ta["precision@10"] == pytest.approx(ta["recall@10"] / 10)  # one relevant abstract per title
    # Even a random tiny BERT puts a title near its own abstract (shared words) far more often than chance (1/n).
    assert ta["recall@1"] > 5 / test.num_rows
    assert ta["recall@1"] <= ta["mrr@10"] <= ta["recall@10"]

    cl = m["classification"]
    assert train.num_rows > TRAIN_CAP and cl["num_train_papers"] == TRAIN_CAP
    assert np.asarray(cl["confusion_matrix"]).sum() == test.num_rows
    assert np.trace(np.asarray(cl["confusion_matrix"])) / test.num_rows == pytest.approx(cl["accuracy"])
    assert set(names.tolist()) <= set(cl["per_class"])
    assert m["clustering"]["k"] == len(names) and 0.0 <= m["clustering"]["v_measure"] <= 1.0


def test_caps_are_seeded_and_the_stage_skips_when_unchanged(project: Path, processed_root: Path, make_cfg) -> None:
    overrides = eval_overrides(
        processed_root,
        "evaluate.model=tiny",
        "evaluate.report_name=tiny-capped",
        "evaluate.max_test_papers=30",
        "evaluate.classification.max_train_papers=40",
    )
    cfg = make_cfg("evaluate", project, overrides)
    first = execute(evaluate.SPEC, cfg)
    assert first is not None
    m = first["metrics"]
    assert m["data"]["test"]["papers"] == 30 and m["classification"]["num_train_papers"] == 40
    assert execute(evaluate.SPEC, cfg) is None  # same config, same inputs, outputs intact: skipped
    again = evaluate.run(cfg)["metrics"]
    assert again["subject_retrieval"]["precision@10"] == m["subject_retrieval"]["precision@10"]
    assert again["classification"]["accuracy"] == m["classification"]["accuracy"]


@pytest.mark.slow
def test_tsne_map(tmp_path: Path) -> None:
    from arxiv_embeddings.report import plot_map, project_2d

    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b", "c"], 15)
    vectors = rng.normal(size=(45, 16))
    vectors[:, 0] += np.array([{"a": 0.0, "b": 10.0, "c": -10.0}[x] for x in labels])  # three separated groups
    coords = project_2d(vectors, "tsne", seed=0)
    assert coords.shape == (45, 2) and np.isfinite(coords).all()
    # t-SNE keeps the three well-separated groups apart: each point's nearest neighbour is in its own group.
    dist = np.linalg.norm(coords[:, None] - coords[None], axis=2) + np.eye(45) * 1e9
    assert (labels[dist.argmin(axis=1)] == labels).mean() > 0.95
    path = plot_map(tmp_path / "map.png", coords, labels, max_legend=2, title="t-SNE")
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_a_model_folder_path_and_report_name(project: Path, processed_root: Path, make_cfg) -> None:
    model = project / "models" / "tiny" / "final"
    cfg = make_cfg("evaluate", project, eval_overrides(processed_root, f"evaluate.model={model}"))
    assert report_name(cfg) == "tiny"
    assert local_model_dir(cfg) == model
    hub = make_cfg("evaluate", project, ["evaluate.model=sentence-transformers/all-MiniLM-L6-v2"])
    assert report_name(hub) == "all-MiniLM-L6-v2"
    assert local_model_dir(hub) is None


@pytest.mark.parametrize(
    ("model", "match"),
    [
        ("no-such-run", r"models/no-such-run/final.*uv run inv train"),
        ("/no/such/model/folder", r"Model path not found: /no/such/model/folder"),
    ],
)
def test_missing_model_says_what_was_expected(
    model: str, match: str, tmp_path: Path, processed_root: Path, make_cfg
) -> None:
    cfg = make_cfg("evaluate", tmp_path, eval_overrides(processed_root, f"evaluate.model={model}"))
    with pytest.raises(ModelNotFoundError, match=match):
        evaluate.run(cfg)
    assert not (tmp_path / "reports").exists()


def test_a_folder_that_is_not_a_model(tmp_path: Path, processed_root: Path, make_cfg) -> None:
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "weights.txt").write_text("nothing")
    cfg = make_cfg("evaluate", tmp_path, eval_overrides(processed_root, f"evaluate.model={folder}"))
    with pytest.raises(ModelNotFoundError, match=r"not a sentence-transformers model.*modules\.json"):
        evaluate.run(cfg)


def test_missing_processed_data_names_the_command(tmp_path: Path, tiny_model_dir: Path, make_cfg) -> None:
    cfg = make_cfg("evaluate", tmp_path, [f"evaluate.model={tiny_model_dir}"])
    with pytest.raises(FileNotFoundError, match=r"data/processed/test\.parquet.*uv run inv preprocess"):
        evaluate.run(cfg)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("evaluate.text=body", "evaluate.text"),
        ("evaluate.retrieval.per_subject_at=3", "evaluate.retrieval.per_subject_at"),
        ("evaluate.retrieval.ndcg_at=[0]", "evaluate.retrieval.ndcg_at"),
        ("evaluate.classification.max_train_papers=0", "evaluate.classification.max_train_papers"),
        ("evaluate.encode.precision=int8", "evaluate.encode.precision"),
        ("evaluate.report_name=../elsewhere", "evaluate.report_name"),
        ("evaluate.fresh.min_per_subject=1", "evaluate.fresh.min_per_subject"),
        ("evaluate.fresh.enabled=maybe", "evaluate.fresh.enabled"),
        ("evaluate.bootstrap.confidence=95", "evaluate.bootstrap.confidence"),
        ("evaluate.fresh_natural.min_per_subject=1", "evaluate.fresh_natural.min_per_subject"),
        ("evaluate.fresh_natural.enabled=sometimes", "evaluate.fresh_natural.enabled"),
        ("evaluate.graded.pairs=0", "evaluate.graded.pairs"),
        ("evaluate.graded.same_subject_fraction=1.5", "evaluate.graded.same_subject_fraction"),
        ("evaluate.graded.enabled=yes-please", "evaluate.graded.enabled"),
    ],
)
def test_validation_names_the_key(override: str, key: str, tmp_path: Path, make_cfg) -> None:
    cfg = make_cfg("evaluate", tmp_path, ["evaluate.model=tiny", override])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        evaluate.validate(cfg)


def test_model_must_not_be_empty(tmp_path: Path, make_cfg) -> None:
    with pytest.raises(ConfigError, match=r"evaluate\.model"):
        evaluate.validate(make_cfg("evaluate", tmp_path, ["evaluate.model=''"]))


# ------------------------------------------------------------------------------------- generalization check
def test_fresh_papers_are_scored_with_per_query_figures(tiny_result: dict, fresh_slice: Path) -> None:
    metrics = tiny_result["metrics"]
    fresh, info = metrics["fresh_retrieval"], metrics["data"]["fresh"]
    papers = pq.read_table(fresh_slice).to_pandas()
    assert info["path"] == str(fresh_slice) and info["file_papers"] == len(papers) and info["dropped_seen"] == 0
    assert fresh["num_queries"] == info["papers"] == len(papers) and fresh["corpus_size"] == len(papers)
    assert 0.0 < fresh["precision@10"] <= 1.0
    per_query = fresh["per_query"]
    assert sorted(per_query["arxiv_id"]) == sorted(papers.arxiv_id)
    assert np.mean(per_query["precision@10"]) == pytest.approx(fresh["precision@10"], abs=1e-5)
    test_ids = set(metrics["subject_retrieval"]["per_query"]["arxiv_id"])
    assert len(test_ids) == metrics["subject_retrieval"]["num_queries"] and not test_ids & set(per_query["arxiv_id"])
    report = (tiny_result["dir"] / "report.md").read_text()
    assert "## Generalization check: fresh papers" in report


def test_fresh_papers_that_a_split_holds_are_left_out(
    tmp_path: Path, project: Path, processed_root: Path, fresh_slice: Path, make_cfg
) -> None:
    """A fresh file that overlaps the processed data (e.g. training on the corpus it came from): those papers are
    dropped, by id or by abstract, and subjects left too small go with them."""
    import pandas as pd

    fresh = pq.read_table(fresh_slice).to_pandas()
    test = pq.read_table(processed_root / "data" / "processed" / "test.parquet").to_pandas()
    train = pq.read_table(processed_root / "data" / "processed" / "train.parquet").to_pandas()
    same_abstract = train.iloc[:3][["title", "abstract", "primary_subject"]].assign(arxiv_id=["x1", "x2", "x3"])
    lonely = fresh.iloc[:4].assign(primary_subject="cs.LONELY", arxiv_id=lambda d: "lonely" + d.arxiv_id)
    cols = ["arxiv_id", "title", "abstract", "primary_subject"]
    mixed = pd.concat([fresh[cols], test.iloc[:5][cols], same_abstract[cols], lonely[cols]], ignore_index=True)
    path = tmp_path / "mixed.parquet"
    mixed.to_parquet(path)
    cfg = make_cfg("evaluate", project, eval_overrides(processed_root, "run_name=tiny", f"evaluate.fresh.path={path}"))
    kept, info = load_fresh(cfg)
    assert info["file_papers"] == len(mixed) and info["dropped_seen"] == 8
    assert info["dropped_small_subjects"] == 4  # 4 < evaluate.fresh.min_per_subject (5)
    assert sorted(kept.column("arxiv_id").to_pylist()) == sorted(fresh.arxiv_id)

    with pytest.raises(FileNotFoundError, match=r"evaluate\.fresh\.path=.*evaluate\.fresh\.enabled=false"):
        load_fresh(make_cfg("evaluate", project, [f"evaluate.fresh.path={tmp_path / 'none.parquet'}"]))


def test_fresh_check_off_and_each_model_at_its_own_length(
    project: Path, processed_root: Path, make_cfg, tiny_model_dir: Path
) -> None:
    overrides = [o for o in eval_overrides(processed_root, "run_name=tiny") if "max_seq_length" not in o]
    cfg = make_cfg(
        "evaluate",
        project,
        [*overrides, "evaluate.fresh.enabled=false", "evaluate.encode.max_seq_length=null", "evaluate.report_name=own"],
    )
    metrics = evaluate.run(cfg)["metrics"]
    assert metrics["fresh_retrieval"] is None and "fresh" not in metrics["data"]
    assert metrics["fresh_title_abstract"] is None and metrics["fresh_graded"] is None
    # The natural slice and the graded score are on by default.
    assert metrics["fresh_natural_retrieval"]["num_queries"] > 0 and metrics["graded"]["num_pairs"] > 0
    from sentence_transformers import SentenceTransformer

    own = SentenceTransformer(str(tiny_model_dir), device="cpu").max_seq_length
    assert metrics["features"]["max_seq_length"] == own


def test_checks_off_leave_their_sections_empty(project: Path, processed_root: Path, make_cfg) -> None:
    cfg = make_cfg(
        "evaluate",
        project,
        eval_overrides(
            processed_root,
            "run_name=tiny",
            "evaluate.report_name=no-extras",
            "evaluate.max_test_papers=40",
            "evaluate.fresh_natural.enabled=false",
            "evaluate.graded.enabled=false",
        ),
    )
    metrics = evaluate.run(cfg)["metrics"]
    assert tuple(metrics) == METRICS_KEYS
    assert "fresh_natural" not in metrics["data"]
    for key in ("fresh_natural_retrieval", "fresh_natural_title_abstract", "graded", "fresh_graded"):
        assert metrics[key] is None, key
    assert metrics["fresh_retrieval"]["num_queries"] > 0 and metrics["fresh_title_abstract"]["num_queries"] > 0


# ------------------------------------------------------------------------------------- search on fresh papers
def test_fresh_titles_are_searched_among_their_abstracts(tiny_result: dict, fresh_slice: Path) -> None:
    metrics = tiny_result["metrics"]
    ta, subject = metrics["fresh_title_abstract"], metrics["fresh_retrieval"]
    papers = pq.read_table(fresh_slice)
    assert ta["num_queries"] == ta["corpus_size"] == papers.num_rows == subject["corpus_size"]
    assert ta["search"] == "faiss-flat"
    assert ta["per_query"]["arxiv_id"] == papers.column("arxiv_id").to_pylist()
    for key in ("recall@1", "mrr@10"):
        assert np.mean(ta["per_query"][key]) == pytest.approx(ta[key], abs=1e-5)
    # A random tiny BERT still finds a title's own abstract far more often than chance (shared words).
    assert ta["recall@1"] > 5 / papers.num_rows
    report = (tiny_result["dir"] / "report.md").read_text()
    assert "Title → abstract retrieval among the same papers" in report


# ------------------------------------------------------------------------------- fresh papers, natural proportions
def test_the_natural_slice_is_scored_beside_the_balanced_one(tiny_result: dict, fresh_natural_slice: Path) -> None:
    metrics = tiny_result["metrics"]
    info = metrics["data"]["fresh_natural"]
    papers = pq.read_table(fresh_natural_slice).to_pandas()
    counts = papers.primary_subject.value_counts()
    small = counts[counts < 5]  # evaluate.fresh_natural.min_per_subject
    assert info["path"] == str(fresh_natural_slice) and info["file_papers"] == len(papers)
    assert info["dropped_seen"] == 0 and info["dropped_small_subjects"] == small.sum() > 0
    assert info["papers"] == len(papers) - small.sum() and info["subjects"] == (counts >= 5).sum()
    kept = sorted(papers.arxiv_id[~papers.primary_subject.isin(small.index)])

    subject = metrics["fresh_natural_retrieval"]
    assert subject["corpus_size"] == info["papers"] and subject["num_subjects"] == info["subjects"]
    assert sorted(subject["per_query"]["arxiv_id"]) == kept
    for key in ("precision@10", "mrr@10"):
        assert np.mean(subject["per_query"][key]) == pytest.approx(subject[key], abs=1e-5)
    ta = metrics["fresh_natural_title_abstract"]
    assert sorted(ta["per_query"]["arxiv_id"]) == kept and ta["num_queries"] == info["papers"]
    assert np.mean(ta["per_query"]["recall@1"]) == pytest.approx(ta["recall@1"], abs=1e-5)
    report = (tiny_result["dir"] / "report.md").read_text()
    assert "## Generalization check: fresh papers in natural proportions" in report


def test_shipped_natural_slice_is_a_random_draw_outside_the_sample_and_the_balanced_papers() -> None:
    from arxiv_embeddings.papers import SAMPLE_PATH

    natural = pq.read_table(SAMPLE_PATH.parent / FRESH_NATURAL_FILE).to_pandas()
    assert len(natural) == 2000 and natural.arxiv_id.is_unique and natural.abstract.is_unique
    for other in (SAMPLE_PATH, SAMPLE_PATH.parent / FRESH_FILE):
        table = pq.read_table(other).to_pandas()
        assert not set(natural.arxiv_id) & set(table.arxiv_id) and not set(natural.abstract) & set(table.abstract)
    counts = natural.primary_subject.value_counts()
    # Natural proportions, not 15 per subject: cs.CV, the corpus's largest subject (12.8%), leads by far.
    assert counts.index[0] == "cs.CV" and 200 < counts.iloc[0] < 330 and counts.min() == 1
    assert natural.subjects.map(len).min() >= 1


def test_a_missing_natural_slice_names_its_key(project: Path, processed_root: Path, tmp_path: Path, make_cfg) -> None:
    cfg = make_cfg("evaluate", project, [f"evaluate.fresh_natural.path={tmp_path / 'none.parquet'}"])
    with pytest.raises(
        FileNotFoundError, match=r"evaluate\.fresh_natural\.path=.*evaluate\.fresh_natural\.enabled=false"
    ):
        load_fresh(cfg, "fresh_natural")
    bad = tmp_path / "no-abstracts.parquet"
    pq.write_table(pq.read_table(fresh_path(cfg, "fresh")).drop_columns(["abstract"]), bad)
    cfg = make_cfg("evaluate", project, eval_overrides(processed_root, f"evaluate.fresh_natural.path={bad}"))
    with pytest.raises(ConfigError, match=r"evaluate\.fresh_natural\.path: .* no column\(s\) abstract"):
        load_fresh(cfg, "fresh_natural")


# ------------------------------------------------------------------------------------------------- graded
def test_graded_score_on_the_test_papers_and_both_fresh_slices(
    tiny_result: dict, processed_root: Path, fresh_slice: Path, fresh_natural_slice: Path
) -> None:
    from scipy.stats import spearmanr

    metrics = tiny_result["metrics"]
    for key, path in (
        ("graded", processed_root / "data" / "processed" / "test.parquet"),
        ("fresh_graded", fresh_slice),
        ("fresh_natural_graded", fresh_natural_slice),
    ):
        g = metrics[key]
        papers = pq.read_table(path).to_pandas().set_index("arxiv_id")
        pairs = g["per_pair"]
        assert len(pairs["a"]) == len(pairs["b"]) == len(pairs["cosine"]) == len(pairs["overlap"]) == g["num_pairs"]
        assert 0 < g["num_pairs"] <= 2000
        assert len(set(zip(pairs["a"], pairs["b"], strict=True))) == g["num_pairs"]  # distinct pairs
        # The overlap is the Jaccard of the two papers' subject lists.
        for a, b, overlap in list(zip(pairs["a"], pairs["b"], pairs["overlap"], strict=True))[:200]:
            x, y = set(papers.subjects[a]), set(papers.subjects[b])
            assert overlap == pytest.approx(len(x & y) / len(x | y), abs=1e-6)
        pair_ids = list(zip(pairs["a"], pairs["b"], strict=True))
        same = sum(papers.primary_subject[a] == papers.primary_subject[b] for a, b in pair_ids)
        # evaluate.graded.same_subject_fraction=0.5: 1,000 of one subject, or every such pair when there are fewer.
        sizes = papers.primary_subject.value_counts()
        assert g["same_subject_pairs"] == same >= min(1000, int((sizes * (sizes - 1) // 2).sum()))
        assert g["spearman"] == pytest.approx(spearmanr(pairs["cosine"], pairs["overlap"]).statistic, abs=1e-4)
        assert -1 <= g["spearman"] <= 1 and all(-1.0001 <= c <= 1.0001 for c in pairs["cosine"])
    report = (tiny_result["dir"] / "report.md").read_text()
    assert "## Graded relatedness" in report and "fresh papers (natural proportions)" in report


def test_graded_pairs_are_seeded_distinct_and_half_of_one_subject(processed_root: Path) -> None:
    table = pq.read_table(processed_root / "data" / "processed" / "train.parquet")
    a, b, overlap = graded_pairs(table, 1000, 0.5, seed=42, stream="test")
    again = graded_pairs(table, 1000, 0.5, seed=42, stream="test")
    other = graded_pairs(table, 1000, 0.5, seed=42, stream="fresh")
    assert all(np.array_equal(x, y) for x, y in zip((a, b, overlap), again, strict=True))
    assert not np.array_equal(a, other[0])  # another stream, other pairs
    assert (a < b).all() and len(set(zip(a.tolist(), b.tolist(), strict=True))) == len(a) == 1000
    labels = labels_of(table)
    same = labels[a] == labels[b]
    assert same[:500].all()  # 500 drawn of one subject first
    assert 0.5 <= same.mean() <= 0.56  # and a few of the random pairs share one too
    assert (overlap[same] > 0).all() and overlap[~same].mean() < overlap[same].mean()
    assert len(np.unique(overlap)) > 3  # graded, not 0 / 1
    a0, b0, _ = graded_pairs(table, 500, 0.0, seed=42, stream="test")
    assert (labels[a0] == labels[b0]).mean() < 0.2  # random pairs only

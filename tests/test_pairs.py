"""pairs: every pair type has the properties its loss relies on, reproducibly, from the right split only."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from arxiv_embeddings import pairs
from arxiv_embeddings.config import ConfigError, compose
from arxiv_embeddings.io import file_sha256, read_json
from arxiv_embeddings.pair_format import SubjectIndex


@pytest.fixture
def root(tmp_path: Path, processed_root: Path) -> Path:
    shutil.copytree(processed_root / "data" / "processed", tmp_path / "data" / "processed")
    return tmp_path


def _run(root: Path, *overrides: str) -> dict:
    return pairs.run(
        compose("pairs", [f"paths.root_dir={root}", "pairs.num_train=4000", "pairs.num_eval=300", *overrides])
    )


def _read(root: Path, split: str = "train"):
    d = root / "data" / "pairs"
    return pq.read_table(d / f"{split}.parquet").to_pandas(), pq.read_table(d / f"{split}_meta.parquet").to_pandas()


def _papers(root: Path, split: str):
    return pq.read_table(root / "data" / "processed" / f"{split}.parquet").to_pandas().set_index("arxiv_id")


def test_anchor_positive_pairs_share_a_subject_and_are_different_papers(root: Path) -> None:
    _run(root, "pairs=anchor_positive", "pairs.negatives=true", "pairs.text=abstract")
    table, meta = _read(root)
    assert list(table.columns) == ["anchor", "positive", "negative"]
    assert len(table) == 4000
    assert (meta.a_subject == meta.b_subject).all()
    assert (meta.a_id != meta.b_id).all()
    assert (meta.neg_subject != meta.a_subject).all()
    papers = _papers(root, "train")
    assert (table.anchor.to_numpy() == papers.loc[meta.a_id, "abstract"].to_numpy()).all()
    assert (table.negative.to_numpy() == papers.loc[meta.neg_id, "abstract"].to_numpy()).all()


def test_balanced_sampling_is_uniform_over_subjects_and_frequency_follows_size(root: Path) -> None:
    sizes = _papers(root, "train").primary_subject.value_counts()
    _run(root, "pairs.sampling=balanced", "pairs.num_train=20000")
    counts = Counter(_read(root)[1].a_subject)
    expected = 20000 / len(sizes)
    assert set(counts) == set(sizes.index)
    assert all(abs(c - expected) < 0.15 * expected for c in counts.values())

    _run(root, "pairs.sampling=frequency", "pairs.num_train=20000")
    counts = Counter(_read(root)[1].a_subject)
    share = {s: counts[s] / 20000 for s in sizes.index}
    assert all(abs(share[s] - sizes[s] / sizes.sum()) < 0.02 for s in sizes.index)


def test_contrastive_labels_match_subjects(root: Path) -> None:
    _run(root, "pairs=contrastive", "pairs.positive_fraction=0.3")
    table, meta = _read(root)
    assert list(table.columns) == ["sentence1", "sentence2", "label"]
    assert ((meta.a_subject == meta.b_subject).astype(int) == table.label).all()
    assert table.label.sum() == 1200


def test_graded_scores_are_the_jaccard_overlap_of_subjects(root: Path) -> None:
    _run(root, "pairs=graded")
    table, meta = _read(root)
    assert list(table.columns) == ["sentence1", "sentence2", "score"]
    papers = _papers(root, "train")
    for k in range(0, 4000, 97):
        a, b = set(papers.loc[meta.a_id[k], "subjects"]), set(papers.loc[meta.b_id[k], "subjects"])
        assert table.score[k] == pytest.approx(len(a & b) / len(a | b))
    assert table.score.min() == 0.0 and table.score.max() == 1.0
    assert 0.1 < (table.score == 0).mean() < 0.9


def test_labelled_rows_are_papers_with_their_subject_code(root: Path) -> None:
    _run(root, "pairs=labelled", "pairs.text=title")
    table, meta = _read(root)
    assert list(table.columns) == ["text", "label"] and list(meta.columns) == ["a_id", "a_subject"]
    assert len(table) == 4000 and table.label.dtype.kind == "i"
    papers = _papers(root, "train")
    assert (table.text.to_numpy() == papers.loc[meta.a_id, "title"].to_numpy()).all()
    # One code per subject and one subject per code.
    pairs_of = set(zip(table.label, meta.a_subject, strict=True))
    assert len(pairs_of) == table.label.nunique() == meta.a_subject.nunique()
    # Balanced: subjects about equally often; within a subject, every paper once before any paper twice.
    per_subject = meta.a_subject.value_counts()
    assert per_subject.max() < 1.5 * per_subject.min()
    sizes = papers.primary_subject.value_counts()
    for subject, ids in meta.groupby("a_subject").a_id:
        uses = ids.value_counts()
        assert uses.max() - uses.min() <= 1 and (len(uses) == sizes[subject] or uses.max() == 1)
    first = file_sha256(root / "data" / "pairs" / "train.parquet")
    _run(root, "pairs=labelled", "pairs.text=title")
    assert file_sha256(root / "data" / "pairs" / "train.parquet") == first


def test_title_abstract_pairs_are_one_paper_each(root: Path) -> None:
    _run(root, "pairs=title_abstract", "pairs.num_train=100")
    table, meta = _read(root)
    papers = _papers(root, "train")
    assert (meta.a_id == meta.b_id).all() and meta.a_id.is_unique
    assert (table.anchor.to_numpy() == papers.loc[meta.a_id, "title"].to_numpy()).all()
    assert (table.positive.to_numpy() == papers.loc[meta.a_id, "abstract"].to_numpy()).all()


def test_title_abstract_text_joins_title_and_abstract(root: Path) -> None:
    _run(root, "pairs.text=title_abstract", "pairs.num_train=50")
    table, meta = _read(root)
    papers = _papers(root, "train")
    first = papers.loc[meta.a_id[0]]
    assert table.anchor[0] == f"{first.title}\n{first.abstract}"


def test_train_pairs_use_train_papers_and_eval_pairs_eval_papers_only(root: Path) -> None:
    _run(root)
    for split in ("train", "eval"):
        ids = set(_read(root, split)[1][["a_id", "b_id"]].to_numpy().ravel())
        assert ids <= set(_papers(root, split).index)
    test_ids = set(_papers(root, "test").index)
    assert not test_ids & set(_read(root, "train")[1].a_id) and not test_ids & set(_read(root, "eval")[1].b_id)


def test_same_seed_same_bytes_other_seed_other_pairs(root: Path) -> None:
    _run(root, "pairs=graded")
    first = file_sha256(root / "data" / "pairs" / "train.parquet")
    _run(root, "pairs=graded")
    assert file_sha256(root / "data" / "pairs" / "train.parquet") == first
    _run(root, "pairs=graded", "seed=7")
    assert file_sha256(root / "data" / "pairs" / "train.parquet") != first


@pytest.mark.parametrize("overrides", [("pairs=title_abstract",), ("pairs.text=title",), ("pairs.text=abstract",)])
def test_duplicate_texts_give_the_same_bytes_every_run(root: Path, overrides: tuple[str, ...]) -> None:
    """Papers that share a title (or an abstract) gave the parquet writer a dictionary with duplicates, which it
    then wrote without dictionary encoding and not byte-identically from run to run."""
    import pyarrow as pa

    path = root / "data" / "processed" / "train.parquet"
    papers = pq.read_table(path)
    for column in ("title", "abstract"):
        values = papers.column(column).to_pylist()
        shared = pa.array([values[i % 40] for i in range(len(values))], papers.schema.field(column).type)
        papers = papers.set_column(papers.schema.get_field_index(column), column, shared)
    pq.write_table(papers, path)
    hashes = set()
    for _ in range(3):
        _run(root, *overrides)
        hashes.add(file_sha256(root / "data" / "pairs" / "train.parquet"))
    assert len(hashes) == 1
    meta = pq.ParquetFile(root / "data" / "pairs" / "train.parquet").metadata
    for i in range(meta.num_columns):
        if meta.schema.column(i).physical_type == "BYTE_ARRAY":  # every text column stays dictionary-encoded
            assert "RLE_DICTIONARY" in meta.row_group(0).column(i).encodings
    table, pair_meta = _read(root)
    by_id = _papers(root, "train")
    first = "abstract" if overrides == ("pairs.text=abstract",) else "title"
    assert (table.iloc[:, 0].to_numpy() == by_id.loc[pair_meta.a_id, first].to_numpy()).all()


def test_manifest_records_type_columns_and_hashes(root: Path) -> None:
    _run(root, "pairs=contrastive")
    manifest = read_json(root / "data" / "pairs" / "manifest.json")
    assert manifest["type"] == "contrastive"
    assert manifest["columns"] == ["sentence1", "sentence2", "label"]
    assert manifest["files"]["train"]["rows"] == 4000
    assert manifest["files"]["eval"]["rows"] == 300
    assert manifest["files"]["train"]["sha256"] == file_sha256(root / "data" / "pairs" / "train.parquet")


def test_trainer_reads_the_pairs_as_plain_strings(root: Path) -> None:
    from datasets import Dataset

    _run(root, "pairs=graded")
    ds = Dataset.from_parquet(str(root / "data" / "pairs" / "train.parquet"))
    assert ds.column_names == ["sentence1", "sentence2", "score"]
    assert ds.features["sentence1"].dtype in {"string", "large_string"}
    assert isinstance(ds[0]["sentence1"], str) and 0.0 <= ds[0]["score"] <= 1.0


def test_missing_processed_data_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="uv run inv preprocess"):
        _run(tmp_path)


def test_same_subject_pairs_need_two_papers_in_a_subject() -> None:
    import pyarrow as pa

    papers = pa.table({"primary_subject": ["a", "b", "c"]})
    index = SubjectIndex.from_table(papers)
    with pytest.raises(ConfigError, match="2 or more papers"):
        index.same_subject(5, np.random.default_rng(0), "balanced")

"""preprocess: normalization of both schemas, dedupe, hash splits, errors that leave outputs intact."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from arxiv_embeddings import preprocess
from arxiv_embeddings.config import ConfigError, compose
from arxiv_embeddings.io import file_sha256, read_json
from arxiv_embeddings.layout import SPLITS, split_path
from arxiv_embeddings.papers import SAMPLE_PATH
from arxiv_embeddings.sources import normalize

FIXTURES = Path(__file__).parent / "fixtures"
WORDS = [
    "we",
    "study",
    "a",
    "problem",
    "and",
    "propose",
    "a",
    "method",
    "that",
    "works",
    "well",
    "on",
    "many",
    "benchmarks",
    "with",
    "careful",
    "analysis",
]


def _abstract(i: int, n_words: int = 30) -> str:
    return " ".join(
        f"{WORDS[(i + k) % len(WORDS)]}{i}" if k == 0 else WORDS[(i * 7 + k) % len(WORDS)] for k in range(n_words)
    )


def _papers(n: int, subjects: tuple[str, ...] = ("cs.LG", "math.AP", "hep-th"), start: int = 0) -> dict[str, list]:
    ids = [f"2401.{i:05d}" for i in range(start, start + n)]
    prim = [subjects[i % len(subjects)] for i in range(start, start + n)]
    return {
        "arxiv_id": ids,
        "title": [f"A study of topic {i}" for i in range(start, start + n)],
        "abstract": [_abstract(i) for i in range(start, start + n)],
        "primary_subject": prim,
        "subjects": [[p] for p in prim],
    }


def _write(tmp_path: Path, data: dict[str, list], name: str = "papers.parquet") -> Path:
    path = tmp_path / name
    pq.write_table(pa.table(data), path)
    return path


def _cfg(root: Path, data_path: Path, *extra: str):
    return compose(
        "preprocess",
        [f"paths.root_dir={root}", "data=files", f"data.path={data_path}", "preprocess.min_per_subject=2", *extra],
    )


def _read_split(root: Path, split: str) -> pa.Table:
    return pq.read_table(root / "data" / "processed" / f"{split}.parquet")


# ------------------------------------------------------------------------------------------- normalization
def test_normalizes_the_hugging_face_schema() -> None:
    raw = pa.table(
        {
            "arxiv_id": ["arXiv:2401.00001v2", " 2401.00002 "],
            "title": ["  A  title\nwith   breaks ", "Second"],
            "abstract": ["Some\t\tabstract  text\n here ", "x"],
            "primary_subject": ["Earth and Planetary Astrophysics (astro-ph.EP)", "Machine Learning (cs.LG)"],
            "subjects": [
                "Earth and Planetary Astrophysics (astro-ph.EP); Solar and Stellar Astrophysics (astro-ph.SR)",
                "Machine Learning (cs.LG)",
            ],
        }
    )
    table, n_bad = normalize(raw)
    assert n_bad == 0
    rows = table.to_pylist()
    assert rows[0] == {
        "arxiv_id": "2401.00001",
        "title": "A title with breaks",
        "abstract": "Some abstract text here",
        "primary_subject": "astro-ph.EP",
        "subjects": ["astro-ph.EP", "astro-ph.SR"],
    }
    assert rows[1]["arxiv_id"] == "2401.00002"
    assert rows[1]["subjects"] == ["cs.LG"]


def test_normalized_schema_passes_through_and_primary_comes_first() -> None:
    raw = pa.table(
        {
            "arxiv_id": ["hep-th/9901001v1", "2401.00002"],
            "title": ["T1", "T2"],
            "abstract": ["a b", "c d"],
            "primary_subject": ["hep-th", "cs.CV"],
            "subjects": [["gr-qc", "hep-th"], []],
        }
    )
    table, _ = normalize(raw)
    assert table.column("arxiv_id").to_pylist() == ["hep-th/9901001", "2401.00002"]
    assert table.column("subjects").to_pylist() == [["hep-th", "gr-qc"], ["cs.CV"]]


def test_rows_with_an_invalid_primary_subject_are_dropped_and_counted() -> None:
    raw = pa.table(
        {
            "arxiv_id": ["1", "2", "3"],
            "title": ["T1", "T2", "T3"],
            "abstract": ["a", "b", "c"],
            "primary_subject": ["Journal-ref: Phys. Rev. D 12 (2023)", "", "Robotics (cs.RO)"],
        }
    )
    table, n_bad = normalize(raw)
    assert n_bad == 2
    assert table.column("primary_subject").to_pylist() == ["cs.RO"]


def test_upstream_label_file_end_to_end(tmp_path: Path) -> None:
    """The real scraped file in nick007x format: misaligned rows dropped, duplicate listings merged."""
    cfg = compose(
        "preprocess",
        [
            f"paths.root_dir={tmp_path}",
            "data=files",
            f"data.path={FIXTURES / 'nick007x_sample.csv'}",
            "data.columns={paper_id:arxiv_id}",
            "preprocess.min_per_subject=2",
        ],
    )
    result = preprocess.run(cfg)
    funnel = result["funnel"]
    assert funnel["loaded"] == 80
    assert funnel["dropped_bad_subject"] == 8  # the misaligned rows of the fixture
    assert funnel["dropped_duplicate_id"] == 6  # six papers listed twice
    papers = pa.concat_tables(_read_split(tmp_path, s) for s in SPLITS)
    assert all("(" not in s for s in papers.column("primary_subject").to_pylist())
    for primary, subjects in zip(
        papers.column("primary_subject").to_pylist(), papers.column("subjects").to_pylist(), strict=True
    ):
        assert subjects[0] == primary


# ------------------------------------------------------------------------------------------- dedupe + split
def test_dedupes_by_id_and_by_exact_abstract_independent_of_order(tmp_path: Path) -> None:
    data = _papers(60)
    # the same paper twice (two versions) and a different id with a copied abstract
    data["arxiv_id"] += ["2401.00003v2", "2401.99999"]
    data["title"] += ["A study of topic 3 (v2)", "Copied paper"]
    data["abstract"] += [_abstract(3) + " revised", "  " + _abstract(5).replace(" ", "  ")]
    data["primary_subject"] += ["hep-th", "math.AP"]
    data["subjects"] += [["hep-th"], ["math.AP"]]
    forward = _write(tmp_path, data)
    backward = _write(tmp_path, {k: v[::-1] for k, v in data.items()}, "reversed.parquet")

    outputs = []
    for i, path in enumerate((forward, backward)):
        root = tmp_path / f"run{i}"
        result = preprocess.run(_cfg(root, path))
        assert result["funnel"]["dropped_duplicate_id"] == 1
        assert result["funnel"]["dropped_duplicate_abstract"] == 1
        papers = pa.concat_tables(_read_split(root, s) for s in SPLITS)
        ids = papers.column("arxiv_id").to_pylist()
        assert len(ids) == len(set(ids)) == 60
        assert "2401.99999" not in ids  # the copy with the larger id goes, whatever the input order
        outputs.append({s: file_sha256(root / "data" / "processed" / f"{s}.parquet") for s in SPLITS})
    assert outputs[0] == outputs[1]


def test_split_is_stable_when_papers_are_added_and_never_leaks(tmp_path: Path) -> None:
    small = _write(tmp_path, _papers(300), "small.parquet")
    big_data = _papers(300)
    for k, v in _papers(700, start=300).items():
        big_data[k] += v
    big = _write(tmp_path, big_data, "big.parquet")
    preprocess.run(_cfg(tmp_path / "a", small))
    preprocess.run(_cfg(tmp_path / "b", big))

    def assignment(root: Path) -> dict[str, str]:
        return {i: s for s in SPLITS for i in _read_split(root, s).column("arxiv_id").to_pylist()}

    small_split, big_split = assignment(tmp_path / "a"), assignment(tmp_path / "b")
    assert all(big_split[i] == s for i, s in small_split.items())
    abstracts = [set(_read_split(tmp_path / "b", s).column("abstract").to_pylist()) for s in SPLITS]
    assert not (abstracts[0] & abstracts[1] or abstracts[0] & abstracts[2] or abstracts[1] & abstracts[2])
    counts = {s: sum(1 for v in big_split.values() if v == s) for s in SPLITS}
    assert 720 <= counts["train"] <= 880 and counts["eval"] > 60 and counts["test"] > 60  # ~80/10/10 of 1000


def test_subject_filter_and_cap(tmp_path: Path) -> None:
    data = _papers(90, subjects=("cs.LG", "cs.LG", "cs.LG", "cs.LG", "math.AP", "hep-th"))  # 60 / 15 / 15
    data["arxiv_id"].append("2402.00001")
    data["title"].append("Lonely paper title")
    data["abstract"].append(_abstract(999))
    data["primary_subject"].append("q-fin.EC")
    data["subjects"].append(["q-fin.EC"])
    path = _write(tmp_path, data)
    result = preprocess.run(_cfg(tmp_path, path, "preprocess.min_per_subject=5", "preprocess.max_per_subject=20"))
    manifest = read_json(tmp_path / "data" / "processed" / "manifest.json")
    totals: dict[str, int] = {}
    for s in manifest["splits"].values():
        for k, v in s["subjects"].items():
            totals[k] = totals.get(k, 0) + v
    assert totals == {"cs.LG": 20, "math.AP": 15, "hep-th": 15}
    assert result["funnel"]["dropped_rare_subject"] == 1
    assert result["funnel"]["dropped_subject_cap"] == 40


def test_manifest_matches_the_files(tmp_path: Path) -> None:
    path = _write(tmp_path, _papers(200))
    preprocess.run(_cfg(tmp_path, path))
    out = tmp_path / "data" / "processed"
    manifest = read_json(out / "manifest.json")
    for split, info in manifest["splits"].items():
        table = pq.read_table(out / info["file"])
        assert table.num_rows == info["rows"] == sum(info["subjects"].values())
        assert file_sha256(out / info["file"]) == info["sha256"]
        assert table.column_names == ["arxiv_id", "title", "abstract", "primary_subject", "subjects"]
        assert table.column("arxiv_id").to_pylist() == sorted(table.column("arxiv_id").to_pylist()), split


# ------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["preprocess.min_per_subject=500"], r"min_per_subject=500 removes every paper.*largest subject has \d+"),
        (
            ["preprocess.split.train=0.98", "preprocess.split.eval=0.01", "preprocess.split.test=0.01"],
            "Split '(eval|test)' would be empty",
        ),
        (["preprocess.split.train=0.5"], "must sum to 1"),
        (["data.columns={paper:arxiv_id}"], "renames column"),
    ],
)
def test_bad_input_fails_before_writing_and_keeps_previous_output(
    tmp_path: Path, overrides: list[str], message: str
) -> None:
    path = _write(tmp_path, _papers(40))
    preprocess.run(_cfg(tmp_path, path))
    out = tmp_path / "data" / "processed"
    before = {p.name: file_sha256(p) for p in out.iterdir()}
    with pytest.raises(ConfigError, match=message):
        preprocess.run(_cfg(tmp_path, path, *overrides))
    assert {p.name: file_sha256(p) for p in out.iterdir()} == before
    assert not [p for p in tmp_path.joinpath("data").iterdir() if p.name.startswith(".")]  # no temp folder left


def test_missing_columns_are_named(tmp_path: Path) -> None:
    data = _papers(10)
    del data["abstract"]
    with pytest.raises(ConfigError, match=r"missing column\(s\) abstract.*data\.columns"):
        preprocess.run(_cfg(tmp_path, _write(tmp_path, data)))


def test_missing_input_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.parquet"):
        preprocess.run(_cfg(tmp_path, tmp_path / "nope.parquet"))


def test_split_path_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="uv run inv preprocess"):
        split_path(compose("preprocess", [f"paths.root_dir={tmp_path}"]), "train")


def test_reads_jsonl_gz_and_csv(tmp_path: Path) -> None:
    import gzip
    import json

    data = _papers(30)
    jsonl = tmp_path / "papers.jsonl.gz"
    with gzip.open(jsonl, "wt") as fh:
        for row in pa.table(data).to_pylist():
            fh.write(json.dumps(row) + "\n")
    csv = tmp_path / "papers.csv"
    pa.table({k: v for k, v in data.items() if k != "subjects"}).to_pandas().to_csv(csv, index=False)
    kept = []
    for path in (jsonl, csv):
        result = preprocess.run(_cfg(tmp_path / path.suffix.strip("."), path))
        kept.append(result["funnel"]["kept"])
    assert kept == [30, 30]


def test_keep_columns_naming_a_cleaned_column_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, _papers(20))
    with pytest.raises(ConfigError, match=r"keep_columns=\['abstract'\] names \['abstract'\].*Remove abstract"):
        preprocess.run(_cfg(tmp_path, path, "preprocess.keep_columns=[abstract]"))


@pytest.mark.parametrize("name", ["papers.parquet", "papers.csv"])
def test_only_the_columns_the_pipeline_uses_are_read(tmp_path: Path, name: str) -> None:
    from arxiv_embeddings.sources import load_raw

    data = {**_papers(30), "full_text": ["x" * 1000] * 30, "authors": ["A. Author"] * 30, "paper_id": None}
    data["paper_id"] = data.pop("arxiv_id")
    if name.endswith(".csv"):
        del data["subjects"]
        path = tmp_path / name
        pa.table(data).to_pandas().to_csv(path, index=False)
    else:
        path = _write(tmp_path, data, name)
    cfg = _cfg(tmp_path, path, "data.columns={paper_id:arxiv_id}")
    assert "full_text" not in load_raw(cfg.data).column_names
    assert set(load_raw(cfg.data).column_names) <= {"arxiv_id", "title", "abstract", "primary_subject", "subjects"}
    assert "arxiv_id" in load_raw(cfg.data).column_names  # read under its source name, then renamed
    assert "authors" in load_raw(cfg.data, ["authors"]).column_names
    assert "full_text" in load_raw(cfg.data, None).column_names  # None: every column
    result = preprocess.run(
        _cfg(tmp_path, path, "data.columns={paper_id:arxiv_id}", "preprocess.keep_columns=[authors]")
    )
    assert result["funnel"]["kept"] == 30
    train = _read_split(tmp_path, "train")
    assert "authors" in train.column_names and "full_text" not in train.column_names
    with pytest.raises(
        ConfigError,
        match=r"renames column\(s\) \['nope'\].*its columns are: title, abstract.*full_text, authors, paper_id",
    ):
        load_raw(_cfg(tmp_path, path, "data.columns={nope:arxiv_id}").data)


def _kaggle_line(paper: dict, i: int) -> str:
    """One line of the Cornell / Kaggle metadata snapshot for ``paper`` (a row of the shipped sample): every field of
    the dump, categories as one space-separated string with the primary first, and the dump's hard line wraps and
    indentation in the title and abstract."""
    import json
    import textwrap

    return json.dumps(
        {
            "id": paper["arxiv_id"],
            "submitter": "A. Author",
            "authors": "A. Author, B. Author",
            "title": "\n  ".join(textwrap.wrap(paper["title"], 60, break_on_hyphens=False, break_long_words=False)),
            "comments": "12 pages" if i % 2 else None,
            "journal-ref": None,
            "doi": None,
            "report-no": None,
            "categories": " ".join(paper["subjects"]),
            "license": None,
            "abstract": "  "
            + "\n".join(textwrap.wrap(paper["abstract"], 80, break_on_hyphens=False, break_long_words=False))
            + "\n",
            "versions": [{"version": "v1", "created": "Mon, 2 Apr 2007 19:18:42 GMT"}],
            "update_date": "2008-11-13",
            "authors_parsed": [["Author", "A.", ""], ["Author", "B.", ""]],
        }
    )


@pytest.mark.parametrize("name", ["arxiv-metadata-oai-snapshot.json", "arxiv-metadata-oai-snapshot.json.gz"])
def test_the_kaggle_snapshot_loads_with_its_preset(tmp_path: Path, name: str) -> None:
    """data=kaggle reads the snapshot's exact shape (plain or gzipped): the same papers as the sample they were
    written from, wraps collapsed, categories split with the first as the primary subject."""
    import gzip

    from arxiv_embeddings.sources import load_raw, normalize

    sample = pq.read_table(SAMPLE_PATH).slice(0, 200)
    lines = [_kaggle_line(p, i) + "\n" for i, p in enumerate(sample.to_pylist())]
    path = tmp_path / name
    with gzip.open(path, "wt") if name.endswith(".gz") else open(path, "w") as fh:
        fh.writelines(lines)
    cfg = compose("preprocess", [f"paths.root_dir={tmp_path}", "data=kaggle", f"data.path={path}"])
    table, dropped = normalize(load_raw(cfg.data))
    expected, _ = normalize(sample)
    assert dropped == 0 and table.num_rows == 200
    for column in ("arxiv_id", "title", "abstract", "primary_subject", "subjects"):
        assert table.column(column).to_pylist() == expected.column(column).to_pylist(), column
    assert all("\n" not in t and "  " not in t for t in table.column("abstract").to_pylist())


def test_a_separator_on_a_column_of_lists_names_the_fix(tmp_path: Path) -> None:
    path = _write(tmp_path, _papers(6))
    cfg = _cfg(tmp_path, path, "data.subjects_separator=whitespace")
    with pytest.raises(ConfigError, match=r"data.subjects_separator=null for a column of lists"):
        preprocess.run(cfg)

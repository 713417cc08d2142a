"""layout: the one map of artifact names. Model names derive from locations, and no other module of the package
spells a name that layout defines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from arxiv_embeddings import layout
from arxiv_embeddings.config import compose

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "arxiv_embeddings"
#: The names layout owns, as a module would spell them in code (messages and docstrings may quote paths).
NAMES = {
    layout.FINAL_DIR,
    layout.ADAPTER_DIR,
    layout.TRAIN_SUMMARY_FILE,
    layout.TASKS_FILE,
    layout.pair_meta_file("train"),
    *(layout.split_file(s) for s in layout.SPLITS),
}
#: Modules that still spell one; each entry is a debt to pay by using layout.
NOT_YET = {"train/sets.py": {"train.parquet", "eval.parquet"}}


@pytest.mark.parametrize(
    ("location", "name"),
    [
        ("models/my-run/final", "my-run"),
        ("models/my-run/final/", "my-run"),
        ("gs://bucket/models/my-run/final", "my-run"),
        ("my-run", "my-run"),
        ("final", "final"),
        ("/data/models/minilm", "minilm"),
        ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"),
        ("", ""),
    ],
)
def test_a_model_location_names_its_run(location: str, name: str) -> None:
    assert layout.model_name(location) == name


def test_a_run_folder_and_its_files(tmp_path: Path) -> None:
    cfg = compose("train", [f"paths.root_dir={tmp_path}"])
    assert layout.final_dir(cfg, "r") == layout.run_dir(cfg, "r") / "final" == tmp_path / "models" / "r" / "final"
    assert layout.processed_split(cfg, "eval") == tmp_path / "data" / "processed" / "eval.parquet"
    with pytest.raises(FileNotFoundError, match=r"uv run inv preprocess"):
        layout.split_path(cfg, "eval")
    assert layout.pair_meta_file("eval") == "eval_meta.parquet"


def test_no_other_module_spells_an_artifact_name() -> None:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        if name == "layout.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        keys = {id(k) for node in ast.walk(tree) if isinstance(node, ast.Dict) for k in node.keys}  # {"adapter": ...}
        spelled = {
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in NAMES and id(node) not in keys
        } - NOT_YET.get(name, set())
        if spelled:
            found[name] = sorted(spelled)
    assert not found, f"use arxiv_embeddings.layout for these names: {found}"

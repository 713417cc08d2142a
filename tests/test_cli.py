"""arxiv-embed data-info reads what preprocess wrote."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from arxiv_embeddings.cli import app
from arxiv_embeddings.io import read_json

runner = CliRunner()


def test_data_info_prints_counts_per_split_and_subject(processed_root: Path) -> None:
    result = runner.invoke(app, ["data-info", "-o", f"paths.root_dir={processed_root}", "--top", "0"])
    assert result.exit_code == 0, result.output
    manifest = read_json(processed_root / "data" / "processed" / "manifest.json")
    for split, info in manifest["splits"].items():
        assert split in result.output
        assert f"{info['rows']:,}" in result.output
    for subject in ("cs.CV", "quant-ph", "econ.EM"):
        assert subject in result.output


def test_data_info_without_data_says_which_command_to_run(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data-info", "-o", f"paths.root_dir={tmp_path}"])
    assert result.exit_code == 1
    assert "uv run inv preprocess" in result.output

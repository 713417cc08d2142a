"""MkDocs hook: publish the committed results under ``results/`` (what ``inv publish`` copied there from a run's
``results/``) as part of the site, with nothing copied by hand.

- Every file under ``results/`` other than Markdown (plots, ``metrics.json``) is served at its own path, e.g.
  ``results/minilm-sample/plots/confusion_matrix.png``.
- Every run report ``results/<dir>/report.md`` gets a page at ``results/<dir>/`` (unless ``docs/`` has one there)
  that includes the report with pymdownx.snippets. The page sits in the report's folder, so the report's relative
  image links (``plots/*.png``) resolve to the files above.
- A line ``<!-- results: <dir> -->`` in a page becomes the results of ``results/<dir>/`` at build time: its
  ``comparison.md`` (without its title) and links to its run reports, or a "not yet run" note when the folder holds
  no report. Results are never written into the pages themselves.
- ``<details>`` blocks (the reports fold long tables into them) get ``markdown="1"``, so md_in_html renders the
  Markdown inside them.
- The package's docstrings use a few reStructuredText habits that Markdown does not know: cross-reference roles
  (``:func:`name```) become code spans, and a paragraph ending in ``::`` before a literal block ends in ``:``.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from markdown import Extension, Markdown
from markdown.preprocessors import Preprocessor
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

REPORTS = "results"
REPORT_FILE = "report.md"
COMPARISON_FILE = "comparison.md"
_PLACEHOLDER = re.compile(r"^<!--\s*results:\s*(?P<dir>[-\w./]+?)\s*-->[ \t]*$", re.MULTILINE)
_DETAILS = re.compile(r"<details(?![^>]*\bmarkdown=)")
_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj|const|ref):`~?([^`]+)`")
_LITERAL_INTRO = re.compile(r"^(\S.*[^:\s])::$")


def _root(config: MkDocsConfig) -> Path:
    """The repository root: the folder of mkdocs.yml."""
    return Path(config.config_file_path).resolve().parent


def _run_dirs(root: Path, under: str = REPORTS) -> list[str]:
    """Folders (POSIX, relative to the root) below ``under`` that hold a run report, sorted."""
    base = root / under
    if not base.is_dir():
        return []
    return sorted(p.parent.relative_to(root).as_posix() for p in base.rglob(REPORT_FILE))


def _report_page(run_dir: str, has_metrics: bool = True) -> str:
    """The page of the run report in ``run_dir``: the report itself, included, and where it came from."""
    home = posixpath.relpath("evaluation.md", run_dir)
    metrics = " the figures are in [`metrics.json`](metrics.json) beside it." if has_metrics else ""
    return (
        f"<!-- Generated at build time by docs/hooks/results.py from {run_dir}/{REPORT_FILE}. -->\n"
        f'--8<-- "{run_dir}/{REPORT_FILE}"\n\n'
        "---\n\n"
        f"This page is `{run_dir}/{REPORT_FILE}` as the evaluation wrote it;{metrics} The command that produced it is "
        f"on [Evaluation and results]({home}).\n"
    )


def on_files(files: Files, *, config: MkDocsConfig) -> Files:
    root = _root(config)
    base = root / REPORTS
    if not base.is_dir():
        return files
    for path in sorted(p for p in base.rglob("*") if p.is_file()):
        uri = path.relative_to(root).as_posix()
        if path.suffix != ".md" and not path.name.startswith(".") and files.get_file_from_path(uri) is None:
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    for run_dir in _run_dirs(root):
        uri = f"{run_dir}/index.md"
        if files.get_file_from_path(uri) is None:
            page = _report_page(run_dir, has_metrics=(root / run_dir / "metrics.json").is_file())
            files.append(File.generated(config, uri, content=page))
    return files


def _results(root: Path, page_uri: str, reports_dir: str) -> str:
    """Markdown for a ``<!-- results: ... -->`` line: the comparison and the run reports, or "not yet run"."""
    folder = f"{REPORTS}/{reports_dir}"
    comparison = root / folder / COMPARISON_FILE
    runs = _run_dirs(root, folder)
    if not comparison.is_file() and not runs:
        return (
            '!!! info "Not yet run"\n\n'
            f"    There were no reports under `{folder}/` when this site was built, so there are no figures to show "
            "for this run yet.\n"
        )
    parts = []
    if comparison.is_file():
        # Line 1 is the comparison's own title; the page gives the section its heading.
        parts.append(f'--8<-- "{folder}/{COMPARISON_FILE}:2:"\n')
    if runs:
        here = posixpath.dirname(page_uri)
        links = [f"- [`{run}`]({posixpath.relpath(f'{run}/index.md', here)})" for run in runs]
        parts.append("Full report of each run, with its plots:\n\n" + "\n".join(links) + "\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, *, page: Page, config: MkDocsConfig, files: Files) -> str:
    root = _root(config)
    return _PLACEHOLDER.sub(lambda m: _results(root, page.file.src_uri, m.group("dir").strip("/")), markdown)


class _Cleanup(Preprocessor):
    """``<details>`` -> ``<details markdown="1">``, reST roles -> code spans, ``text::`` -> ``text:``; after the
    snippets are in (their priority is 32)."""

    def run(self, lines: list[str]) -> list[str]:
        out = []
        for line in lines:
            if "<details" in line:
                line = _DETAILS.sub('<details markdown="1"', line)
            if ":`" in line:
                line = _ROLE.sub(r"`\1`", line)
            if line.endswith("::"):
                line = _LITERAL_INTRO.sub(r"\1:", line)
            out.append(line)
        return out


class _CleanupExtension(Extension):
    def extendMarkdown(self, md: Markdown) -> None:
        md.preprocessors.register(_Cleanup(md), "arxiv_docs_cleanup", 31)


def on_config(config: MkDocsConfig, **_: Any) -> MkDocsConfig:
    if "md_in_html" not in config.markdown_extensions:
        config.markdown_extensions.append("md_in_html")
    config.markdown_extensions.append(_CleanupExtension())  # type: ignore[arg-type]
    return config

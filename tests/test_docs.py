"""The documentation site: a strict build, every page of the nav, configs and results included verbatim from the
files that hold them, the README's results table, and a screenshot of the home page in headless Chromium."""

from __future__ import annotations

import html
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
SITE_NAME = "arxiv-embeddings"
# `--8<-- "path"`, `--8<-- "path:section"` or `--8<-- "path:start:end"` on a line of its own.
SNIPPET = re.compile(r'^[ \t]*-{1,}8<-{1,}[ \t]+"(?P<target>[^"]+)"[ \t]*$', re.MULTILINE)
SECTION_MARK = re.compile(r"--8<--\s*\[(?P<kind>start|end):(?P<name>[\w-]+)\]")


# ------------------------------------------------------------------------------------------------ helpers
def _hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_reports_hook", DOCS / "hooks" / "results.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _AnyTagLoader(yaml.SafeLoader):
    """Reads mkdocs.yml without resolving its Python tags (`!!python/name:...`, `!relative`)."""


_AnyTagLoader.add_multi_constructor("", lambda loader, suffix, node: None)
_AnyTagLoader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def nav_pages() -> list[tuple[str | None, str]]:
    """(title given in the nav or None, source path) of every page in mkdocs.yml's nav."""
    config = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=_AnyTagLoader)  # its tags resolve to None

    def walk(items: list[Any]) -> Iterator[tuple[str | None, str]]:
        for item in items:
            if isinstance(item, str):
                yield None, item
            else:
                ((title, value),) = item.items()
                if isinstance(value, list):
                    yield from walk(value)
                else:
                    yield title, value

    return list(walk(config["nav"]))


def html_path(site: Path, src: str) -> Path:
    """Where mkdocs (use_directory_urls) writes the page of ``src``."""
    stem = src.removesuffix(".md")
    if stem == "index" or stem.endswith("/index"):
        return site / f"{stem}.html"
    return site / stem / "index.html"


def code_blocks(page: str) -> list[str]:
    """Text of every <pre><code> block of a page, tags stripped and entities decoded."""
    blocks = re.findall(r"<pre[^>]*>.*?<code[^>]*>(.*?)</code>\s*</pre>", page, flags=re.DOTALL)
    return [html.unescape(re.sub(r"<[^>]+>", "", b)) for b in blocks]


def visible_text(page: str, code: bool = True) -> str:
    """The page's text; without code (blocks and spans) when ``code`` is false."""
    drop = r"<(script|style)[^>]*>.*?</\1>" if code else r"<(script|style|pre|code)[^>]*>.*?</\1>"
    return html.unescape(re.sub(r"<[^>]+>", " ", re.sub(drop, "", page, flags=re.DOTALL)))


def snippet_text(target: str) -> str:
    """What pymdownx.snippets inserts for ``target``: a whole file, a marked section, or a line range, without the
    section marker lines."""
    path, _, rest = target.partition(":")
    lines = (REPO / path).read_text(encoding="utf-8").split("\n")
    if rest and not rest[0].isdigit():
        start = next(i for i, line in enumerate(lines) if f"[start:{rest}]" in line)
        end = next(i for i, line in enumerate(lines) if f"[end:{rest}]" in line)
        lines = lines[start + 1 : end]
    elif rest:
        first, _, last = rest.partition(":")
        lines = lines[int(first) - 1 : int(last) if last else None]
    return "\n".join(line for line in lines if not SECTION_MARK.search(line)).strip("\n")


def comparison_rows() -> dict[str, list[str]]:
    """Run -> its cells, from the main table of results/comparison.md (not the gains below it)."""
    rows = {}
    for line in (REPO / "results" / "comparison.md").read_text().split("## Gain")[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `"):
            rows[cells[0].strip("`")] = cells
    return rows


def _number(cell: str) -> float:
    return float(cell.strip("*"))


# ----------------------------------------------------------------------------------------------- the build
@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


@pytest.mark.slow
def test_every_page_of_the_nav_is_built_with_its_title_and_no_unresolved_include(site: Path) -> None:
    pages = nav_pages()
    assert len(pages) >= 15
    sources = {src for _, src in pages}
    # The reference covers every module of the package.
    modules = {
        ".".join(p.relative_to(REPO / "src").with_suffix("").parts).removesuffix(".__init__")
        for p in (REPO / "src" / "arxiv_embeddings").rglob("*.py")
        if p.name != "__main__.py"
    } - {"arxiv_embeddings"}
    missing = sorted(m for m in modules if f"reference/{m}.md" not in sources)
    assert not missing, f"modules without a page under docs/reference/ in the nav: {missing}"

    for title, src in pages:
        page_file = html_path(site, src)
        assert page_file.exists(), f"{src} was not built ({page_file})"
        page = page_file.read_text(encoding="utf-8")
        shown = html.unescape(re.search(r"<title>(.*?)</title>", page, flags=re.DOTALL).group(1))  # type: ignore[union-attr]
        expected = SITE_NAME if src == "index.md" else f"{title or ''} - {SITE_NAME}"
        if title is None and src != "index.md":
            assert shown.endswith(f" - {SITE_NAME}") and len(shown) > len(SITE_NAME) + 3, (src, shown)
        else:
            assert shown == expected, (src, shown)
        text = visible_text(page)
        # Include syntax outside code (where pages may show it on purpose) is an include that was not resolved.
        assert "--8<--" not in visible_text(page, code=False), f"an include was left unresolved in {src}"
        assert "<!-- results:" not in page, f"a results placeholder was left in {src}"
        for error in ("Snippet at path", "could not be found", "could not be located"):
            assert error not in text, f"{src}: {error}"
        assert len(text.split()) > 30, f"{src} is nearly empty"
        # Docstrings' reST roles are rendered as code, not shown raw.
        assert not re.search(r":(func|class|meth|mod|attr|exc):\s*`?\w", text), f"{src}: a raw reST role"


@pytest.mark.slow
def test_configs_appear_verbatim_from_the_files(site: Path) -> None:
    checked = 0
    for md in sorted(DOCS.rglob("*.md")):
        src = md.relative_to(DOCS).as_posix()
        targets = [t for t in SNIPPET.findall(md.read_text(encoding="utf-8")) if t.startswith(("configs/", "."))]
        if not targets:
            continue
        blocks = code_blocks(html_path(site, src).read_text(encoding="utf-8"))
        for target in targets:
            expected = snippet_text(target)
            assert expected.strip(), f"{target} is empty"
            assert any(expected in block for block in blocks), f"{src}: {target} is not shown verbatim"
            checked += 1
    assert checked >= 20
    # Each stage's section of base.yaml is shown somewhere, with its comments.
    for section in ("preprocess", "pairs", "train", "evaluate", "baseline", "export", "index", "serve"):
        assert any(f'"configs/base.yaml:{section}"' in md.read_text() for md in DOCS.rglob("*.md")), section


@pytest.mark.slow
def test_results_and_plots_come_from_the_reports(site: Path) -> None:
    rows = comparison_rows()
    assert {"minilm-sample", "zero-shot", "tfidf"} <= set(rows)
    for src in ("index.md", "evaluation.md"):
        text = visible_text(html_path(site, src).read_text(encoding="utf-8"))
        assert "uv run inv pipeline" in text
        for run, cells in rows.items():
            assert all(cell.strip("*`") in text for cell in cells[3:]), f"{src}: figures of {run} missing"
    for run in rows:
        page = (site / "results" / run / "index.html").read_text(encoding="utf-8")
        report = (REPO / "results" / run / "report.md").read_text(encoding="utf-8")
        first_row = next(line for line in report.splitlines() if line.startswith("| accuracy@1"))
        assert first_row.split("|")[2].strip() in visible_text(page)
        images = re.findall(r'<img[^>]+src="([^"]+)"', page)
        assert len(images) == len(list((REPO / "results" / run / "plots").glob("*.png"))) >= 3
        for src in images:
            built = (site / "results" / run / src).resolve()
            assert built.read_bytes() == (REPO / "results" / run / src).read_bytes(), src
        assert "<details" in page and "<table>" in page.split("<details", 1)[1].split("</details>", 1)[0]
    evaluation = visible_text((site / "evaluation" / "index.html").read_text(encoding="utf-8"))
    if (REPO / "results" / "cpu-budget").is_dir():
        assert "Not yet run" not in evaluation
    else:
        assert "Not yet run" in evaluation and "results/cpu-budget/" in evaluation


@pytest.mark.slow
def test_benchmarks_page_is_bench_readme(site: Path) -> None:
    text = visible_text((site / "benchmarks" / "index.html").read_text(encoding="utf-8"))
    for heading in re.findall(r"^#+ (.+)$", (REPO / "bench" / "README.md").read_text(), flags=re.MULTILINE):
        assert html.unescape(re.sub(r"`", "", heading)) in text, heading


def _chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM_PATH"), "/usr/bin/chromium", "chromium", "chromium-browser"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


@pytest.mark.slow
def test_home_page_screenshot_in_headless_chromium(site: Path, tmp_path: Path, record_property: Any) -> None:
    chromium = _chromium()
    if chromium is None:
        pytest.skip("No chromium binary found (CHROMIUM_PATH, /usr/bin/chromium); 'sudo apt-get install chromium'.")
    from PIL import Image
    from playwright.sync_api import sync_playwright

    shot = tmp_path / "docs-home.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto((site / "index.html").as_uri())
            page.wait_for_selector("h1")
            assert page.title() == SITE_NAME
            assert page.inner_text("article h1").rstrip("¶").strip() == SITE_NAME
            assert "uv run inv pipeline" in page.inner_text("article")
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.size == (1280, 900)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
    # A blank or single-colour page has a handful of colours; rendered text, the header and the table have hundreds.
    assert len(colours) > 50
    background = max(colours)[0] / (1280 * 900)
    assert background < 0.97, f"{background:.1%} of the screenshot is one colour"
    record_property("screenshot", str(shot))
    print(f"docs home page screenshot: {shot}")


# ----------------------------------------------------------------------------- no build: the hook, the README
def test_results_section_says_not_yet_run_until_the_reports_exist(tmp_path: Path) -> None:
    hook = _hook()
    missing = hook._results(tmp_path, "evaluation.md", "cpu-budget")
    assert "Not yet run" in missing and "results/cpu-budget/" in missing and "8<" not in missing

    run_dir = tmp_path / "results" / "cpu-budget" / "minilm-cpu-budget"
    run_dir.mkdir(parents=True)
    (run_dir / "report.md").write_text("# Evaluation: minilm-cpu-budget\n")
    (run_dir.parent / "comparison.md").write_text("# Comparison\n\n| Run |\n|---|\n| `x` |\n")
    present = hook._results(tmp_path, "evaluation.md", "cpu-budget")
    assert "Not yet run" not in present
    assert '--8<-- "results/cpu-budget/comparison.md:2:"' in present
    assert "(results/cpu-budget/minilm-cpu-budget/index.md)" in present
    assert hook._run_dirs(tmp_path) == ["results/cpu-budget/minilm-cpu-budget"]
    page = hook._report_page("results/cpu-budget/minilm-cpu-budget")
    assert '--8<-- "results/cpu-budget/minilm-cpu-budget/report.md"' in page
    assert "(../../../evaluation.md)" in page and "(metrics.json)" in page
    assert "metrics.json" not in hook._report_page("results/x", has_metrics=False)


def test_readme_results_table_matches_the_comparison() -> None:
    rows = comparison_rows()
    header = next(
        line for line in (REPO / "results" / "comparison.md").read_text().splitlines() if line.startswith("| Run")
    )
    columns = [c.strip() for c in header.strip().strip("|").split("|")]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    lines = readme.splitlines()
    assert lines[lines.index("```bash") + 1].startswith("uv run inv pipeline")
    assert lines[lines.index("```bash") + 2].startswith("uv run inv test")
    table = [line for line in lines if line.startswith("| ") and "`" in line.split("|")[1]]
    readme_header = next(line for line in lines if line.startswith("| run"))
    readme_columns = [c.strip() for c in readme_header.strip().strip("|").split("|")]
    assert len(table) == len(rows), "the README's results table should list every run of results/comparison.md"
    for line in table:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        run = re.search(r"`([^`]+)`", cells[0]).group(1)  # type: ignore[union-attr]
        assert run in rows, f"README run {run} is not in results/comparison.md"
        for name, cell in zip(readme_columns[1:], cells[1:], strict=True):
            source = rows[run][columns.index(name)]
            # Three decimals, rounded either way at a tie (0.9215 may show as 0.921 or 0.922).
            assert abs(_number(cell) - _number(source)) <= 0.0005 + 1e-9, f"README {run} {name}: {cell} vs {source}"
            assert cell.startswith("**") == source.startswith("**"), f"README {run} {name}: bold differs"

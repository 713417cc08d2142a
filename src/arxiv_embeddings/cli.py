"""``arxiv-embed``: utilities outside the experiment: inspecting data (``data-info``), searching an index
(``search``, ``similar``) and publishing run reports (``publish``). Serving is ``uv run inv serve``.

Experiment settings live in the Hydra configs; this CLI only reads what the stages wrote, locating it through
the same ``paths`` config (``--override paths.root_dir=...`` points it elsewhere).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="arxiv-embeddings utilities: inspect processed data, search papers, publish run reports.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


@app.callback()
def _main() -> None:
    """arxiv-embeddings utilities."""


OverrideOpt = Annotated[
    list[str] | None,
    typer.Option("--override", "-o", help="Hydra override for the paths, e.g. paths.root_dir=/data/run1"),
]


def _processed_dir(overrides: list[str] | None) -> Path:
    from arxiv_embeddings.config import compose

    return Path(compose("preprocess", overrides or []).paths.processed_dir)


@app.command("data-info")
def data_info(
    overrides: OverrideOpt = None,
    top: Annotated[int, typer.Option(help="Show this many subjects (largest first); 0 = all.")] = 20,
) -> None:
    """Counts per split and per primary subject of what preprocess wrote."""
    from arxiv_embeddings.io import read_json
    from arxiv_embeddings.layout import MANIFEST_FILE

    path = _processed_dir(overrides) / MANIFEST_FILE
    if not path.exists():
        console.print(f"[red]No processed data at {path.parent}[/red]; run 'uv run inv preprocess' first.")
        raise typer.Exit(code=1)
    manifest = read_json(path)
    splits = manifest["splits"]
    names = list(splits)
    summary = Table(title=f"Processed data: {path.parent}")
    summary.add_column("split")
    summary.add_column("papers", justify="right")
    summary.add_column("subjects", justify="right")
    for name in names:
        summary.add_row(name, f"{splits[name]['rows']:,}", str(len(splits[name]["subjects"])))
    summary.add_row(
        "total", f"{sum(s['rows'] for s in splits.values()):,}", str(manifest["num_subjects"]), style="bold"
    )
    console.print(summary)

    totals: dict[str, int] = {}
    for s in splits.values():
        for subject, n in s["subjects"].items():
            totals[subject] = totals.get(subject, 0) + n
    ranked = sorted(totals, key=lambda k: (-totals[k], k))
    shown = ranked if top <= 0 else ranked[:top]
    per_subject = Table(title=f"Papers per primary subject ({len(shown)} of {len(ranked)})")
    per_subject.add_column("subject")
    for name in names:
        per_subject.add_column(name, justify="right")
    per_subject.add_column("total", justify="right")
    for subject in shown:
        per_subject.add_row(subject, *(str(splits[n]["subjects"].get(subject, 0)) for n in names), str(totals[subject]))
    console.print(per_subject)
    funnel = manifest.get("funnel", {})
    if funnel:
        console.print("Funnel: " + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in funnel.items()))


@app.command("search")
def search(
    query: Annotated[str | None, typer.Argument(help="Text to search for: keywords, a title, an abstract.")] = None,
    arxiv_id: Annotated[str | None, typer.Option("--id", help="Papers like this arXiv id (itself left out).")] = None,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Number of papers to show.")] = 10,
    overrides: OverrideOpt = None,
) -> None:
    """Nearest papers to a text, or to an indexed paper (--id), in the index 'uv run inv index' built."""
    from arxiv_embeddings.config import compose
    from arxiv_embeddings.index.format import index_dir
    from arxiv_embeddings.index.search import PaperIndex, query_embedder

    if (query is None) == (arxiv_id is None):
        console.print("[red]Give either a query text or --id ARXIV_ID.[/red]")
        raise typer.Exit(code=2)
    cfg = compose("index", overrides or [])
    try:
        index = PaperIndex.load(index_dir(cfg))
        if arxiv_id is not None:
            paper = index.paper(arxiv_id)
            title = f"Papers like {arxiv_id} ({paper['primary_subject']}): {paper['title']}"
            hits = index.search_id(arxiv_id, k)
        else:
            title = f"Papers nearest to {query!r}"
            hits = index.search_text(query_embedder(index, cfg), [str(query)], k)[0]
    except (FileNotFoundError, ValueError, KeyError) as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(code=1) from None
    table = Table(title=title, caption=f"{index!r} at {index.path}")
    for name, justify in (("#", "right"), ("score", "right"), ("arXiv id", "left"), ("subject", "left")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    table.add_column("title")
    for rank, hit in enumerate(hits, 1):
        table.add_row(str(rank), f"{hit.score:.3f}", hit.arxiv_id, hit.primary_subject, hit.title)
    console.print(table)


@app.command("similar")
def similar(
    arxiv_id: Annotated[str, typer.Argument(help="arXiv id of an indexed paper, e.g. 2401.01234.")],
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Number of papers to show.")] = 10,
    overrides: OverrideOpt = None,
) -> None:
    """Papers like this one: the nearest papers to an indexed paper, itself left out (same as 'search --id')."""
    search(query=None, arxiv_id=arxiv_id, k=k, overrides=overrides)


@app.command("publish")
def publish(
    source: Annotated[Path, typer.Option(help="The reports folder the stages wrote (paths.reports_dir).")] = Path(
        "reports"
    ),
    dest: Annotated[
        Path, typer.Option(help="The published results folder (committed; shown by README and docs).")
    ] = Path("results"),
    runs: Annotated[
        list[str] | None, typer.Option("--run", help="Publish only this run (repeatable); default: every run.")
    ] = None,
    allow_failing_gate: Annotated[
        bool, typer.Option(help="Publish a model that does not beat zero-shot on the fresh papers.")
    ] = False,
) -> None:
    """Copy finished run reports into the published results folder and rebuild its comparison.md."""
    from arxiv_embeddings.logging_utils import setup_logging
    from arxiv_embeddings.publish import publish as publish_reports

    setup_logging()
    try:
        published = publish_reports(source, dest, runs, allow_failing_gate)
    except (FileNotFoundError, ValueError) as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(code=1) from None
    console.print(f"Published {', '.join(published)} to {dest}.")


def main() -> None:
    """The ``arxiv-embed`` command. A subcommand that needs the pipeline's libraries, in an install without them
    (``pip install arxiv-embeddings``, the API image), says which extra brings them instead of a traceback."""
    try:
        app()
    except ModuleNotFoundError as err:
        missing = (err.name or str(err)).split(".")[0]
        console.print(
            f"This command needs {missing}, which this install does not have. Install the pipeline's libraries: "
            "pip install 'arxiv-embeddings[train]' (in a checkout: uv sync).",
            style="red",
            markup=False,
            soft_wrap=True,
        )
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()

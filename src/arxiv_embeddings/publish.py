"""publish: copy finished run reports into the committed results folder, as an explicit step.

    uv run inv publish                                                    # reports/ -> results/
    uv run inv publish --source runs/cpu-budget/reports --dest results/cpu-budget
    uv run inv publish --runs minilm-sample,zero-shot                     # only these runs

The stages write a user's runs to ``${paths.reports_dir}`` (``reports/``, ignored by git), so running the pipeline
never changes what the repository publishes. ``results/`` holds the published runs that the README and the
documentation site show; this module is the only thing that writes there. Each run folder is replaced as a whole
(its ``metrics.json``, ``report.md`` and ``plots/``; stage stamps are left behind), atomically, so a failure leaves
the previous copy intact; then ``comparison.md`` of the destination is rebuilt from every run it holds.

Two gates guard what is published (``--allow-failing-gate`` overrides them): a run must beat the zero-shot run on the
balanced fresh papers (the whole interval of its P@10 gain above 0), and must not lose search there (its title ->
abstract R@1 on the fresh papers at least zero-shot's minus 0.005, on the same titles).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from loguru import logger

from arxiv_embeddings.evaluation.settings import METRICS_FILE, PLOTS_DIR, REPORT_FILE
from arxiv_embeddings.io import atomic_dir
from arxiv_embeddings.report import (
    COMPARISON_FILE,
    REFERENCE_RUN,
    SEARCH_TOLERANCE,
    compare,
    gains_over_reference,
    load_reports,
    search_failure,
)

#: Where the published results live, relative to the repository root.
RESULTS_DIR = "results"


def run_reports(source: Path) -> list[str]:
    """Names of the run folders directly under ``source`` that hold a ``metrics.json``, sorted."""
    if not source.is_dir():
        return []
    return sorted(p.parent.name for p in source.glob(f"*/{METRICS_FILE}"))


def _check_run(folder: Path) -> None:
    """A run folder is published only whole: metrics.json (valid JSON) and report.md."""
    report = folder / REPORT_FILE
    if not report.is_file():
        raise FileNotFoundError(f"{report} is missing; re-run the evaluation of {folder.name} ('uv run inv evaluate').")
    try:
        json.loads((folder / METRICS_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{folder / METRICS_FILE} is not valid JSON ({err}); re-run the evaluation of {folder.name}."
        ) from err


class GateError(ValueError):
    """A model to publish does not beat the zero-shot run on the fresh papers, or loses its search."""


def check_gate(
    source: Path, chosen: Sequence[str], reference: str = REFERENCE_RUN, search_tolerance: float = SEARCH_TOLERANCE
) -> None:
    """Refuse to publish a run (other than TF-IDF) that fails a gate of the comparison, judged against the
    ``reference`` run in ``source``: the generalization gate (the interval of its fresh P@10 gain must be above 0)
    and the search gate (its title -> abstract R@1 on the fresh papers must be at least the reference's minus
    ``search_tolerance``, on the same titles). A run whose report predates the fresh title -> abstract figures is
    not checked for search (a warning says so)."""
    reports = [m for m in load_reports(source) if m.get("run") in {*chosen, reference}]
    problems = []
    for g in gains_over_reference(reports, reference, search_tolerance=search_tolerance):
        if g["kind"] == "tfidf":
            continue
        if g["gate"] == "fail":
            fresh = g["gains"]["fresh P@10"]
            problems.append(
                f"{g['run']}: fresh P@10 gain {fresh['diff']:+.4f} [{fresh['low']:+.4f}, {fresh['high']:+.4f}] does "
                f"not beat {reference} on papers it never saw (the interval must be above 0)"
            )
        if g["search_gate"] == "fail":
            problems.append(search_failure(g, reference))
        elif g["search_gate"] == "not checked" and g["run"] in chosen:
            logger.warning(
                f"publish: search gate not checked for {g['run']}: its metrics.json or {reference}'s has no title -> "
                "abstract figures on the fresh papers (fresh_title_abstract); re-run 'uv run inv evaluate' and "
                "'uv run inv baseline' to check it."
            )
    if problems:
        raise GateError(
            f"Not published: {'; '.join(problems)}. Improve the recipe (docs/training.md; to keep search, train on "
            "title -> abstract pairs as well), or pass --allow-failing-gate to publish it anyway."
        )


def publish(
    source: str | Path,
    dest: str | Path,
    runs: Sequence[str] | None = None,
    allow_failing_gate: bool = False,
    search_tolerance: float = SEARCH_TOLERANCE,
) -> list[str]:
    """Copy the run reports under ``source`` (all of them, or ``runs``) to ``dest`` and rebuild
    ``dest/comparison.md``. Returns the names of the runs published.

    Every run is checked before anything is copied, so a bad one publishes none; so are the generalization and
    search gates (:func:`check_gate`) unless ``allow_failing_gate``. Runs already in ``dest`` that are not published now are kept
    (and stay in its comparison).
    """
    source, dest = Path(source), Path(dest)
    available = run_reports(source)
    if not available:
        raise FileNotFoundError(
            f"No run reports under {source}/<run>/ ({METRICS_FILE} + {REPORT_FILE}); run 'uv run inv pipeline' "
            "(or 'uv run inv evaluate' / 'uv run inv baseline') first, or point --source at the reports folder."
        )
    chosen = list(dict.fromkeys(runs)) if runs else available
    unknown = [r for r in chosen if r not in available]
    if unknown:
        raise FileNotFoundError(
            f"No report for run(s) {', '.join(unknown)} under {source}/; the runs there are: {', '.join(available)}."
        )
    if source.resolve() == dest.resolve():
        raise ValueError(f"--source and --dest are the same folder ({source}); publish copies from one to the other.")
    for name in chosen:
        _check_run(source / name)
    if not allow_failing_gate:
        check_gate(source, chosen, search_tolerance=search_tolerance)
    for name in chosen:
        src = source / name
        with atomic_dir(dest / name) as tmp:
            for fname in (METRICS_FILE, REPORT_FILE):
                shutil.copy2(src / fname, tmp / fname)
            if (src / PLOTS_DIR).is_dir():
                shutil.copytree(src / PLOTS_DIR, tmp / PLOTS_DIR)
        logger.info(f"publish: {src} -> {dest / name}")
    compare(dest)
    logger.success(f"publish: {len(chosen)} run(s) published to {dest}; {dest / COMPARISON_FILE} rebuilt.")
    return chosen

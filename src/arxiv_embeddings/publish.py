"""publish: copy finished run reports into the committed results folder, as an explicit step.

    uv run inv publish                                                    # reports/ -> results/
    uv run inv publish --source runs/cpu-budget/reports --dest results/cpu-budget
    uv run inv publish --runs minilm-sample,zero-shot                     # only these runs

The stages write a user's runs to ``${paths.reports_dir}`` (``reports/``, ignored by git), so running the pipeline
never changes what the repository publishes. ``results/`` holds the published runs that the README and the
documentation site show; this module is the only thing that writes there. Each run folder is replaced as a whole
(its ``metrics.json``, ``report.md`` and ``plots/``; stage stamps are left behind), atomically, so a failure leaves
the previous copy intact; then ``comparison.md`` of the destination is rebuilt from every run it holds.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from loguru import logger

from arxiv_embeddings.evaluation import METRICS_FILE, PLOTS_DIR, REPORT_FILE
from arxiv_embeddings.io import atomic_dir
from arxiv_embeddings.report import COMPARISON_FILE, REFERENCE_RUN, compare, gains_over_reference, load_reports

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
    """A model to publish does not beat the zero-shot run on the fresh papers."""


def check_gate(source: Path, chosen: Sequence[str], reference: str = REFERENCE_RUN) -> None:
    """Refuse to publish a fine-tuned run that does not beat ``reference`` on the fresh papers (the generalization
    gate of the comparison), judged against the reference run in ``source``."""
    reports = [m for m in load_reports(source) if m.get("run") in {*chosen, reference}]
    failing = [g for g in gains_over_reference(reports, reference) if g["gate"] == "fail" and g["kind"] != "tfidf"]
    if failing:
        lines = [
            f"{g['run']}: fresh P@10 gain {g['gains']['fresh P@10']['diff']:+.4f} "
            f"[{g['gains']['fresh P@10']['low']:+.4f}, {g['gains']['fresh P@10']['high']:+.4f}]"
            for g in failing
        ]
        raise GateError(
            f"Not published: {'; '.join(lines)} does not beat {reference} on papers it never saw (the interval must "
            "be above 0). Improve the recipe (docs/training.md), or pass --allow-failing-gate to publish it anyway."
        )


def publish(
    source: str | Path, dest: str | Path, runs: Sequence[str] | None = None, allow_failing_gate: bool = False
) -> list[str]:
    """Copy the run reports under ``source`` (all of them, or ``runs``) to ``dest`` and rebuild
    ``dest/comparison.md``. Returns the names of the runs published.

    Every run is checked before anything is copied, so a bad one publishes none; so is the generalization gate
    (:func:`check_gate`) unless ``allow_failing_gate``. Runs already in ``dest`` that are not published now are kept
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
        check_gate(source, chosen)
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

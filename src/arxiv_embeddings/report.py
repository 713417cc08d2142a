"""Human-readable views of an evaluation: the Markdown report, its PNG plots, and the comparison of every run.

Plots use Matplotlib's object-oriented API (``Figure`` with the Agg canvas), so nothing touches pyplot's global
state or needs a display.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger
from omegaconf import DictConfig

from arxiv_embeddings.io import artifact_path, atomic_write_text
from arxiv_embeddings.metrics import Matrix, is_sparse, paired_bootstrap, paired_bootstrap_spearman

COMPARISON_FILE = "comparison.md"
#: The run every other run's gain is measured against (the baseline stage's zero-shot run, baseline.zero_shot.name).
REFERENCE_RUN = "zero-shot"
#: The sets of papers every task is scored on: (label, what it is, prefix of its metrics.json sections).
SLICES = (
    ("test", "the processed test split", ""),
    ("fresh", "the balanced fresh papers (resources/arxiv_fresh.parquet: 15 per subject)", "fresh_"),
    (
        "natural",
        "the fresh papers in natural arXiv proportions (resources/arxiv_fresh_natural.parquet)",
        "fresh_natural_",
    ),
)
#: The three tasks: (title, section of metrics.json without the slice prefix, tag of its gain labels, [(metric,
#: key)]). Subject retrieval's test section is ``subject_retrieval``, its fresh ones ``fresh_retrieval`` and
#: ``fresh_natural_retrieval``.
TASKS = (
    ("Subject retrieval", "retrieval", "", (("P@10", "precision@10"), ("MRR@10", "mrr@10"))),
    ("Title → abstract retrieval", "title_abstract", "title→abstract ", (("R@1", "recall@1"), ("MRR@10", "mrr@10"))),
    ("Graded relatedness", "graded", "", (("Spearman", "spearman"),)),
)


def task_section(section: str, prefix: str) -> str:
    """The metrics.json section of a task (``retrieval``, ``title_abstract`` or ``graded``) on a slice (its prefix
    in :data:`SLICES`)."""
    return "subject_retrieval" if section == "retrieval" and not prefix else f"{prefix}{section}"


#: Gains over the reference with paired-bootstrap intervals: (label, section of metrics.json, per-query key). The
#: key ``spearman`` is the graded score, bootstrapped over the pairs of papers instead of the queries.
GAIN_METRICS = tuple(
    (f"{slice_label} {tag}{metric}", task_section(section, prefix), key)
    for _, section, tag, metrics in TASKS
    for slice_label, _, prefix in SLICES
    for metric, key in metrics
)
#: The gain tables, one per task: (title, [(column header, gain label)]).
GAIN_TABLES = tuple(
    (
        title,
        tuple(
            (f"{slice_label} {metric}", f"{slice_label} {tag}{metric}")
            for slice_label, _, _ in SLICES
            for metric, _ in metrics
        ),
    )
    for title, _, tag, metrics in TASKS
)
#: The generalization gate: the gain on this (section, key) must be above 0 with the whole interval.
GATE = ("fresh_retrieval", "precision@10")
#: The search gate: a run's title -> abstract R@1 on the fresh papers (the same queries) must be at least the
#: reference's minus :data:`SEARCH_TOLERANCE`.
SEARCH_GATE = ("fresh_title_abstract", "recall@1")
SEARCH_TOLERANCE = 0.005
#: Columns of the comparison table: (header, section of metrics.json, key).
COMPARE_COLUMNS = (
    ("P@10", "subject_retrieval", "precision@10"),
    ("MRR@10", "subject_retrieval", "mrr@10"),
    ("NDCG@10", "subject_retrieval", "ndcg@10"),
    ("MAP@100", "subject_retrieval", "map@100"),
    ("Fresh P@10", "fresh_retrieval", "precision@10"),
    ("Fresh MRR@10", "fresh_retrieval", "mrr@10"),
    ("Title→abstract R@1", "title_abstract", "recall@1"),
    ("Title→abstract R@10", "title_abstract", "recall@10"),
    ("Title→abstract MRR@10", "title_abstract", "mrr@10"),
    ("Accuracy", "classification", "accuracy"),
    ("Macro-F1", "classification", "macro_f1"),
    ("V-measure", "clustering", "v_measure"),
    ("AMI", "clustering", "ami"),
)


# ------------------------------------------------------------------------------------------------- plots
def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def plot_per_subject(
    path: Path, per_subject: dict[str, dict[str, float]], key: str, title: str, overall: float | None = None
) -> Path:
    """Horizontal bars of one per-subject metric, best subject on top, with the overall value as a dashed line."""
    items = sorted(((s, v[key]) for s, v in per_subject.items()), key=lambda sv: sv[1])
    fig = _figure(7, max(2.5, 0.17 * len(items) + 1.2))
    ax = fig.add_subplot()
    ax.barh([s for s, _ in items], [v for _, v in items], color="#4c72b0")
    if overall is not None:
        ax.axvline(overall, color="#c44e52", linestyle="--", linewidth=1, label=f"all queries: {overall:.3f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.6, len(items) - 0.4)
    ax.set_xlabel(key)
    ax.set_title(title)
    ax.tick_params(axis="y", labelsize=7 if len(items) > 30 else 9)
    fig.savefig(path)
    return path


def plot_confusion(path: Path, matrix: list[list[int]], labels: list[str], title: str) -> Path:
    """Row-normalized confusion matrix (rows: true subject, columns: predicted)."""
    cm = np.asarray(matrix, dtype=np.float64)
    cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(labels)
    size = max(4.0, 0.28 * n + 2) if n <= 80 else 12.0  # beyond 80 subjects the cells carry no tick labels
    fig = _figure(size + 1, size)
    ax = fig.add_subplot()
    image = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true subject")
    if n <= 80:
        font = max(4, min(9, 300 // max(n, 1)))
        ax.set_xticks(range(n), labels, rotation=90, fontsize=font)
        ax.set_yticks(range(n), labels, fontsize=font)
    ax.set_xlabel("predicted subject" if n <= 80 else "predicted subject (index into classification.labels)")
    ax.set_ylabel("true subject")
    ax.set_title(title)
    fig.savefig(path)
    return path


def project_2d(vectors: Matrix, method: str, seed: int) -> np.ndarray:
    """2-D coordinates of the rows: PCA (TruncatedSVD for sparse rows) or t-SNE (after a 50-d reduction)."""
    from sklearn.decomposition import PCA, TruncatedSVD

    n = int(vectors.shape[0])
    dims = int(vectors.shape[1])

    def reduce(k: int) -> np.ndarray:
        k = max(1, min(k, n - 1 if is_sparse(vectors) else n, dims - 1 if is_sparse(vectors) else dims))
        if is_sparse(vectors):
            return TruncatedSVD(n_components=k, random_state=seed).fit_transform(vectors)
        return PCA(n_components=k, random_state=seed).fit_transform(np.asarray(vectors))

    if method == "tsne" and n > 5:
        from sklearn.manifold import TSNE

        base = reduce(50)
        return TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed).fit_transform(
            base
        )
    coords = reduce(2)
    return coords if coords.shape[1] == 2 else np.column_stack([coords[:, 0], np.zeros(n)])


def plot_map(path: Path, coords: np.ndarray, labels: np.ndarray, max_legend: int, title: str) -> Path:
    """Scatter of 2-D coordinates coloured by subject (the most frequent subjects; the others grey)."""
    import matplotlib

    names, counts = np.unique(labels, return_counts=True)
    shown = [str(s) for s in names[np.argsort(-counts, kind="stable")][:max_legend]]
    cmap = matplotlib.colormaps["tab20" if len(shown) > 10 else "tab10"]
    fig = _figure(8, 6.5)
    ax = fig.add_subplot()
    other = ~np.isin(labels, shown)
    if other.any():
        ax.scatter(
            coords[other, 0], coords[other, 1], s=5, c="#bbbbbb", alpha=0.5, label="other subjects", linewidths=0
        )
    for i, subject in enumerate(shown):
        mask = labels == subject
        ax.scatter(
            coords[mask, 0], coords[mask, 1], s=8, color=cmap(i % cmap.N), alpha=0.8, label=subject, linewidths=0
        )
    ax.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    fig.savefig(path)
    return path


def write_plots(
    directory: Path, metrics: dict[str, Any], papers: Matrix, labels: np.ndarray, cfg: DictConfig
) -> dict[str, Path]:
    """Write the per-subject P@k bars, the confusion matrix and the 2-D map; returns their paths by name."""
    from arxiv_embeddings.papers import sample_rows

    p = cfg.evaluate.plots
    directory.mkdir(parents=True, exist_ok=True)
    run = metrics["run"]
    key = f"precision@{cfg.evaluate.retrieval.per_subject_at}"
    out = {
        "per_subject": plot_per_subject(
            directory / "per_subject_precision.png",
            metrics["subject_retrieval"]["per_subject"],
            key,
            f"{run}: subject retrieval {key} per subject",
            metrics["subject_retrieval"].get(key),
        ),
        "confusion": plot_confusion(
            directory / "confusion_matrix.png",
            metrics["classification"]["confusion_matrix"],
            metrics["classification"]["labels"],
            f"{run}: logistic regression on the test papers",
        ),
    }
    rows = sample_rows(int(papers.shape[0]), int(p.max_points), int(cfg.seed), "plot")
    sub = papers[rows] if len(rows) < papers.shape[0] else papers
    coords = project_2d(sub, str(p.map_method), int(cfg.seed))
    out["map"] = plot_map(
        directory / "embedding_map.png",
        coords,
        np.asarray(labels)[rows],
        int(p.max_legend_subjects),
        f"{run}: test papers ({p.map_method.upper()}, {len(rows):,} points)",
    )
    return out


# ---------------------------------------------------------------------------------------------- markdown
def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(metrics: dict[str, Any], plots: dict[str, Path]) -> str:
    """The report.md of one run, with its plots linked by relative path."""
    sr, ta, cl, cu = (metrics[k] for k in ("subject_retrieval", "title_abstract", "classification", "clustering"))
    test = metrics["data"]["test"]
    scalar = [[k, v] for k, v in sr.items() if isinstance(v, float)]
    per_subject = sorted(sr["per_subject"].items(), key=lambda kv: kv[0])
    per_key = next((k for k in next(iter(sr["per_subject"].values()), {}) if k != "queries"), "precision@10")
    parts = [
        f"# Evaluation: {metrics['run']}",
        "",
        f"- Model: `{metrics['model']}` ({metrics['kind']})",
        f"- Paper text: `{metrics['text']}`; split scored: **{metrics['split']}** "
        f"({test['papers']:,} of {test['split_papers']:,} papers, {metrics['num_subjects']} subjects)",
        f"- Created: {metrics['created_at']}",
        "",
        "## Subject retrieval",
        "",
        f"Each test paper is a query against the other {sr['corpus_size'] - 1:,} test papers; a result is relevant when it "
        f"has the same primary subject. {sr['num_queries']:,} queries (papers alone in their subject are left out).",
        "",
        _table(["metric", "value"], scalar),
        "",
        "## Title → abstract retrieval",
        "",
        f"Query: a paper's title; corpus: the {ta['corpus_size']:,} test abstracts; exactly one relevant abstract"
        + (f" (searched with {ta['search']})." if ta.get("search") else "."),
        "",
        _table(["metric", "value"], [[k, v] for k, v in ta.items() if isinstance(v, float)]),
        "",
        *_graded_section(metrics),
        *_fresh_section(metrics),
        "## Classification",
        "",
        f"Logistic regression on frozen vectors, fit on {cl['num_train_papers']:,} train papers, scored on the test papers.",
        "",
        _table(["metric", "value"], [["accuracy", cl["accuracy"]], ["macro-F1", cl["macro_f1"]]]),
        "",
        f"![Confusion matrix]({plots['confusion'].as_posix()})" if "confusion" in plots else "",
        "",
        "<details><summary>Per-class report</summary>",
        "",
        _table(
            ["subject", "precision", "recall", "F1", "support"],
            [[s, v["precision"], v["recall"], v["f1"], v["support"]] for s, v in cl["per_class"].items()],
        ),
        "",
        "</details>",
        "",
        "## Clustering",
        "",
        f"k-means with k = {cu['k']} (the number of subjects) on the test vectors.",
        "",
        _table(["metric", "value"], [[k, v] for k, v in cu.items() if isinstance(v, float)]),
        "",
        f"## Subject retrieval {per_key} per subject",
        "",
        f"![Per-subject {per_key}]({plots['per_subject'].as_posix()})" if "per_subject" in plots else "",
        "",
        _table(["subject", per_key, "queries"], [[s, v[per_key], v["queries"]] for s, v in per_subject]),
        "",
        "## Map of the test papers",
        "",
        f"![Map]({plots['map'].as_posix()})" if "map" in plots else "",
        "",
    ]
    return "\n".join(parts)


def _fresh_section(metrics: dict[str, Any]) -> list[str]:
    """The report's generalization-check sections (subject and title -> abstract retrieval among each slice of fresh
    papers), for the slices that ran."""
    out: list[str] = []
    for key, title, what in (
        ("fresh", "fresh papers", "balanced: 15 per subject as shipped"),
        (
            "fresh_natural",
            "fresh papers in natural proportions",
            "a uniform random draw as shipped: arXiv's own proportions",
        ),
    ):
        fr, info = metrics.get(f"{key}_retrieval"), (metrics.get("data") or {}).get(key)
        if not fr or not info:
            continue
        out += [
            f"## Generalization check: {title}",
            "",
            f"Subject retrieval among {info['papers']:,} papers of {info['subjects']} subjects that no stage trained on "
            f"({what}; `{info['path']}`; {info['dropped_seen']:,} of its {info['file_papers']:,} papers were left out "
            f"because a processed split holds them, {info.get('dropped_small_subjects', 0):,} more because their "
            f"subject had too few): each is a query against the other {fr['corpus_size'] - 1:,}, relevant = same "
            f"primary subject. {fr['num_queries']:,} queries.",
            "",
            _table(["metric", "value"], [[k, v] for k, v in fr.items() if isinstance(v, float)]),
            "",
        ]
        ta = metrics.get(f"{key}_title_abstract")
        if ta:
            out += [
                f"Title → abstract retrieval among the same papers: each of the {ta['num_queries']:,} titles against "
                f"their {ta['corpus_size']:,} abstracts, one relevant"
                + (f" (searched with {ta['search']})." if ta.get("search") else "."),
                "",
                _table(["metric", "value"], [[k, v] for k, v in ta.items() if isinstance(v, float)]),
                "",
            ]
    return out


def _graded_section(metrics: dict[str, Any]) -> list[str]:
    """The report's graded-relatedness section: the Spearman correlation on each set of papers that has one."""
    rows = [
        [
            label,
            g["num_pairs"],
            g["same_subject_pairs"],
            g["mean_overlap"],
            g["spearman"] if g["spearman"] is not None else "–",
        ]
        for label, key in (
            ("test", "graded"),
            ("fresh papers (balanced)", "fresh_graded"),
            ("fresh papers (natural proportions)", "fresh_natural_graded"),
        )
        if (g := metrics.get(key))
    ]
    if not rows:
        return []
    return [
        "## Graded relatedness",
        "",
        "Spearman correlation of two papers' cosine similarity with the Jaccard overlap of their subject lists, over "
        "seeded pairs of papers (some of one primary subject, the rest random), so that a model is scored on how "
        "related it finds papers, not only on whether they share a subject.",
        "",
        _table(["papers", "pairs", "same-subject pairs", "mean overlap", "Spearman"], rows),
        "",
    ]


# ------------------------------------------------------------------------------------------------ compare
def _paired_gain(mine: dict[str, Any], theirs: dict[str, Any], key: str, resamples: int, confidence: float) -> Any:
    """The bootstrap of one gain from two runs' per-query figures (paired by arxiv id), or for ``spearman`` from
    their per-pair cosines (paired by the two arxiv ids, the same overlap); None without at least 2 (3) pairs."""
    if key == "spearman":
        a_pairs, b_pairs = mine.get("per_pair"), theirs.get("per_pair")
        if not a_pairs or not b_pairs:
            return None
        ref = {
            (i, j): (c, o)
            for i, j, c, o in zip(b_pairs["a"], b_pairs["b"], b_pairs["cosine"], b_pairs["overlap"], strict=True)
        }
        rows = [
            (c, ref[(i, j)][0], o)
            for i, j, c, o in zip(a_pairs["a"], a_pairs["b"], a_pairs["cosine"], a_pairs["overlap"], strict=True)
            if (i, j) in ref and abs(ref[(i, j)][1] - o) < 1e-6
        ]
        if len(rows) < 3:
            return None
        a, b, overlap = zip(*rows, strict=True)
        try:
            return paired_bootstrap_spearman(a, b, overlap, resamples=resamples, confidence=confidence)
        except ValueError as err:  # a constant array: no rank correlation to compare
            logger.warning(f"compare: no graded gain ({err})")
            return None
    a_q, b_q = mine.get("per_query"), theirs.get("per_query")
    if not a_q or not b_q or key not in a_q or key not in b_q:
        return None
    ref_values = dict(zip(b_q["arxiv_id"], b_q[key], strict=True))
    pairs = [(v, ref_values[i]) for i, v in zip(a_q["arxiv_id"], a_q[key], strict=True) if i in ref_values]
    if len(pairs) < 2:
        return None
    a, b = zip(*pairs, strict=True)
    return paired_bootstrap(a, b, resamples=resamples, confidence=confidence)


def gains_over_reference(
    reports: list[dict[str, Any]],
    reference: str = REFERENCE_RUN,
    resamples: int = 2000,
    confidence: float = 0.95,
    search_tolerance: float = SEARCH_TOLERANCE,
) -> list[dict[str, Any]]:
    """Each run's gain over the ``reference`` run on :data:`GAIN_METRICS`, from the per-query figures of both (paired
    by arxiv id: the same queries; for the graded score, the same pairs of papers), with paired-bootstrap
    intervals, and its two verdicts.

    ``gate`` (generalization) is ``pass`` when the whole interval of the :data:`GATE` gain is above 0, ``fail`` when
    it is not, and ``not checked`` when either run has no fresh-paper figures. ``search_gate`` is ``pass`` when the
    run's title -> abstract R@1 on the fresh papers (:data:`SEARCH_GATE`, over the queries both runs scored) is at
    least the reference's minus ``search_tolerance``, ``fail`` when it is lower, ``not checked`` without the figures
    (``search`` then holds both R@1 and the tolerance). Empty when there is no reference run."""
    ref = next((m for m in reports if m.get("run") == reference), None)
    if ref is None:
        return []
    out = []
    for m in reports:
        if m is ref:
            continue
        row: dict[str, Any] = {"run": m.get("run"), "kind": m.get("kind"), "gains": {}}
        for label, section, key in GAIN_METRICS:
            gain = _paired_gain(m.get(section) or {}, ref.get(section) or {}, key, resamples, confidence)
            if gain is not None:
                row["gains"][label] = {"section": section, "key": key, **gain}
        gate = next((g for g in row["gains"].values() if (g["section"], g["key"]) == GATE), None)
        row["gate"] = "not checked" if gate is None else ("pass" if gate["low"] > 0 else "fail")
        search = next((g for g in row["gains"].values() if (g["section"], g["key"]) == SEARCH_GATE), None)
        if search is None:
            row["search_gate"] = "not checked"
        else:
            row["search"] = {
                "run": search["a"],
                "reference": search["b"],
                "n": search["n"],
                "tolerance": search_tolerance,
            }
            row["search_gate"] = "pass" if search["a"] >= search["b"] - search_tolerance - 1e-12 else "fail"
        out.append(row)
    return out


def _verdict(value: str) -> str:
    return {"pass": "**yes**", "fail": "**no**"}.get(value, value)


def gains_table(
    gains: list[dict[str, Any]], reference: str, confidence: float, search_tolerance: float = SEARCH_TOLERANCE
) -> str:
    """Markdown: each run's gain over the reference with its interval, one table per task (:data:`GAIN_TABLES`),
    with the generalization verdict beside subject retrieval and the search verdict beside title -> abstract."""
    parts = []
    for title, columns in GAIN_TABLES:
        verdict = {
            "Subject retrieval": ("gate", f"Beats `{reference}` on fresh papers"),
            "Title → abstract retrieval": (
                "search_gate",
                f"Keeps search on fresh papers (R@1 ≥ `{reference}` − {search_tolerance:g})",
            ),
        }.get(title)
        header = [*(f"{h} gain" for h, _ in columns), *([verdict[1]] if verdict else [])]
        lines = [
            f"### {title}",
            "",
            f"| Run | {' | '.join(header)} |",
            "|---|" + "---:|" * len(columns) + ("---|" if verdict else ""),
        ]
        for row in gains:
            cells = []
            for _, label in columns:
                g = row["gains"].get(label)
                cells.append("–" if g is None else f"{g['diff']:+.4f} [{g['low']:+.4f}, {g['high']:+.4f}]")
            if verdict:
                cells.append(_verdict(row.get(verdict[0], "not checked")))
            lines.append(f"| `{row['run']}` | {' | '.join(cells)} |")
        parts.append("\n".join([*lines, ""]))
    return "\n".join(parts).rstrip("\n")


def load_reports(reports_dir: str | Path) -> list[dict[str, Any]]:
    """Every ``<reports_dir>/<run>/metrics.json`` (unreadable ones are skipped with a warning), sorted by run.
    ``reports_dir`` may be a bucket URL (``paths=gcs``)."""
    out = []
    for path in sorted(artifact_path(reports_dir).glob("*/metrics.json"), key=str):
        if path.parent.name.startswith("."):
            continue
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            logger.warning(f"Skipping {path}: {err}")
            continue
        if not isinstance(metrics, dict) or "subject_retrieval" not in metrics:
            logger.warning(f"Skipping {path}: not an evaluation metrics.json.")
            continue
        out.append(metrics)
    return out


def _value(m: dict[str, Any], section: str, key: str) -> float | None:
    v = (m.get(section) or {}).get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _bold_table(
    reports: list[dict[str, Any]], first: list[tuple[str, str]], columns: list[tuple[str, str, str]]
) -> str:
    """Markdown: a row per run (``first``: header and alignment of the leading cells, from :func:`_lead_cells`) and a
    column per (header, section, key), best value of each column in bold."""
    best = {
        col: max((v for m in reports if (v := _value(m, sec, key)) is not None), default=None)
        for col, sec, key in columns
    }
    rows = []
    for m in reports:
        cells = _lead_cells(m)[: len(first)]
        for col, sec, key in columns:
            v = _value(m, sec, key)
            text = "–" if v is None else f"{v:.4f}"
            cells.append(f"**{text}**" if v is not None and v == best[col] and len(reports) > 1 else text)
        rows.append(cells)
    lines = [
        "| " + " | ".join([*(h for h, _ in first), *(c for c, _, _ in columns)]) + " |",
        "|" + "|".join([*(a for _, a in first), *(["---:"] * len(columns))]) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _lead_cells(m: dict[str, Any]) -> list[str]:
    return [
        f"`{m.get('run', '?')}`",
        str(m.get("kind", "?")),
        f"{m.get('data', {}).get('test', {}).get('papers', '?'):,}",
    ]


def _by_ndcg(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(reports, key=lambda m: (-(_value(m, "subject_retrieval", "ndcg@10") or -1.0), m.get("run", "")))


def comparison_table(reports: list[dict[str, Any]]) -> str:
    """One Markdown table of the key metrics of every run, best value of each column in bold, runs by NDCG@10."""
    first = [("Run", "---"), ("Kind", "---"), ("Test papers", "---:")]
    return _bold_table(_by_ndcg(reports), first, list(COMPARE_COLUMNS))


def task_tables(reports: list[dict[str, Any]]) -> str:
    """Markdown: one table per task (:data:`TASKS`) with its figures on the test split and on both fresh slices,
    best of each column in bold, runs by NDCG@10."""
    parts = []
    for title, section, _, metrics in TASKS:
        columns = [
            (f"{slice_label} {metric}", task_section(section, prefix), key)
            for slice_label, _, prefix in SLICES
            for metric, key in metrics
        ]
        parts += [f"### {title}", "", _bold_table(_by_ndcg(reports), [("Run", "---")], columns), ""]
    return "\n".join(parts).rstrip("\n")


def slices_note(reports: list[dict[str, Any]]) -> str:
    """One paragraph saying which papers each slice label of the tables means (sizes from the reports)."""

    def size(key: str) -> str:
        info = next((m["data"][key] for m in reports if (m.get("data") or {}).get(key)), None)
        return f"; {info['papers']:,} papers of {info['subjects']} subjects here" if info else "; not scored here"

    return (
        "Which papers each figure is on: **test** is the processed test split; **fresh** the balanced fresh papers "
        f"(by default resources/arxiv_fresh.parquet, 15 per primary subject{size('fresh')}); **natural** the fresh "
        "papers in natural arXiv proportions (by default resources/arxiv_fresh_natural.parquet, 2,000 papers drawn "
        f"uniformly at random, so cs.CV about one in eight{size('fresh_natural')}). No stage trains on either fresh slice, and papers that "
        "the processed splits hold are left out of both. Graded relatedness is the Spearman correlation of two "
        "papers' cosine similarity with the Jaccard overlap of their subject lists, over seeded pairs (half of one "
        "primary subject by default)."
    )


def compare(
    reports_dir: str | Path,
    reference: str = REFERENCE_RUN,
    resamples: int = 2000,
    confidence: float = 0.95,
    search_tolerance: float = SEARCH_TOLERANCE,
) -> str:
    """Side-by-side tables of every run under ``reports_dir`` (a folder or a bucket URL): the overview, each run's gain
    over the ``reference`` run with paired-bootstrap intervals and its two verdicts (generalization, search), and
    each task on the test split and both fresh slices: printed, and written to ``reports_dir/comparison.md``. A run
    that fails either verdict is logged as a warning.

    Returns the Markdown. Raises :class:`FileNotFoundError` when there is no report to compare.
    """
    reports_dir = artifact_path(reports_dir)
    reports = load_reports(reports_dir)
    if not reports:
        raise FileNotFoundError(
            f"No metrics.json under {reports_dir}/<run>/; run 'uv run inv evaluate' or 'uv run inv baseline' first."
        )
    notes = []
    test_hashes = {m.get("data", {}).get("test", {}).get("sha256") for m in reports}
    if len(test_hashes) > 1:
        notes.append("> **Warning:** these runs were scored on different test splits (their test.parquet differ).")
    caps = {
        (m.get("data", {}).get("test", {}).get("papers"), m.get("data", {}).get("train", {}).get("papers"))
        for m in reports
    }
    if len(caps) > 1:
        notes.append("> **Note:** the runs used different numbers of test or classifier-train papers.")
    lengths = {m.get("features", {}).get("max_seq_length") for m in reports if m.get("kind") != "tfidf"} - {None}
    if len(lengths) > 1:
        notes.append(f"> **Note:** the models were scored at different max_seq_length ({sorted(lengths)} tokens).")
    table = comparison_table(reports)
    gains = gains_over_reference(reports, reference, resamples, confidence, search_tolerance)
    gain_part: list[str] = []
    if gains:
        gain_part = [
            f"## Gain over `{reference}`",
            "",
            f"Each run minus `{reference}` on the same queries (for the graded score, the same pairs of papers), with "
            f"{confidence:.0%} paired-bootstrap intervals ({resamples:,} resamples of the queries or pairs). A run "
            f"beats `{reference}` on fresh papers when the whole interval of its fresh P@10 gain is above 0; it keeps "
            f"search when its title→abstract R@1 on the fresh papers is at least `{reference}`'s minus "
            f"{search_tolerance:g}. `inv publish` refuses a run that fails either.",
            "",
            gains_table(gains, reference, confidence, search_tolerance),
            "",
        ]
        for row in gains:
            if row["kind"] == "tfidf":
                continue
            if row["gate"] == "fail":
                g = row["gains"]["fresh P@10"]
                logger.warning(
                    f"compare: {row['run']} does not beat {reference} on the fresh papers: P@10 gain {g['diff']:+.4f} "
                    f"[{g['low']:+.4f}, {g['high']:+.4f}]."
                )
            if row["search_gate"] == "fail":
                logger.warning(f"compare: {search_failure(row, reference)}.")
    text = "\n".join(
        [
            "# Comparison of evaluated runs",
            "",
            "Subject retrieval (P@10, MRR@10, NDCG@10, MAP@100) on the test split, and P@10 and MRR@10 on the balanced "
            "fresh papers of the generalization check; title→abstract recall@1, recall@10 and MRR@10 on the test "
            "split; logistic regression accuracy and macro-F1; k-means V-measure and adjusted mutual information "
            "(AMI). Best of each column in bold. The three tasks on every slice, including the fresh papers in "
            "natural proportions, follow the gains.",
            "",
            *notes,
            *([""] if notes else []),
            table,
            "",
            *gain_part,
            "## Each task on each slice",
            "",
            slices_note(reports),
            "",
            task_tables(reports),
            "",
        ]
    )
    path = atomic_write_text(reports_dir / COMPARISON_FILE, text)
    print(table)  # the one place library code prints: the tables are this command's output
    if gains:
        print(gains_table(gains, reference, confidence, search_tolerance))
    print(task_tables(reports))
    logger.success(f"compare: {len(reports)} run(s) compared; wrote {path}.")
    return text


def search_failure(row: dict[str, Any], reference: str) -> str:
    """What a failed search verdict of :func:`gains_over_reference` means, with both figures."""
    s = row["search"]
    return (
        f"{row['run']} loses search: title→abstract R@1 on the fresh papers {s['run']:.4f} against {reference}'s "
        f"{s['reference']:.4f} on the same {s['n']:,} titles, more than {s['tolerance']:g} below"
    )

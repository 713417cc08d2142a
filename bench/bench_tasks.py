"""Every task at once: training recipes side by side, each scored on subject retrieval, title -> abstract search and
graded relatedness, on the test split and on fresh papers.

    uv run python bench/bench_tasks.py                                    # every variant below
    uv run python bench/bench_tasks.py --variants subject-4k,mix-2k-2k-groups --bootstrap 2000

Every variant fine-tunes the real all-MiniLM-L6-v2 on the embedded sample (the pipeline's own preprocess and pairs
stages, in a temporary root) with the same optimizer settings, and is scored like the untouched base model
(zero-shot) at the served length (256 tokens, fp32):

- subject: each paper is a query against the other papers of its set; relevant = same primary subject (P@10, MRR@10);
- search: each title against the set's abstracts; relevant = its own abstract (R@1, MRR@10);
- graded: Spearman correlation of the cosine with the Jaccard overlap of the two papers' subject lists, over a seeded
  set of pairs of the set's papers (half of one primary subject, half at random), so the overlaps spread.

The sets are the test split (815 papers) and the fresh papers of the generalization check (1,740 papers of 116
subjects, none in the sample). Prints, per variant: training seconds and CPU-minutes on this machine, each figure,
and its gain over zero-shot with a 95% paired-bootstrap interval (the same queries, or pairs, for both models).
Each task goes through the output the trained folder's tasks.json serves it with; a variant with the subject head
(train.head) also gets a row "<variant> (encoder)": the encoder under its head scored alone, which is the same
training without the head (the head is fit after training and leaves the encoder as it is), its seconds those of
training without the head's embedding pass and fit; and a row "<variant> (head for search)": search through the
head too (what an index of the head's vectors gives a free-text query).
Writes the figures to bench/results/tasks.json (merged with the variants already there, so the variants can be run
in several sittings).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

#: Hydra overrides of each variant on top of configs/base.yaml. Each states its tasks and pair counts in full, so the
#: variants stay what they are when the defaults move. 128 steps of 32 pairs each, learning rate 1e-4.
SEARCH = "mix.tasks.search"
VARIANTS: dict[str, list[str]] = {
    # The recipe before multi-task training: subject pairs alone.
    "subject-4k": ["mix=none", "pairs.num_train=4096"],
    # Subject + search, search batches drawn like the subject ones (at most one pair per subject a batch).
    "mix-2k-2k": [
        "mix=subject_search",
        "pairs.num_train=2048",
        f"{SEARCH}.num_train=2048",
        f"{SEARCH}.batch_sampler=subject",
    ],
    # Search batches of 8 subjects x 4 papers: 3 same-subject abstracts as hard negatives of each title.
    "mix-2k-2k-groups": [
        "mix=subject_search",
        "pairs.num_train=2048",
        f"{SEARCH}.num_train=2048",
        f"{SEARCH}.batch_sampler=subject_groups",
    ],
    "mix-3k-1k-groups": [
        "mix=subject_search",
        "pairs.num_train=3072",
        f"{SEARCH}.num_train=1024",
        f"{SEARCH}.batch_sampler=subject_groups",
    ],
    "mix-3k-1.5k-groups": [
        "mix=subject_search",
        "pairs.num_train=3072",
        f"{SEARCH}.num_train=1536",
        f"{SEARCH}.batch_sampler=subject_groups",
    ],
    # These mixes with the subject head (train.head) fit over the trained encoder: subject and graded served by the
    # head, search by the encoder under it (tasks.json).
    "mix-2k-2k-groups-head": [
        "mix=subject_search",
        "pairs.num_train=2048",
        f"{SEARCH}.num_train=2048",
        f"{SEARCH}.batch_sampler=subject_groups",
        "train.head.enabled=true",
        "train.head.kind=lda",
    ],
    "mix-3k-1.5k-groups-head": [
        "mix=subject_search",
        "pairs.num_train=3072",
        f"{SEARCH}.num_train=1536",
        f"{SEARCH}.batch_sampler=subject_groups",
        "train.head.enabled=true",
        "train.head.kind=lda",
    ],
    # No fine-tuning: the base model kept as it is (it serves search) and the subject head alone fit over it.
    "frozen-head": ["train.fine_tune=false", "train.head.enabled=true", "train.head.kind=lda"],
    # Subject pairs alone with the head, and the untouched base model kept beside it for search
    # (train.search_model=base: two encoders in one folder, each task served by its own).
    "subject-4k-head-base": [
        "mix=none",
        "pairs.num_train=4096",
        "train.head.enabled=true",
        "train.head.kind=lda",
        "train.search_model=base",
    ],
    # Search pairs alone (title -> abstract, MNRL), one pair per subject a batch: what in-domain search pairs do to
    # search on their own, the candidate for a search encoder beside the subject one.
    "search-4k": ["mix=none", "pairs=title_abstract", "pairs.num_train=4096"],
    # The same in batches of 8 subjects x 4 papers: 3 same-subject abstracts as hard negatives of each title.
    "search-4k-groups": [
        "mix=none",
        "pairs=title_abstract",
        "pairs.num_train=4096",
        "train.batch_sampler=subject_groups",
    ],
    # Subject + search + graded (CoSENT on the Jaccard overlap of subject lists).
    "mix3-graded-groups": [
        "mix=subject_search_graded",
        "pairs.num_train=2048",
        f"{SEARCH}.num_train=1536",
        "mix.tasks.graded.num_train=512",
        f"{SEARCH}.batch_sampler=subject_groups",
    ],
}
COMMON = [
    "pairs=anchor_positive",
    "loss=mnrl",
    "trainer.learning_rate=1e-4",
    "trainer.per_device_train_batch_size=32",
    "trainer.max_steps=-1",
    "train.papers_per_subject=4",
    # no subject head, and search served by the trained encoder, unless a variant says otherwise
    "train.head.enabled=false",
    "train.search_model=trained",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the queries or pairs")
    parser.add_argument("--graded-pairs", type=int, default=4000, help="pairs per set for the graded score")
    parser.add_argument("--max-seq-length", type=int, default=256, help="tokens per text when scoring")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tasks.json")
    parser.add_argument(
        "--markdown", action="store_true", help="print the bench README's table from --out and exit (no training)"
    )
    args = parser.parse_args()
    if args.markdown:
        print(markdown_table(json.loads(args.out.read_text())))
        return

    import numpy as np
    import pyarrow as pa
    import torch
    from scipy.stats import spearmanr

    from arxiv_embeddings import pairs, preprocess
    from arxiv_embeddings.backends import load_embedder
    from arxiv_embeddings.backends.loading import cpu_supports_bf16
    from arxiv_embeddings.backends.tasks import tasks_of
    from arxiv_embeddings.config import compose
    from arxiv_embeddings.evaluation.data import load_fresh
    from arxiv_embeddings.io import read_parquet
    from arxiv_embeddings.layout import split_path
    from arxiv_embeddings.logging_utils import setup_logging
    from arxiv_embeddings.metrics import RankingCutoffs, label_retrieval, paired_bootstrap, paired_retrieval
    from arxiv_embeddings.pair_format import SubjectIndex, jaccard
    from arxiv_embeddings.papers import paper_text
    from arxiv_embeddings.train import stage as train_stage

    setup_logging("WARNING")
    root = Path(tempfile.mkdtemp(prefix="bench-tasks-"))
    subject_cut = RankingCutoffs(precision_recall_at=(10,), mrr_at=(10,), ndcg_at=(), map_at=(), accuracy_at=())
    search_cut = RankingCutoffs(precision_recall_at=(1,), mrr_at=(10,), ndcg_at=(), map_at=(), accuracy_at=())
    cores = torch.get_num_threads()
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"Unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}.")
    try:
        base_cfg = compose("evaluate", [f"paths.root_dir={root}"])
        preprocess.run(compose("preprocess", [f"paths.root_dir={root}"]))
        tables = {"test": read_parquet(split_path(base_cfg, "test")), "fresh": load_fresh(base_cfg)[0]}
        sets = {}
        for i, (name, table) in enumerate(tables.items()):
            rng = np.random.default_rng(2026 + i)
            index = SubjectIndex.from_table(table)
            n_same = args.graded_pairs // 2
            sa, sb = index.same_subject(n_same, rng, "balanced")
            ra = rng.integers(0, table.num_rows, args.graded_pairs - n_same)
            rb = (ra + 1 + rng.integers(0, table.num_rows - 1, len(ra))) % table.num_rows
            a, b = np.r_[sa, ra], np.r_[sb, rb]
            sets[name] = {
                "papers": list(paper_text(table, "title_abstract")),
                "titles": [str(t) for t in table.column("title").to_pylist()],
                "abstracts": [str(t) for t in table.column("abstract").to_pylist()],
                "labels": np.asarray(table.column("primary_subject").to_pylist()),
                "pairs": (a, b),
                "overlap": jaccard(pa.chunked_array(table.column("subjects").chunks), a, b),
            }

        def score(model: str, outputs: dict[str, str] | None = None) -> dict[str, dict[str, np.ndarray]]:
            """Every figure of ``model``, each task through the output its tasks.json serves it with (with a head:
            subject and graded through the head, search through the encoder or the kept base model), or through
            ``outputs`` when given."""
            embedder = load_embedder(model, backend="torch", device="cpu", max_seq_length=args.max_seq_length)
            served, chosen = tasks_of(model), outputs or {}
            subject_out = chosen.get("subject") or served.output_of("subject")
            search_out = chosen.get("search") or served.output_of("search")
            out = {}
            for name, s in sets.items():
                papers = embedder.encode(s["papers"], batch_size=64, output=subject_out)
                titles = embedder.encode(s["titles"], batch_size=64, output=search_out)
                abstracts = embedder.encode(s["abstracts"], batch_size=64, output=search_out)
                a, b = s["pairs"]
                subject = label_retrieval(papers, s["labels"], cutoffs=subject_cut).per_query
                search = paired_retrieval(titles, abstracts, cutoffs=search_cut).per_query
                out[name] = {
                    "subject P@10": subject["precision@10"],
                    "subject MRR@10": subject["mrr@10"],
                    "search R@1": search["recall@1"],
                    "search MRR@10": search["mrr@10"],
                    "cosine": np.einsum("ij,ij->i", papers[a], papers[b]),
                }
            return out

        def spearman_gain(mine: np.ndarray, ref: np.ndarray, overlap: np.ndarray) -> dict[str, float]:
            rng = np.random.default_rng(0)
            n = len(overlap)
            diffs = []
            for _ in range(args.bootstrap):
                i = rng.integers(0, n, n)
                diffs.append(spearmanr(mine[i], overlap[i])[0] - spearmanr(ref[i], overlap[i])[0])
            lo, hi = np.percentile(diffs, [2.5, 97.5])
            a, b = spearmanr(mine, overlap)[0], spearmanr(ref, overlap)[0]
            return {"a": float(a), "b": float(b), "diff": float(a - b), "low": float(lo), "high": float(hi)}

        def save(rows: dict[str, dict]) -> None:
            zs = {
                split: {m: round(float(v.mean()), 4) for m, v in figures["zero-shot"][split].items() if m != "cosine"}
                for split in sets
            }
            for split in sets:
                zs[split]["graded"] = next(iter(rows.values()))["zero-shot"][f"{split} graded"]
            previous = json.loads(args.out.read_text())["variants"] if args.out.exists() else {}
            meta = {
                "cores": cores,
                "bf16": cpu_supports_bf16(),
                "cpu_count": os.cpu_count(),
                "bootstrap": args.bootstrap,
            }
            args.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.out.with_suffix(".tmp")
            tmp.write_text(
                json.dumps({"machine": meta, "zero_shot": zs, "variants": {**previous, **rows}}, indent=2) + "\n"
            )
            tmp.replace(args.out)

        def make_row(overrides: list[str], summary: dict, wall: float, mine: dict[str, dict[str, np.ndarray]]) -> dict:
            row: dict = {
                "overrides": overrides,
                "precision": summary["precision"],
                "steps": summary["global_step"],
                "pairs_per_s": summary["pairs_per_second"],
                "train_wall_s": round(wall, 1),
                "train_cpu_min": round(wall * cores / 60, 2),
            }
            for split, s in sets.items():
                for metric in ("subject P@10", "subject MRR@10", "search R@1", "search MRR@10"):
                    g = paired_bootstrap(
                        mine[split][metric], figures["zero-shot"][split][metric], resamples=args.bootstrap
                    )
                    row[f"{split} {metric}"] = round(g["a"], 4)
                    row[f"{split} {metric} gain"] = [round(g["diff"], 4), round(g["low"], 4), round(g["high"], 4)]
                g = spearman_gain(mine[split]["cosine"], figures["zero-shot"][split]["cosine"], s["overlap"])
                row[f"{split} graded"] = round(g["a"], 4)
                row[f"{split} graded gain"] = [round(g["diff"], 4), round(g["low"], 4), round(g["high"], 4)]
                row.setdefault("zero-shot", {})[f"{split} graded"] = round(g["b"], 4)
            row["fresh subject P@10 gain per CPU-minute"] = round(
                row["fresh subject P@10 gain"][0] / row["train_cpu_min"], 5
            )
            return row

        t0 = time.perf_counter()
        figures = {"zero-shot": score("sentence-transformers/all-MiniLM-L6-v2")}
        score_s = time.perf_counter() - t0
        rows: dict[str, dict] = {}
        for name in names:
            overrides = [f"paths.root_dir={root}", f"run_name={name}", *COMMON, *VARIANTS[name]]
            if "train.fine_tune=false" not in overrides:  # a head-only run reads no pairs
                pairs.run(compose("pairs", [*overrides, "force=true"]))
            cfg = compose(
                "train",
                [
                    *overrides,
                    "trainer.eval_strategy=no",
                    "trainer.save_strategy=no",
                    "train.eval_papers=0",
                    "train.test_papers=0",
                ],
            )
            t0 = time.perf_counter()
            result = train_stage.run(cfg)
            wall = time.perf_counter() - t0
            model = str(result["model"])
            figures[name] = score(model)
            summary = result["summary"]
            rows[name] = make_row(VARIANTS[name], summary, wall, figures[name])
            print(name, json.dumps(rows[name]), flush=True)
            # a head over a fine-tuned encoder: the encoder alone is the same recipe without the head (a head-only
            # run's encoder is the base model, the zero-shot row)
            if "encoder" in tasks_of(model).outputs and summary.get("fine_tune", True):
                head = summary.get("head") or {}
                head_s = float(head.get("embed_seconds", 0.0)) + float(head.get("fit_seconds", 0.0))
                encoder = f"{name} (encoder)"
                figures[encoder] = score(model, {"subject": "encoder", "search": "encoder"})
                rows[encoder] = make_row(VARIANTS[name], summary, wall - head_s, figures[encoder])
                rows[encoder]["note"] = "the encoder under the head of the variant: every task through the encoder"
                print(encoder, json.dumps(rows[encoder]), flush=True)
            if "encoder" in tasks_of(model).outputs:  # what search loses through the head (an index of head vectors)
                through = f"{name} (head for search)"
                figures[through] = score(model, {"subject": "model", "search": "model"})
                rows[through] = make_row(VARIANTS[name], summary, wall, figures[through])
                rows[through]["note"] = "every task through the head, search included"
                print(through, json.dumps(rows[through]), flush=True)
            save(rows)  # after each variant: a long run interrupted keeps what it measured
            shutil.rmtree(Path(str(result["model"])).parent, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    zs = {
        split: {m: round(float(v.mean()), 4) for m, v in figures["zero-shot"][split].items() if m != "cosine"}
        for split in sets
    }
    for split in sets:
        zs[split]["graded"] = next(iter(rows.values()))["zero-shot"][f"{split} graded"] if rows else None
    print(
        f"\n{len(sets['test']['papers'])} test papers, {len(sets['fresh']['papers'])} fresh papers, "
        f"{args.graded_pairs} graded pairs each; scored at {args.max_seq_length} tokens, fp32 ({score_s:.0f} s per "
        f"model); training CPU bf16 support: {cpu_supports_bf16()}, {cores} threads"
    )
    metrics = ("subject P@10", "search R@1", "graded")
    header = f"{'variant':<20}{'train s':>8}{'CPU-min':>8}" + "".join(
        f"{f'{split} {m}':>36}" for split in sets for m in metrics
    )
    print(header)
    print(
        f"{'zero-shot':<20}{'-':>8}{'-':>8}" + "".join(f"{zs[split][m] or 0:>36.4f}" for split in sets for m in metrics)
    )
    for name, r in rows.items():
        cells = []
        for split in sets:
            for m in metrics:
                value, g = r[f"{split} {m}"], r[f"{split} {m} gain"]
                cells.append(f"{f'{value:.4f} {g[0]:+.4f} [{g[1]:+.4f}, {g[2]:+.4f}]':>36}")
        print(f"{name:<20}{r['train_wall_s']:>8.0f}{r['train_cpu_min']:>8.1f}" + "".join(cells))


def markdown_table(results: dict) -> str:
    """The bench README's table of ``bench/results/tasks.json``: every variant's figures and gains [95% CI]."""
    cells = [(split, metric) for split in ("fresh", "test") for metric in ("subject P@10", "search R@1", "graded")]
    lines = [
        "| variant | precision | steps | train s | " + " | ".join(f"{s} {m}" for s, m in cells) + " |",
        "|---|---|---:|---:|" + "---:|" * len(cells),
        "| zero-shot | – | – | – | " + " | ".join(f"{results['zero_shot'][s][m]:.4f}" for s, m in cells) + " |",
    ]
    for name, row in results["variants"].items():
        figures = []
        for split, metric in cells:
            gain = row[f"{split} {metric} gain"]
            figures.append(f"{row[f'{split} {metric}']:.4f} ({gain[0]:+.4f} [{gain[1]:+.4f}, {gain[2]:+.4f}])")
        lines.append(
            f"| `{name}` | {row['precision']} | {row['steps']} | {row['train_wall_s']:.0f} | "
            + " | ".join(figures)
            + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

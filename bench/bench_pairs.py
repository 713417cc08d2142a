"""Benchmark the pairs stage: pairs/s for each pair type at a million pairs, against a naive per-row loop.

    uv run python bench/bench_pairs.py --num-train 1000000 --naive 20000

Preprocesses the real papers of ``../shared/data/arxiv_corpus.parquet`` (255,055 rows) with ``preprocess.run``
(``data=files``) into a temporary folder under /tmp, then, for each pair type, times ``pairs.run(cfg)`` end to end
(reading the splits, sampling, building the tables, writing the pair and meta parquet files and the manifest) at
``pairs.num_train=1000000`` (plus the default ``pairs.num_eval`` from the eval split).

The naive baseline is what one writes without thinking about speed: the train split as a ``datasets.Dataset``; for
each pair, pick a subject with ``random``, pick two rows, fetch each with ``ds[i]``, build the text and append a
dict; then ``Dataset.from_list(rows).to_parquet(...)``. Its time counts the loop and the write (not loading the
Dataset, nor grouping the rows by subject, which it does once), and it runs on ``--naive`` pairs, since it is
slow; the rate is what compares.

Prints one table: per pair type, the stage's seconds and pairs/s, the naive loop's seconds and pairs/s, the
speed-up, and the target (<= 10 s for a million pairs).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT.parent / "shared" / "data" / "arxiv_corpus.parquet"
TYPES = ("anchor_positive", "contrastive", "graded", "title_abstract")
TARGET_SECONDS = 10.0
TARGET_PAIRS = 1_000_000


def _cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


# ------------------------------------------------------------------------------------------- naive baseline
def group_by_subject(ds: Any) -> dict[str, list[int]]:
    """Row numbers of each primary subject (done once, outside the timed loop)."""
    by_subject: dict[str, list[int]] = {}
    for i, subject in enumerate(ds["primary_subject"]):
        by_subject.setdefault(subject, []).append(i)
    return by_subject


def naive_pairs(ds: Any, by_subject: dict[str, list[int]], pair_type: str, n: int, seed: int) -> list[dict]:
    """``n`` pairs of ``pair_type`` from a ``datasets.Dataset``, one ``ds[i]`` lookup per paper, as a list of dicts."""
    rng = random.Random(seed)
    subjects = [s for s, rows in by_subject.items() if len(rows) >= 2]
    all_subjects = list(by_subject)

    def text(row: dict) -> str:
        return row["title"] + "\n" + row["abstract"]

    out: list[dict] = []
    for _ in range(n):
        if pair_type == "title_abstract":
            row = ds[rng.randrange(len(ds))]
            out.append({"anchor": row["title"], "positive": row["abstract"]})
            continue
        if pair_type == "anchor_positive" or rng.random() < 0.5:
            i, j = rng.sample(by_subject[rng.choice(subjects)], 2)
            a, b = ds[i], ds[j]
        elif pair_type == "contrastive":
            a = ds[rng.randrange(len(ds))]
            other = rng.choice(all_subjects)
            while other == a["primary_subject"]:
                other = rng.choice(all_subjects)
            b = ds[rng.choice(by_subject[other])]
        else:  # graded: a random pair of different papers
            i, j = rng.sample(range(len(ds)), 2)
            a, b = ds[i], ds[j]
        if pair_type == "anchor_positive":
            out.append({"anchor": text(a), "positive": text(b)})
        elif pair_type == "contrastive":
            out.append(
                {"sentence1": text(a), "sentence2": text(b), "label": int(a["primary_subject"] == b["primary_subject"])}
            )
        else:
            sa, sb = set(a["subjects"]), set(b["subjects"])
            out.append({"sentence1": text(a), "sentence2": text(b), "score": len(sa & sb) / len(sa | sb)})
    return out


def time_naive(train: Path, pair_type: str, n: int, seed: int, work: Path) -> float:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    ds = datasets.Dataset.from_parquet(str(train), cache_dir=str(work / "hf_cache"))
    by_subject = group_by_subject(ds)
    t0 = time.perf_counter()
    rows = naive_pairs(ds, by_subject, pair_type, n, seed)
    datasets.Dataset.from_list(rows).to_parquet(str(work / f"naive_{pair_type}.parquet"))
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num-train", type=int, default=TARGET_PAIRS, help="train pairs per pair type")
    ap.add_argument("--naive", type=int, default=20_000, help="pairs for the naive loop (0 to skip it)")
    ap.add_argument("--types", nargs="+", choices=TYPES, default=list(TYPES))
    ap.add_argument("--repeat", type=int, default=1, help="runs of the stage per pair type (best is kept)")
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="real papers to preprocess (a parquet)")
    ap.add_argument("--tmp-dir", type=Path, default=Path("/tmp"), help="where the temporary folder goes")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for the pairs stage, after --")
    args = ap.parse_args()
    if not args.corpus.exists():
        raise SystemExit(f"Corpus not found at {args.corpus}; pass --corpus PATH (a parquet of papers).")

    from loguru import logger

    from arxiv_embeddings import pairs, preprocess
    from arxiv_embeddings.config import compose

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    work = Path(tempfile.mkdtemp(prefix="bench-pairs-", dir=args.tmp_dir))
    results = []
    try:
        t0 = time.perf_counter()
        pre = preprocess.run(
            compose("preprocess", ["data=files", f"data.path={args.corpus}", f"paths.root_dir={work}"])
        )
        counts = ", ".join(f"{k} {v:,}" for k, v in pre["counts"].items())
        print(f"preprocessed {args.corpus.name}: {counts} papers in {time.perf_counter() - t0:.1f}s")
        train = Path(pre["dir"]) / "train.parquet"
        for pair_type in args.types:
            cfg = compose(
                "pairs",
                [f"pairs={pair_type}", f"pairs.num_train={args.num_train}", f"paths.root_dir={work}", *args.overrides],
            )
            times = []
            for _ in range(args.repeat):
                gc.collect()
                load = os.getloadavg()[0]
                (user0, sys0), t0 = _cpu(), time.perf_counter()
                out = pairs.run(cfg)
                times.append((time.perf_counter() - t0, *(b - a for a, b in zip((user0, sys0), _cpu(), strict=True))))
                print(
                    f"{pair_type}: stage {times[-1][0]:.2f}s (CPU user {times[-1][1]:.1f}s + sys {times[-1][2]:.1f}s, "
                    f"load average {load:.2f}) for {out['counts']} pairs",
                    flush=True,
                )
            naive = time_naive(train, pair_type, args.naive, args.seed, work) if args.naive else 0.0
            if args.naive:
                print(f"{pair_type}: naive loop {naive:.2f}s for {args.naive:,} pairs", flush=True)
            results.append((pair_type, out["counts"]["train"], min(t[0] for t in times), naive))
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\nmachine: {os.cpu_count()} cores; stage times are the best of {args.repeat} run(s)")
    print(
        f"\npairs.run end to end (num_train={args.num_train:,}, num_eval as configured) vs the naive ds[i] loop "
        f"({args.naive:,} pairs), texts = title + abstract"
    )
    print(f"{'pair type':<17}{'stage s':>9}{'pairs/s':>12}{'naive s':>9}{'pairs/s':>9}{'speed-up':>10}   target")
    for pair_type, n, seconds, naive in results:
        rate = n / seconds
        if args.naive:
            naive_rate = args.naive / naive
            naive_cols = f"{naive:>9.2f}{naive_rate:>9,.0f}{rate / naive_rate:>9,.0f}x"
        else:
            naive_cols = f"{'-':>9}{'-':>9}{'-':>10}"
        # The target is for a million pairs; smaller runs are dominated by fixed costs (every pair file holds
        # all the split's texts once, as its dictionary), so they get no verdict.
        ok = ("PASS" if seconds <= TARGET_SECONDS else "MISS") if n >= TARGET_PAIRS else "n/a (target is at 1M)"
        print(f"{pair_type:<17}{seconds:>9.2f}{rate:>12,.0f}{naive_cols}   <= {TARGET_SECONDS:.0f} s for 1M: {ok}")


if __name__ == "__main__":
    main()

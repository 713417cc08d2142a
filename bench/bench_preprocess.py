"""Benchmark the preprocess stage at full scale: rows/s and peak RSS against the input's in-memory size.

    uv run python bench/bench_preprocess.py --rows 2500000

Builds a corpus the size of ``nick007x/arxiv-papers`` (2,549,619 rows) by replicating the real papers of
``../shared/data/arxiv_corpus.parquet`` (255,055 rows) about 10x, writes it as parquet to a temporary folder under
/tmp, then runs ``preprocess.run(cfg)`` on it (``data=files data.path=...``) in a fresh subprocess, so the peak RSS
is the stage's own (interpreter and imports included): the child's VmHWM, read from /proc/self/status.

The replicas are made to look like the upstream dump, not like ten copies of one file:

- every copy of a paper gets its own arxiv_id (odd copies carry a ``v1`` version suffix the stage strips);
- abstracts are perturbed (one word appended, drawn from a vocabulary that is disjoint between copies), so they
  are not exact duplicates, except for a few rows that keep the original abstract with altered whitespace
  (duplicates only after normalization) and a few that repeat an existing arxiv_id (``v2``) with the same abstract;
- ``subjects`` is one ``"; "``-joined string, as upstream, and with ``--schema mixed`` (the default) half of the
  rows use the Hugging Face labels (``"Machine Learning (cs.LG)"``) for ``primary_subject`` and ``subjects``, the
  other half bare codes; ``--schema hf`` labels every row and ``--schema normalized`` writes bare codes with
  ``subjects`` as a list (the corpus's own schema);
- a few rows have a misaligned primary subject (a ``Journal-ref:`` string), as the upstream scraper produces;
- with ``--wrapped 1`` every abstract also gets line breaks (arXiv's raw abstracts are wrapped), the worst case for
  the whitespace pass: every row then goes through the regex instead of being kept as it is.

Prints the build figures, then one table: rows in / kept, seconds, rows/s, input in-memory size (Arrow
``table.nbytes``), peak RSS and their ratio, each next to its target (>= 50,000 rows/s, peak RSS <= 2x input).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT.parent / "shared" / "data" / "arxiv_corpus.parquet"
TARGET_ROWS_PER_S = 50_000
TARGET_RSS_RATIO = 2.0
RESULT_MARK = "BENCH_RESULT "
ROW_GROUP_BYTES = 100 * 10**6

# Hugging Face label names for the commonest codes; any other code gets a generated name in the same format.
NAMES = {
    "cs.CV": "Computer Vision and Pattern Recognition",
    "cs.CL": "Computation and Language",
    "cs.AI": "Artificial Intelligence",
    "cs.LG": "Machine Learning",
    "cs.RO": "Robotics",
    "quant-ph": "Quantum Physics",
    "math.AP": "Analysis of PDEs",
    "astro-ph.GA": "Astrophysics of Galaxies",
    "hep-ph": "High Energy Physics - Phenomenology",
    "gr-qc": "General Relativity and Quantum Cosmology",
    "stat.ML": "Machine Learning",
    "math.NA": "Numerical Analysis",
    "eess.SY": "Systems and Control",
}


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


# -------------------------------------------------------------------------------------------- the corpus
def _labels(codes):
    """Arrow array of codes -> "Name (code)" labels, through the dictionary of distinct codes."""
    import pyarrow as pa
    import pyarrow.compute as pc

    enc = (
        pc.dictionary_encode(codes).combine_chunks()
        if isinstance(codes, pa.ChunkedArray)
        else pc.dictionary_encode(codes)
    )
    names = [f"{NAMES.get(c, 'Subject ' + c)} ({c})" for c in enc.dictionary.to_pylist()]
    return pa.array(names, pa.large_string()).take(enc.indices)


def _concat(values, suffix: str):
    import pyarrow as pa
    import pyarrow.compute as pc

    empty = pa.scalar("", pa.large_string())
    return pc.binary_join_element_wise(values, pa.scalar(suffix, pa.large_string()), empty)


def build_corpus(corpus: Path, rows: int, schema: str, seed: int, out: Path, wrapped: float = 0.0) -> dict[str, float]:
    """Write ``rows`` replicated, perturbed papers to ``out`` (parquet). Returns build figures."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    base = pq.read_table(corpus).replace_schema_metadata(None)
    base = base.combine_chunks()
    n = base.num_rows
    copies = math.ceil(rows / n)
    rng = np.random.default_rng(seed)

    ids = pc.cast(base.column("arxiv_id"), pa.large_string())
    abstracts = pc.cast(base.column("abstract"), pa.large_string())
    primary = pc.cast(base.column("primary_subject"), pa.large_string())
    subjects = base.column("subjects").combine_chunks()
    if schema == "normalized":
        subj_plain = subj_label = subjects
        prim_label = primary
    else:
        flat = pc.list_flatten(subjects)
        offsets = subjects.offsets
        subj_plain = pc.binary_join(subjects, "; ")
        subj_label = pc.binary_join(pa.ListArray.from_arrays(offsets, pc.cast(_labels(flat), pa.string())), "; ")
        prim_label = _labels(primary)

    # Words for perturbing abstracts: distinct words of the corpus, split into one disjoint slice per copy.
    words = pc.unique(pc.list_flatten(pc.split_pattern(abstracts.slice(0, 20_000), " ")))
    words = words.filter(pc.match_substring_regex(words, r"^[a-z]{4,}$"))
    words = pc.cast(words, pa.large_string())
    per_copy = max(1, len(words) // max(1, copies - 1))

    parts = []
    for r in range(copies):
        if r == 0:
            rid, rabs = ids, abstracts
            dup_id = dup_abs = np.zeros(n, dtype=bool)
        else:
            u = rng.random(n)
            dup_id = u < 0.005  # same paper again under its own id (v2), same abstract
            dup_abs = (u >= 0.005) & (u < 0.025)  # another id, same abstract up to whitespace
            new_id = _concat(ids, f"-{r}v1" if r % 2 else f"-{r}")
            rid = pc.if_else(pa.array(dup_id), _concat(ids, "v2"), new_id)
            pick = words.slice((r - 1) * per_copy, per_copy).take(pa.array(rng.integers(0, per_copy, n)))
            perturbed = pc.binary_join_element_wise(abstracts, pick, pa.scalar(" ", pa.large_string()))
            spaced = pc.replace_substring(abstracts, " ", "  \n", max_replacements=1)
            rabs = pc.if_else(pa.array(dup_id), abstracts, pc.if_else(pa.array(dup_abs), spaced, perturbed))
        if schema == "mixed":
            hf = pa.array(rng.random(n) < 0.5)
            rprim, rsubj = pc.if_else(hf, prim_label, primary), pc.if_else(hf, subj_label, subj_plain)
        elif schema == "hf":
            rprim, rsubj = prim_label, subj_label
        else:
            rprim, rsubj = primary, subj_plain
        if wrapped:  # line breaks, as in arXiv's own abstracts: these rows all need their whitespace collapsed
            wrap = pa.array(rng.random(n) < wrapped)
            rabs = pc.if_else(wrap, pc.replace_substring(rabs, " ", "\n", max_replacements=12), rabs)
        bad = pa.array(rng.random(n) < 0.001)  # misaligned scraper rows
        rprim = pc.if_else(bad, pa.scalar("Journal-ref: Phys. Rev. D 100, 012345 (2019)", pa.large_string()), rprim)
        part = pa.table(
            {
                "arxiv_id": rid,
                "title": base.column("title"),
                "abstract": rabs,
                "primary_subject": rprim,
                "subjects": rsubj,
                "source": base.column("source"),
            }
        )
        parts.append(part.slice(0, min(n, rows - r * n)))
    table = pa.concat_tables(parts)
    built = time.perf_counter() - t0
    # Row groups of about 100 MB in memory, as `datasets` writes the Hub's parquet files (config.MAX_ROW_GROUP_SIZE).
    pq.write_table(table, out, row_group_size=max(1, table.num_rows * ROW_GROUP_BYTES // max(1, table.nbytes)))
    written = time.perf_counter() - t0 - built
    del table, parts
    # The input's in-memory size: the table exactly as the stage's loader reads it back.
    readback = pq.read_table(out)
    figures = {
        "rows": readback.num_rows,
        "nbytes": readback.nbytes,
        "file_bytes": out.stat().st_size,
        "build_s": built,
        "write_s": written,
    }
    del readback
    return figures


# ----------------------------------------------------------------------------------------- the measured run
def _vm_hwm() -> int:
    """This process's peak resident set size in bytes (VmHWM: the high-water mark of its own address space)."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))


def _cpu_seconds() -> tuple[float, float]:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def child(path: str, root: str, overrides: list[str]) -> None:
    """Run the stage (in the fresh subprocess) and print its figures as one JSON line."""
    from arxiv_embeddings import preprocess
    from arxiv_embeddings.config import compose

    cfg = compose("preprocess", ["data=files", f"data.path={path}", f"paths.root_dir={root}", *overrides])
    rss_imports = _vm_hwm()
    (user0, sys0), t0 = _cpu_seconds(), time.perf_counter()
    result = preprocess.run(cfg)
    seconds, (user1, sys1) = time.perf_counter() - t0, _cpu_seconds()
    out = {
        "seconds": seconds,
        "user": user1 - user0,
        "sys": sys1 - sys0,
        "funnel": result["funnel"],
        "counts": result["counts"],
        "rss_imports": rss_imports,
        "peak_rss": _vm_hwm(),
    }
    print(RESULT_MARK + json.dumps(out), flush=True)


def measure(path: Path, root: Path, overrides: list[str]) -> dict:
    """Run :func:`child` in a fresh interpreter and return its figures.

    The peak RSS is the child's VmHWM, not ``ru_maxrss``: Linux carries the parent's high-water mark into a forked
    child's ``ru_maxrss`` across exec, so that figure would include the corpus this process built.
    """
    cmd = [sys.executable, __file__, "--child", str(path), "--root", str(root), "--", *overrides]
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"The preprocess run failed (exit {proc.returncode}); its log is above.")
    line = next(x for x in proc.stdout.splitlines() if x.startswith(RESULT_MARK))
    out = json.loads(line[len(RESULT_MARK) :])
    out["load"] = load
    shutil.rmtree(root, ignore_errors=True)
    return out


def machine() -> str:
    cpuinfo, meminfo = Path("/proc/cpuinfo").read_text(), Path("/proc/meminfo").read_text()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), "?")
    mem = next(int(ln.split()[1]) for ln in meminfo.splitlines() if ln.startswith("MemTotal")) / 2**20
    return f"{os.cpu_count()} x {cpu}, {mem:.0f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--rows", type=int, default=2_549_619, help="rows in the synthetic corpus (default: the HF dataset's)"
    )
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="real papers to replicate (normalized schema)")
    ap.add_argument("--schema", choices=("mixed", "hf", "normalized"), default="mixed", help="label format of the rows")
    ap.add_argument(
        "--wrapped", type=float, default=0.0, help="share of abstracts given line breaks (the worst case: all dirty)"
    )
    ap.add_argument("--input", type=Path, help="use this parquet instead of building one (kept afterwards)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of the stage, each in a fresh process (best is kept)")
    ap.add_argument("--tmp-dir", type=Path, default=Path("/tmp"), help="where the temporary folder goes")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (the corpus)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for the stage, after --")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.root, args.overrides)
        return

    work = Path(tempfile.mkdtemp(prefix="bench-preprocess-", dir=args.tmp_dir))
    runs = []
    try:
        if args.input:
            import pyarrow.parquet as pq

            path = args.input
            table = pq.read_table(path)
            build = {"rows": table.num_rows, "nbytes": table.nbytes, "file_bytes": path.stat().st_size}
            del table
            print(f"input: {path} ({build['rows']:,} rows)")
        else:
            if not args.corpus.exists():
                raise SystemExit(
                    f"Corpus not found at {args.corpus}; pass --corpus PATH (a parquet in the normalized schema)."
                )
            path = work / "papers.parquet"
            build = build_corpus(args.corpus, args.rows, args.schema, args.seed, path, args.wrapped)
            print(
                f"built {build['rows']:,} rows (schema={args.schema}, wrapped={args.wrapped:g}) from {args.corpus.name} in {build['build_s']:.1f}s, "
                f"wrote {gib(build['file_bytes'])} parquet in {build['write_s']:.1f}s"
            )
        for _ in range(args.repeat):
            runs.append(measure(path, work / "run", args.overrides))
            r = runs[-1]
            print(
                f"run {len(runs)}: {r['seconds']:.1f}s ({r['funnel']['loaded'] / r['seconds']:,.0f} rows/s), "
                f"CPU user {r['user']:.1f}s + sys {r['sys']:.1f}s, peak RSS {gib(r['peak_rss'])}, "
                f"load average {r['load']:.2f}",
                flush=True,
            )
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    best = min(runs, key=lambda r: r["seconds"])
    rows, secs = best["funnel"]["loaded"], best["seconds"]
    peak = max(r["peak_rss"] for r in runs)
    rate, ratio = rows / secs, peak / build["nbytes"]
    print(f"\nfunnel: {', '.join(f'{k} {v:,}' for k, v in best['funnel'].items())}")
    print(f"splits: {', '.join(f'{k} {v:,}' for k, v in best['counts'].items())}")
    print(f"machine: {machine()}; RSS after imports {gib(best['rss_imports'])}")
    print()
    print(f"{'figure':<38}{'measured':>14}{'target':>12}")
    print(f"{'rows in -> papers kept':<38}{rows:>14,}   -> {best['funnel']['kept']:,}")
    print(f"{'preprocess.run time (best of ' + str(len(runs)) + ')':<38}{secs:>13.1f}s")
    ok = "PASS" if rate >= TARGET_ROWS_PER_S else "MISS"
    print(f"{'rows/s':<38}{rate:>14,.0f}{'>= ' + format(TARGET_ROWS_PER_S, ','):>12}   {ok}")
    print(
        f"{'input in memory (Arrow nbytes)':<38}{gib(build['nbytes']):>14}   (parquet on disk {gib(build['file_bytes'])})"
    )
    print(f"{'peak RSS of the run (max of runs)':<38}{gib(peak):>14}")
    ok = "PASS" if ratio <= TARGET_RSS_RATIO else "MISS"
    print(f"{'peak RSS / input size':<38}{ratio:>13.2f}x{'<= ' + format(TARGET_RSS_RATIO, '.1f') + 'x':>12}   {ok}")


if __name__ == "__main__":
    main()

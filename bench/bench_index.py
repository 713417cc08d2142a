"""Benchmark the index types at scale: recall@10 against exact search, queries/s and memory, side by side.

    uv run python bench/bench_index.py                 # 1,000,000 x 384-d, flat + hnsw + ivf + ivf-pq
    uv run python bench/bench_index.py --n 100000      # a quick run
    uv run python bench/bench_index.py --types flat hnsw --threads 1 -- index.hnsw.m=16 index.hnsw.ef_construction=40

The vectors are synthetic but shaped like all-MiniLM-L6-v2 embeddings of arXiv papers (see ``Generator``): topics,
sub-topics and narrow problems around a common mean, drawn from a Gaussian with the spectrum of real embeddings,
scaled so that random-pair and nearest-neighbour cosines match those of 1,579 real sample papers (``--real`` prints
both). The queries (``--queries``) are drawn the same way and are not in the index. The vectors are written as
embedding shards in a temporary folder and every index is built from them by the stage's own code
(``index.build_index`` with the ``index:`` config and any Hydra overrides given after ``--``), so the figures are
those of ``uv run inv index`` minus the embedding.

For each index: build seconds, bytes of the written FAISS file, the process's RSS growth while it is held, then
for each search setting (``efSearch`` for hnsw, ``nprobe`` for ivf) recall@k against the flat index's exact
results, queries/s for all queries in one call, milliseconds per query one at a time, and both speed-ups over
exact search. The target is recall@10 >= 0.95 at >= 20x the exact search's queries/s.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

TARGET_RECALL = 0.95
TARGET_SPEEDUP = 20.0
#: Search settings swept for each type: (attribute on the index, values).
SWEEPS = {"hnsw": ("efSearch", (32, 64, 128, 192, 256, 512)), "ivf": ("nprobe", (4, 8, 16, 32, 64))}
#: Variants: label -> (index type, extra Hydra overrides).
#: Build settings: the stage's defaults for the graph (m=32, ef_construction=80) and 2,048 lists, half the stage's
#: auto rule (4 * sqrt(n) = 4,000 at a million), which halves k-means and assignment work on two cores. Overrides
#: after -- replace them.
VARIANTS = {
    "flat": ("flat", []),
    "hnsw": ("hnsw", []),
    "ivf": ("ivf", ["index.ivf.nlist=2048"]),
    "ivf-pq": ("ivf", ["index.ivf.nlist=2048", "index.ivf.pq_m=48"]),
}


def rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if abs(n) >= 2**28 else f"{n / 2**20:.0f} MiB"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ------------------------------------------------------------------------------------------------ the data
class Generator:
    """Clustered unit vectors with the shape of sentence embeddings.

    Every component is drawn from one anisotropic Gaussian whose variances fall off as ``i ** -alpha`` along a random
    orthonormal basis (all-MiniLM-L6-v2 embeddings of sample papers fall off with alpha ~0.8). A paper is
    ``m * mean + topic centre + sub-topic offset + problem offset + its own spread``, then L2-normalized: structure
    at three scales (topics, their sub-topics, and narrow problems of a few papers each), as in a real corpus,
    where a paper's nearest neighbours at a million papers are papers on the same problem. ``problems=0`` leaves out
    the finest level. ``--real`` compares these vectors with real embeddings.
    """

    def __init__(
        self,
        dim: int,
        topics: int,
        subtopics: int,
        problems: int,
        seed: int,
        spreads: tuple[float, float, float, float],
        alpha: float = 0.8,
        mean: float = 0.4,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.dim = dim
        q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        lam = np.arange(1, dim + 1, dtype=np.float64) ** -alpha
        self.w = (np.sqrt(lam / lam.sum())[:, None] * q.T).astype(np.float32)  # N(0, I) @ w ~ the Gaussian
        mu = rng.standard_normal(dim)
        self.mu = (mean * mu / np.linalg.norm(mu)).astype(np.float32)
        topic, sub, problem, self.own = spreads
        centres = self.gauss(rng, topics) * topic
        offsets = self.gauss(rng, topics * subtopics).reshape(topics, subtopics, dim) * sub
        self.centres = (self.mu + centres[:, None, :] + offsets).reshape(topics * subtopics, dim)
        if problems:
            fine = self.gauss(rng, topics * subtopics * problems).reshape(topics * subtopics, problems, dim)
            self.centres = (self.centres[:, None, :] + fine * problem).reshape(-1, dim)

    def gauss(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.standard_normal((n, self.dim), dtype=np.float32) @ self.w

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        x = self.gauss(rng, n)
        x *= self.own
        x += self.centres[rng.integers(0, len(self.centres), size=n)]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x


def make_generator(args: argparse.Namespace, dim: int) -> Generator:
    return Generator(dim, args.topics, args.subtopics, args.problems, args.seed, tuple(args.spreads))


def shape_stats(x: np.ndarray) -> str:
    """Mean cosine of random pairs and of the 1st / 10th / 100th nearest neighbour; participation ratio."""
    s = x @ x.T
    np.fill_diagonal(s, -2)
    top = -np.sort(-s, axis=1)
    ev = np.linalg.eigvalsh(np.cov(x.T.astype(np.float64)))
    return (
        f"random pairs {s[np.triu_indices(len(x), 1)].mean():.3f}, nearest {top[:, 0].mean():.3f}, "
        f"10th {top[:, 9].mean():.3f}, 100th {top[:, 99].mean():.3f}; participation ratio "
        f"{ev.sum() ** 2 / (ev**2).sum():.0f}"
    )


def write_shards(gen: Generator, n: int, folder: Path, shard: int, seed: int) -> Any:
    from arxiv_embeddings.index.format import Embeddings

    rng = np.random.default_rng([seed, 1])
    paths = []
    for i, start in enumerate(range(0, n, shard)):
        paths.append(folder / f"shard-{i:05d}.npy")
        np.save(paths[-1], gen.sample(min(shard, n - start), rng))
    return Embeddings(folder=folder, shards=paths, count=n, dimension=gen.dim)


# ------------------------------------------------------------------------------------------------ measuring
def timed_search(index: Any, queries: np.ndarray, k: int, single: int) -> tuple[np.ndarray, float, float]:
    """Ids of all queries searched in one call, queries/s of that call (best of two), median ms of ``single``
    one-query calls."""
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        _, ids = index.search(queries, k)
        best = min(best, time.perf_counter() - t0)
    qps = len(queries) / best
    times = []
    for q in queries[:single]:
        t0 = time.perf_counter()
        index.search(q[None, :], k)
        times.append(time.perf_counter() - t0)
    return ids, qps, float(np.median(times)) * 1000


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(f) & set(e)) / k for f, e in zip(found, exact, strict=True)]))


def index_bytes(index: Any, folder: Path) -> int:
    import faiss

    path = folder / "index.faiss.tmp"
    faiss.write_index(index, str(path))
    size = path.stat().st_size
    path.unlink()
    return size


def search_target(index: Any, index_type: str) -> Any:
    import faiss

    if index_type == "hnsw":
        return faiss.downcast_index(index).hnsw
    return faiss.downcast_index(faiss.extract_index_ivf(index))


def peak_rss() -> int:
    """High-water mark of this process's RSS (VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(
    label: str, embeddings: Any, queries: np.ndarray, exact_ids: np.ndarray | None, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], np.ndarray | None]:
    """Build one variant with the stage's code and measure it (run in a fresh process). Returns its table rows and,
    for flat, the exact neighbours of the queries."""
    import faiss
    from loguru import logger

    from arxiv_embeddings.config import compose
    from arxiv_embeddings.index.build import build_index

    logger.remove()
    faiss.omp_set_num_threads(args.threads)
    index_type, extra = VARIANTS[label]
    cfg = compose("index", [*extra, *args.overrides])
    gc.collect()
    before = rss()
    t0 = time.perf_counter()
    index, params = build_index(index_type, embeddings, cfg.index, args.seed)
    build_s = time.perf_counter() - t0
    gc.collect()
    base = {
        "index": label,
        "build_s": build_s,
        "bytes": index_bytes(index, embeddings.folder),
        "rss": rss() - before,
        "peak": peak_rss() - before,
        "params": params,
    }
    if index_type == "flat":
        ids, qps, ms = timed_search(index, queries, args.k, args.single)
        return [{**base, "setting": "-", "recall": 1.0, "qps": qps, "ms": ms}], ids
    assert exact_ids is not None
    rows = []
    attr, values = SWEEPS[index_type]
    target = search_target(index, index_type)
    for value in values:
        setattr(target, attr, value)
        ids, qps, ms = timed_search(index, queries, args.k, args.single)
        rows.append({**base, "setting": f"{attr}={value}", "recall": recall(ids, exact_ids), "qps": qps, "ms": ms})
    return rows, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors in the index")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries (recall, batched queries/s)")
    parser.add_argument("--single", type=int, default=20, help="queries timed one at a time")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--topics", type=int, default=150)
    parser.add_argument("--subtopics", type=int, default=40, help="sub-topics per topic")
    parser.add_argument("--problems", type=int, default=25, help="problems per sub-topic (0 = no such level)")
    parser.add_argument(
        "--spreads",
        type=float,
        nargs=4,
        default=[1.0, 0.6, 0.7, 0.8],
        metavar=("TOPIC", "SUB", "PROBLEM", "OWN"),
        help="scale of each level (fit to all-MiniLM-L6-v2 sample embeddings with --real)",
    )
    parser.add_argument(
        "--real",
        type=Path,
        help="an embedding shard (.npy, e.g. indexes/.embeddings/<key>/shard-00000.npy): print "
        "the shape figures of its first 2,000 vectors next to as many synthetic ones, and stop",
    )
    parser.add_argument("--threads", type=int, default=2, help="FAISS (OpenMP) threads")
    parser.add_argument("--types", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp-dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the index config (after --)")
    args = parser.parse_args()

    if args.real is not None:
        real = np.asarray(np.load(args.real, mmap_mode="r")[:2000], dtype=np.float32)
        synthetic = make_generator(args, real.shape[1]).sample(len(real), np.random.default_rng(1))
        print(f"cosines of {len(real)} real vectors ({args.real}): {shape_stats(real)}")
        print(f"cosines of {len(real)} synthetic vectors: {shape_stats(synthetic)}")
        return
    print(f"# bench_index: n={args.n:,} dim={args.dim} queries={args.queries} k={args.k} threads={args.threads}")
    print(f"# load average at start: {load_average()} ({os.cpu_count()} cores)")
    work = Path(tempfile.mkdtemp(prefix="bench-index-", dir=args.tmp_dir))
    try:
        t0 = time.perf_counter()
        gen = make_generator(args, args.dim)
        embeddings = write_shards(gen, args.n, work, 100_000, args.seed)
        queries = gen.sample(args.queries, np.random.default_rng([args.seed, 2]))
        print(f"# generated {args.n:,} vectors + {args.queries} queries in {time.perf_counter() - t0:.1f}s")

        rows: list[dict[str, Any]] = []
        exact_ids: np.ndarray | None = None
        # Each index is built and measured in a fresh process, so its memory figures are its own.
        ctx = multiprocessing.get_context("spawn")
        for label in ["flat", *[t for t in args.types if t != "flat"]]:  # exact search first: the reference
            with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                found, exact = pool.submit(measure, label, embeddings, queries, exact_ids, args).result()
            exact_ids = exact if exact is not None else exact_ids
            rows.extend(found)
            print(
                f"# {label}: built in {found[0]['build_s']:.1f}s ({found[0]['params']}); load average {load_average()}",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    head = (
        f"{'index':<8} {'setting':<12} {'build s':>8} {'index bytes':>12} {'RSS held':>10} {'RSS peak':>10} "
        f"{'recall@' + str(args.k):>10} {'queries/s':>10} {'x exact':>8} {'ms/query':>9} {'x exact':>8}  target"
    )
    print()
    print(head)
    print("-" * len(head))
    reached: dict[str, bool] = {}
    exact_qps, exact_ms = rows[0]["qps"], rows[0]["ms"]
    for r in rows:
        speed, speed1 = r["qps"] / exact_qps, exact_ms / r["ms"]
        ok = r["recall"] >= TARGET_RECALL and speed >= TARGET_SPEEDUP
        if r["index"] != "flat":
            reached[r["index"]] = reached.get(r["index"], False) or ok
        print(
            f"{r['index']:<8} {r['setting']:<12} {r['build_s']:>8.1f} {gib(r['bytes']):>12} {gib(r['rss']):>10} "
            f"{gib(r['peak']):>10} "
            f"{r['recall']:>10.3f} {r['qps']:>10,.0f} {speed:>7.1f}x {r['ms']:>9.3f} {speed1:>7.1f}x  "
            + ("" if r["index"] == "flat" else ("PASS" if ok else "-"))
        )
    print()
    for label, ok in reached.items():
        print(
            f"{label}: recall@{args.k} >= {TARGET_RECALL} at >= {TARGET_SPEEDUP:.0f}x exact queries/s: {'PASS' if ok else 'FAIL'}"
        )
    print(f"# load average at end: {load_average()}")


if __name__ == "__main__":
    main()

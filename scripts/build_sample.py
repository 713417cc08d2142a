"""Rebuild the embedded sample (src/arxiv_embeddings/resources/arxiv_sample.parquet) from a larger corpus.

    uv run python scripts/build_sample.py --corpus ../shared/data/arxiv_corpus.parquet

and the fresh papers of the generalization check (resources/arxiv_fresh.parquet): papers of the same corpus that
are not in the sample (neither their id nor their abstract), 15 per primary subject, for the subjects with at least
15 such papers:

    uv run python scripts/build_sample.py --corpus ../shared/data/arxiv_corpus.parquet --per-subject 15 \
        --min-per-subject 15 --seed 2026 --exclude src/arxiv_embeddings/resources/arxiv_sample.parquet \
        --out src/arxiv_embeddings/resources/arxiv_fresh.parquet

and the fresh papers in arXiv's own proportions (resources/arxiv_fresh_natural.parquet): 2,000 papers of the same
corpus drawn uniformly at random (``--random``, not stratified), none of them in the sample or in the balanced fresh
papers (neither their id nor their abstract):

    uv run python scripts/build_sample.py --corpus ../shared/data/arxiv_corpus.parquet --random 2000 --seed 2027 \
        --exclude src/arxiv_embeddings/resources/arxiv_sample.parquet \
        --exclude src/arxiv_embeddings/resources/arxiv_fresh.parquet \
        --out src/arxiv_embeddings/resources/arxiv_fresh_natural.parquet

Stratified by primary subject (the default): up to ``--per-subject`` papers of every primary subject, chosen at
random with a fixed seed, so every field of the corpus is represented and the large ones (cs.CV, cs.CL) do not drown
the rest. ``--random N`` instead draws N papers uniformly at random with the seed, so the subjects keep the corpus's
proportions (cs.CV about one paper in eight).

Where the papers come from: ``../shared/data/arxiv_corpus.parquet``, 255,055 real papers of arXiv listing metadata
(titles, abstracts, categories; mostly 2023-2025 and a 2007 sample) gathered from public repositories that commit the
daily arXiv listings, normalized and deduplicated. arXiv releases this metadata under CC0 1.0, so the files built
here are redistributed under the same terms.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

OUT = Path(__file__).resolve().parents[1] / "src" / "arxiv_embeddings" / "resources" / "arxiv_sample.parquet"
COLUMNS = ["arxiv_id", "title", "abstract", "primary_subject", "subjects"]


def stratified(table: pa.Table, per_subject: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of up to ``per_subject`` papers of every primary subject, in a random order within each subject."""
    subjects = table.column("primary_subject").to_numpy(zero_copy_only=False).astype(str)
    order = np.lexsort((rng.random(len(subjects)), subjects))  # random order within each subject
    sorted_subjects = subjects[order]
    starts = np.r_[0, np.flatnonzero(sorted_subjects[1:] != sorted_subjects[:-1]) + 1]
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    return np.sort(order[rank < per_subject])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--per-subject", type=int, default=60)
    parser.add_argument(
        "--random",
        type=int,
        default=None,
        metavar="N",
        help="draw N papers uniformly at random (natural proportions) instead of --per-subject per subject",
    )
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--exclude",
        type=Path,
        action="append",
        default=[],
        help="leave out the papers of this parquet (same id or abstract); may be given more than once",
    )
    parser.add_argument("--min-per-subject", type=int, default=1, help="leave out subjects with fewer papers left")
    args = parser.parse_args()

    table = pq.read_table(args.corpus, columns=COLUMNS)
    for path in args.exclude:
        other = pq.read_table(path, columns=["arxiv_id", "abstract"])
        seen = pc.or_(
            pc.is_in(table.column("arxiv_id"), value_set=other.column("arxiv_id")),
            pc.is_in(table.column("abstract"), value_set=other.column("abstract")),
        )
        table = table.filter(pc.invert(seen))
    counts = pc.value_counts(table.column("primary_subject"))
    enough = [c["values"].as_py() for c in counts if c["counts"].as_py() >= args.min_per_subject]
    table = table.filter(pc.is_in(table.column("primary_subject"), value_set=pa.array(enough)))
    rng = np.random.default_rng(args.seed)
    if args.random is not None:
        if not 0 < args.random <= table.num_rows:
            parser.error(f"--random {args.random}: expected a number of papers from 1 to {table.num_rows:,}.")
        keep = np.sort(rng.choice(table.num_rows, size=args.random, replace=False))
    else:
        keep = stratified(table, args.per_subject, rng)
    sample = table.take(pa.array(keep))
    sample = sample.take(pc.sort_indices(sample, [("arxiv_id", "ascending")]))
    sample = sample.cast(pa.schema([(n, pa.list_(pa.string()) if n == "subjects" else pa.string()) for n in COLUMNS]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    pq.write_table(sample.replace_schema_metadata(None), tmp, compression="zstd", compression_level=19)
    tmp.replace(args.out)  # atomic: a failed write leaves the previous file intact
    n_subj = len(pc.unique(sample.column("primary_subject")))
    print(
        f"wrote {sample.num_rows} papers, {n_subj} primary subjects, {args.out.stat().st_size / 1e6:.1f} MB -> {args.out}"
    )


if __name__ == "__main__":
    main()

"""Rebuild the embedded sample (src/arxiv_embeddings/resources/arxiv_sample.parquet) from a larger corpus.

    uv run python scripts/build_sample.py --corpus ../shared/data/arxiv_corpus.parquet

and the fresh papers of the generalization check (resources/arxiv_fresh.parquet): papers of the same corpus that
are not in the sample (neither their id nor their abstract), 15 per primary subject, for the subjects with at least
15 such papers:

    uv run python scripts/build_sample.py --corpus ../shared/data/arxiv_corpus.parquet --per-subject 15 \
        --min-per-subject 15 --seed 2026 --exclude src/arxiv_embeddings/resources/arxiv_sample.parquet \
        --out src/arxiv_embeddings/resources/arxiv_fresh.parquet

Stratified by primary subject: up to ``--per-subject`` papers of every primary subject, chosen at random with a
fixed seed, so every field of the corpus is represented and the large ones (cs.CV, cs.CL) do not drown the rest.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--per-subject", type=int, default=60)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--exclude", type=Path, help="leave out the papers of this parquet (same id or abstract)")
    parser.add_argument("--min-per-subject", type=int, default=1, help="leave out subjects with fewer papers left")
    args = parser.parse_args()

    table = pq.read_table(args.corpus, columns=COLUMNS)
    if args.exclude is not None:
        other = pq.read_table(args.exclude, columns=["arxiv_id", "abstract"])
        seen = pc.or_(
            pc.is_in(table.column("arxiv_id"), value_set=other.column("arxiv_id")),
            pc.is_in(table.column("abstract"), value_set=other.column("abstract")),
        )
        table = table.filter(pc.invert(seen))
    counts = pc.value_counts(table.column("primary_subject"))
    enough = [c["values"].as_py() for c in counts if c["counts"].as_py() >= args.min_per_subject]
    table = table.filter(pc.is_in(table.column("primary_subject"), value_set=pa.array(enough)))
    rng = np.random.default_rng(args.seed)
    subjects = table.column("primary_subject").to_numpy(zero_copy_only=False).astype(str)
    order = np.lexsort((rng.random(len(subjects)), subjects))  # random order within each subject
    sorted_subjects = subjects[order]
    starts = np.r_[0, np.flatnonzero(sorted_subjects[1:] != sorted_subjects[:-1]) + 1]
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    keep = np.sort(order[rank < args.per_subject])
    sample = table.take(pa.array(keep))
    sample = sample.take(pc.sort_indices(sample, [("arxiv_id", "ascending")]))
    sample = sample.cast(pa.schema([(n, pa.list_(pa.string()) if n == "subjects" else pa.string()) for n in COLUMNS]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(sample.replace_schema_metadata(None), args.out, compression="zstd", compression_level=19)
    n_subj = len(pc.unique(sample.column("primary_subject")))
    print(
        f"wrote {sample.num_rows} papers, {n_subj} primary subjects, {args.out.stat().st_size / 1e6:.1f} MB -> {args.out}"
    )


if __name__ == "__main__":
    main()

"""What the served length costs: a fine-tuned model and its base, each at 128 and 256 tokens, on the fresh papers.

    uv run python bench/bench_length.py --model models/minilm-sample/final

Subject retrieval among the 1,740 fresh papers of the generalization check (resources/arxiv_fresh.parquet, none in
the embedded sample; each a query against the others, relevant = same primary subject), fp32. Prints P@1, P@10
and MRR@10 of each (model, length) and the P@10 differences that matter, with 95% paired-bootstrap intervals: the
model at 128 tokens against the base at 256 (a model saved at 128 tokens and served so, against the base served at
its own length), both at 256, both at 128, and the base at 128 against itself at 256 (the cost of truncation).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

BASE = "sentence-transformers/all-MiniLM-L6-v2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the fine-tuned model folder")
    parser.add_argument("--base", default=BASE)
    parser.add_argument("--bootstrap", type=int, default=2000)
    args = parser.parse_args()

    from arxiv_embeddings.backends.torch_embedder import TorchEmbedder
    from arxiv_embeddings.evaluation.settings import FRESH_FILE
    from arxiv_embeddings.io import read_parquet
    from arxiv_embeddings.logging_utils import setup_logging
    from arxiv_embeddings.metrics import RankingCutoffs, label_retrieval, paired_bootstrap
    from arxiv_embeddings.papers import SAMPLE_PATH, paper_text

    setup_logging("WARNING")
    papers = read_parquet(SAMPLE_PATH.parent / FRESH_FILE).to_pandas()
    texts, labels = list(paper_text(papers, "title_abstract")), papers.primary_subject.to_numpy()
    cutoffs = RankingCutoffs(precision_recall_at=(1, 10), mrr_at=(10,), ndcg_at=(), map_at=(), accuracy_at=())
    per_query = {}
    for name, path in (("base", args.base), ("model", args.model)):
        for length in (128, 256):
            vectors = TorchEmbedder(path, device="cpu", max_seq_length=length).encode(texts, batch_size=64)
            per_query[(name, length)] = label_retrieval(vectors, labels, cutoffs=cutoffs).per_query
            means = {k: round(float(v.mean()), 4) for k, v in per_query[(name, length)].items()}
            print(
                f"{name:<6}{length:>5} tokens: P@1 {means['precision@1']:.4f}  P@10 {means['precision@10']:.4f}  "
                f"MRR@10 {means['mrr@10']:.4f}",
                flush=True,
            )
    print(f"\nP@10 differences on {len(texts):,} fresh papers, mean [95% paired-bootstrap interval]:")
    for a, b in (
        (("model", 128), ("base", 256)),
        (("model", 256), ("base", 256)),
        (("model", 128), ("base", 128)),
        (("base", 128), ("base", 256)),
    ):
        g = paired_bootstrap(
            per_query[a]["precision@10"], per_query[b]["precision@10"], resamples=args.bootstrap, seed=0
        )
        label = f"{a[0]}@{a[1]} - {b[0]}@{b[1]}"
        print(f"  {label:<24}{g['diff']:+.4f} [{g['low']:+.4f}, {g['high']:+.4f}]")


if __name__ == "__main__":
    main()

"""Training throughput: the default CPU recipe vs a plain fp32 trainer run, side by side, at equal pairs.

    uv run python bench/bench_train.py --steps 40 --batch-size 32

Both runs train the real all-MiniLM-L6-v2 on the same anchor/positive pairs of the embedded sample and are scored
by the same retrieval evaluator (eval split, 256 tokens, so the comparison is about the models, not the encoder
settings). Variants:

- recipe: the train settings of configs/base.yaml as shipped (max_seq_length 128, embeddings + lowest 3 layers
  frozen, precision auto = bf16 where the CPU has AMX / AVX512-BF16 else fp32, subject batch sampler);
- plain:  fp32, the model's own max_seq_length (256), every layer trained, plain random batches;
- recipe-random: the recipe with plain random batches (the effect of the subject sampler).

Every model, and the untouched base model as a reference (zero-shot), is scored the same way: each paper of the
whole eval split (764 papers on the embedded sample) is a query against all the others, relevant = same primary
subject, 256 tokens. Per-query P@10 and MRR@10 give a paired bootstrap 95% interval for each variant's difference
to the plain run, so "equal or better" is read against the noise of the eval set rather than from two means.

Prints pairs/s, eval P@10 / MRR@10 / NDCG@10 per variant, the differences with their intervals, and the speed-up of
the recipe over the plain run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

VARIANTS = {
    "recipe": [],
    "plain": [
        "train.precision=fp32",
        "train.max_seq_length=null",
        "train.batch_sampler=random",
        "train.freeze_layers=0",
    ],
    "recipe-random": ["train.batch_sampler=random"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the eval queries")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train.json")
    args = parser.parse_args()

    import numpy as np
    import pyarrow.parquet as pq

    from arxiv_embeddings import pairs, preprocess
    from arxiv_embeddings.backends.loading import cpu_supports_bf16
    from arxiv_embeddings.backends.torch_embedder import TorchEmbedder
    from arxiv_embeddings.config import compose
    from arxiv_embeddings.layout import split_path
    from arxiv_embeddings.logging_utils import setup_logging
    from arxiv_embeddings.metrics import RankingCutoffs, label_retrieval
    from arxiv_embeddings.papers import paper_text
    from arxiv_embeddings.train import stage as train_stage

    setup_logging("WARNING")
    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    n_pairs = args.steps * args.batch_size
    try:
        preprocess.run(compose("preprocess", [f"paths.root_dir={root}"]))
        pairs.run(compose("pairs", [f"paths.root_dir={root}", f"pairs.num_train={n_pairs}", "pairs.num_eval=0"]))
        eval_papers = pq.read_table(split_path(compose("train", [f"paths.root_dir={root}"]), "eval")).to_pandas()
        eval_texts = list(paper_text(eval_papers, "title_abstract"))
        eval_labels = eval_papers.primary_subject.to_numpy()
        cutoffs = RankingCutoffs(precision_recall_at=(10,), mrr_at=(10,), ndcg_at=(10,), map_at=(), accuracy_at=())

        def score(model: str) -> dict[str, np.ndarray]:
            vectors = TorchEmbedder(model, device="cpu", max_seq_length=256).encode(eval_texts, batch_size=64)
            return label_retrieval(vectors, eval_labels, cutoffs=cutoffs).per_query

        per_query = {"zero-shot": score("sentence-transformers/all-MiniLM-L6-v2")}
        rows: dict[str, dict] = {}
        for name in args.variants.split(","):
            cfg = compose(
                "train",
                [
                    f"paths.root_dir={root}",
                    f"run_name={name}",
                    f"trainer.max_steps={args.steps}",
                    f"trainer.per_device_train_batch_size={args.batch_size}",
                    "trainer.eval_strategy=no",
                    "trainer.save_strategy=no",
                    "train.eval_papers=0",
                    "train.test_papers=0",
                    *VARIANTS[name],
                ],
            )
            t0 = time.perf_counter()
            result = train_stage.run(cfg)
            wall = time.perf_counter() - t0
            per_query[name] = score(str(result["model"]))
            metrics = {k: float(v.mean()) for k, v in per_query[name].items()}
            s = result["summary"]
            rows[name] = {
                "precision": s["precision"],
                "max_seq_length": s["max_seq_length"],
                "batch_sampler": s["batch_sampler"],
                "pairs_per_s": s["pairs_per_second"],
                "train_wall_s": round(wall, 1),
                "P@10": round(metrics["precision@10"], 4),
                "MRR@10": round(metrics["mrr@10"], 4),
                "NDCG@10": round(metrics["ndcg@10"], 4),
            }
            print(name, json.dumps(rows[name]), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"\n{n_pairs} pairs per variant; CPU bf16 support: {cpu_supports_bf16()}")
    print(
        f"{'variant':<15}{'precision':>10}{'seq':>6}{'sampler':>10}{'pairs/s':>10}{'P@10':>8}{'MRR@10':>8}{'NDCG@10':>9}"
    )
    for name, r in rows.items():
        print(
            f"{name:<15}{r['precision']:>10}{r['max_seq_length']:>6}{r['batch_sampler']:>10}{r['pairs_per_s']:>10.2f}"
            f"{r['P@10']:>8.4f}{r['MRR@10']:>8.4f}{r['NDCG@10']:>9.4f}"
        )
    zs = {k: round(float(v.mean()), 4) for k, v in per_query["zero-shot"].items()}
    print(
        f"{'zero-shot':<15}{'fp32':>10}{256:>6}{'-':>10}{'-':>10}{zs['precision@10']:>8.4f}{zs['mrr@10']:>8.4f}{zs['ndcg@10']:>9.4f}"
    )

    # Paired bootstrap over the eval queries: the same resampled queries for both models of a difference.
    rng = np.random.default_rng(0)
    n_queries = len(per_query["zero-shot"]["precision@10"])
    draws = rng.integers(0, n_queries, size=(args.bootstrap, n_queries))
    diffs: dict[str, dict[str, list[float]]] = {}
    print(f"\nDifferences on {n_queries} eval queries, mean [95% paired-bootstrap interval]:")
    for a, b in [("recipe", "plain"), ("recipe", "recipe-random"), ("recipe", "zero-shot"), ("plain", "zero-shot")]:
        if a not in per_query or b not in per_query:
            continue
        diffs[f"{a} - {b}"] = {}
        parts = []
        for metric in ("precision@10", "mrr@10"):
            d = per_query[a][metric] - per_query[b][metric]
            lo, hi = np.quantile(d[draws].mean(axis=1), [0.025, 0.975])
            diffs[f"{a} - {b}"][metric] = [round(float(d.mean()), 4), round(float(lo), 4), round(float(hi), 4)]
            parts.append(f"{metric} {d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}]")
        print(f"  {a + ' - ' + b:<26}" + "   ".join(parts))
    if "recipe" in rows and "plain" in rows:
        print(f"speed-up recipe / plain: {rows['recipe']['pairs_per_s'] / rows['plain']['pairs_per_s']:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"pairs": n_pairs, "variants": rows, "zero_shot": zs, "differences": diffs}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()

"""Training throughput: the default CPU recipe vs a plain fp32 trainer run, side by side, at equal pairs.

    uv run python bench/bench_train.py --steps 40 --batch-size 32

Both runs train the real all-MiniLM-L6-v2 on the same anchor/positive pairs of the embedded sample and are scored
by the same retrieval evaluator (eval split, 256 tokens, so the comparison is about the models, not the encoder
settings). Variants:

- recipe: the train settings of configs/base.yaml as shipped (max_seq_length 128, embeddings + lowest 3 layers
  frozen, precision auto = bf16 where the CPU has AMX / AVX512-BF16 else fp32, subject batch sampler);
- plain:  fp32, the model's own max_seq_length (256), every layer trained, plain random batches;
- recipe-random: the recipe with plain random batches (the effect of the subject sampler).

Prints pairs/s, eval P@10 / MRR@10 / NDCG@10 per variant and the speed-up of the recipe over the plain run.
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
    parser.add_argument("--eval-papers", type=int, default=400)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train.json")
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    from arxiv_embeddings import pairs, preprocess, train
    from arxiv_embeddings.config import compose
    from arxiv_embeddings.logging_utils import setup_logging
    from arxiv_embeddings.models import cpu_supports_bf16

    setup_logging("WARNING")
    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    n_pairs = args.steps * args.batch_size
    try:
        preprocess.run(compose("preprocess", [f"paths.root_dir={root}"]))
        pairs.run(compose("pairs", [f"paths.root_dir={root}", f"pairs.num_train={n_pairs}", "pairs.num_eval=0"]))
        rows = {}
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
            result = train.run(cfg)
            wall = time.perf_counter() - t0
            evaluator = train.retrieval_evaluator(cfg, "eval", args.eval_papers, "title_abstract", "eval")
            model = SentenceTransformer(str(result["model"]), device="cpu")
            model.max_seq_length = 256
            metrics = evaluator(model)
            s = result["summary"]
            rows[name] = {
                "precision": s["precision"],
                "max_seq_length": s["max_seq_length"],
                "batch_sampler": s["batch_sampler"],
                "pairs_per_s": s["pairs_per_second"],
                "train_wall_s": round(wall, 1),
                "P@10": round(metrics["eval_cosine_precision@10"], 4),
                "MRR@10": round(metrics["eval_cosine_mrr@10"], 4),
                "NDCG@10": round(metrics["eval_cosine_ndcg@10"], 4),
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
    if "recipe" in rows and "plain" in rows:
        print(f"speed-up recipe / plain: {rows['recipe']['pairs_per_s'] / rows['plain']['pairs_per_s']:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"pairs": n_pairs, "variants": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()

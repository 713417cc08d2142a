"""Quality per compute: training recipes side by side, each scored on the test split and on fresh papers.

    uv run python bench/bench_recipe.py                                   # every variant below
    uv run python bench/bench_recipe.py --variants default,lr2e-4 --bootstrap 2000

Every variant fine-tunes the real all-MiniLM-L6-v2 on anchor/positive pairs of the embedded sample (the pipeline's
own preprocess and pairs stages, in a temporary root) and is scored, like the untouched base model (zero-shot), by
subject retrieval at the served length (256 tokens, fp32): each paper of the test split (815 papers) is a query
against the other test papers, and each of the fresh papers of the generalization check (1,740 papers of 116
subjects, none in the sample) against the other fresh papers; relevant = same primary subject.

Prints, per variant: training seconds and pairs/s on this machine, test and fresh P@10 and MRR@10, the gain over
zero-shot with a 95% paired-bootstrap interval (the same queries for both models), and the fresh P@10 gain per
training CPU-minute (wall seconds x cores used / 60). Writes the figures to bench/results/recipe.json.
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

LABELLED = ["pairs=labelled", "trainer.per_device_train_batch_size=64"]
SUPCON = [*LABELLED, "loss=supcon"]
#: Hydra overrides of each variant on top of configs/base.yaml. Each names its pairs and learning rate, so the
#: variants stay what they are when the defaults move; `4k-lr1e-4` is the default recipe.
VARIANTS: dict[str, list[str]] = {
    "1k-lr5e-5": ["pairs.num_train=1024", "trainer.learning_rate=5e-5"],
    "1k-lr2e-4": ["pairs.num_train=1024", "trainer.learning_rate=2e-4"],
    "1k-lr2e-4-freeze0": ["pairs.num_train=1024", "trainer.learning_rate=2e-4", "train.freeze_layers=0"],
    "2k-lr2e-4": ["pairs.num_train=2048", "trainer.learning_rate=2e-4"],
    "4k-lr5e-5": ["pairs.num_train=4096", "trainer.learning_rate=5e-5"],
    "4k-lr1e-4": ["pairs.num_train=4096", "trainer.learning_rate=1e-4"],
    "8k-lr1e-4": ["pairs.num_train=8192", "trainer.learning_rate=1e-4"],
    # Label-aware objectives on (text, label) rows: 64 texts a step, as 32 anchor/positive pairs are.
    "supcon-k4": [*SUPCON, "pairs.num_train=2048", "train.papers_per_subject=4", "trainer.learning_rate=5e-5"],
    "supcon-k8": [*SUPCON, "pairs.num_train=2048", "train.papers_per_subject=8", "trainer.learning_rate=5e-5"],
    "batch-hard-k4": [
        *LABELLED,
        "loss=batch_hard_soft_margin_triplet",
        "pairs.num_train=2048",
        "train.papers_per_subject=4",
        "trainer.learning_rate=5e-5",
    ],
    "supcon-k4-8k-lr1e-4": [
        *SUPCON,
        "pairs.num_train=8192",
        "train.papers_per_subject=4",
        "trainer.learning_rate=1e-4",
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the queries")
    parser.add_argument("--max-seq-length", type=int, default=256, help="tokens per text when scoring")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "recipe.json")
    args = parser.parse_args()

    import numpy as np
    import torch

    from arxiv_embeddings import pairs, preprocess
    from arxiv_embeddings.backends.loading import cpu_supports_bf16
    from arxiv_embeddings.backends.torch_embedder import TorchEmbedder
    from arxiv_embeddings.config import compose
    from arxiv_embeddings.evaluation.data import load_fresh
    from arxiv_embeddings.io import read_parquet
    from arxiv_embeddings.layout import split_path
    from arxiv_embeddings.logging_utils import setup_logging
    from arxiv_embeddings.metrics import RankingCutoffs, label_retrieval, paired_bootstrap
    from arxiv_embeddings.papers import paper_text
    from arxiv_embeddings.train import stage as train_stage

    setup_logging("WARNING")
    root = Path(tempfile.mkdtemp(prefix="bench-recipe-"))
    cutoffs = RankingCutoffs(precision_recall_at=(10,), mrr_at=(10,), ndcg_at=(), map_at=(), accuracy_at=())
    cores = torch.get_num_threads()
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"Unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}.")
    try:
        base_cfg = compose("evaluate", [f"paths.root_dir={root}"])
        preprocess.run(compose("preprocess", [f"paths.root_dir={root}"]))
        test = read_parquet(split_path(base_cfg, "test")).to_pandas()
        fresh = load_fresh(base_cfg)[0].to_pandas()
        sets = {
            "test": (list(paper_text(test, "title_abstract")), test.primary_subject.to_numpy()),
            "fresh": (list(paper_text(fresh, "title_abstract")), fresh.primary_subject.to_numpy()),
        }

        def score(model: str) -> dict[str, dict[str, np.ndarray]]:
            embedder = TorchEmbedder(model, device="cpu", max_seq_length=args.max_seq_length)
            return {
                name: label_retrieval(embedder.encode(texts, batch_size=64), labels, cutoffs=cutoffs).per_query
                for name, (texts, labels) in sets.items()
            }

        t0 = time.perf_counter()
        per_query = {"zero-shot": score("sentence-transformers/all-MiniLM-L6-v2")}
        score_s = time.perf_counter() - t0
        rows: dict[str, dict] = {}
        for name in names:
            overrides = [f"paths.root_dir={root}", f"run_name={name}", *VARIANTS[name]]
            pair_overrides = [o for o in overrides if o.startswith(("pairs", "paths.", "seed"))]
            pairs.run(compose("pairs", [*pair_overrides, "force=true"]))
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
            per_query[name] = score(str(result["model"]))
            s = result["summary"]
            row: dict = {
                "overrides": VARIANTS[name],
                "precision": s["precision"],
                "pairs": int(cfg.pairs.num_train),
                "steps": s["global_step"],
                "pairs_per_s": s["pairs_per_second"],
                "train_wall_s": round(wall, 1),
                "train_cpu_min": round(wall * cores / 60, 2),
            }
            for split in sets:
                for metric in ("precision@10", "mrr@10"):
                    g = paired_bootstrap(
                        per_query[name][split][metric], per_query["zero-shot"][split][metric], resamples=args.bootstrap
                    )
                    row[f"{split} {metric}"] = round(g["a"], 4)
                    row[f"{split} {metric} gain"] = [round(g["diff"], 4), round(g["low"], 4), round(g["high"], 4)]
            row["fresh P@10 gain per CPU-minute"] = round(row["fresh precision@10 gain"][0] / row["train_cpu_min"], 5)
            rows[name] = row
            print(name, json.dumps(row), flush=True)
            shutil.rmtree(Path(str(result["model"])).parent, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    zs = {split: {m: round(float(v.mean()), 4) for m, v in per_query["zero-shot"][split].items()} for split in sets}
    print(
        f"\n{len(sets['test'][0])} test papers, {len(sets['fresh'][0])} fresh papers; scored at {args.max_seq_length} "
        f"tokens, fp32 ({score_s:.0f} s per model); training CPU bf16 support: {cpu_supports_bf16()}, {cores} threads"
    )
    print(
        f"{'variant':<18}{'prec':>5}{'pairs':>6}{'train s':>8}{'pairs/s':>8}{'test P@10':>10}{'gain [95% CI]':>26}"
        f"{'fresh P@10':>11}{'gain [95% CI]':>26}{'gain/CPU-min':>13}"
    )
    print(
        f"{'zero-shot':<18}{'-':>5}{'-':>6}{'-':>8}{'-':>8}{zs['test']['precision@10']:>10.4f}{'':>26}"
        f"{zs['fresh']['precision@10']:>11.4f}"
    )
    for name, r in rows.items():
        t, f = r["test precision@10 gain"], r["fresh precision@10 gain"]
        print(
            f"{name:<18}{r['precision']:>5}{r['pairs']:>6}{r['train_wall_s']:>8.0f}{r['pairs_per_s']:>8.1f}"
            f"{r['test precision@10']:>10.4f}{f'{t[0]:+.4f} [{t[1]:+.4f}, {t[2]:+.4f}]':>26}"
            f"{r['fresh precision@10']:>11.4f}{f'{f[0]:+.4f} [{f[1]:+.4f}, {f[2]:+.4f}]':>26}"
            f"{r['fresh P@10 gain per CPU-minute']:>13.5f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"cores": cores, "bf16": cpu_supports_bf16(), "cpu_count": os.cpu_count(), "bootstrap": args.bootstrap}
    args.out.write_text(json.dumps({"machine": meta, "zero_shot": zs, "variants": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""The GPU recipe, short: `experiment=full_gpu`'s training settings on the embedded sample, timed and scored.

    uv run python bench/bench_gpu.py                              # on a CUDA GPU: MNRL and cached MNRL, 200,000 pairs each
    uv run python bench/bench_gpu.py --pairs 400000 --losses cached_mnrl --batch-size 1024
    uv run python bench/bench_gpu.py --device cpu --pairs 64 --batch-size 16 --losses mnrl   # a smoke run, no GPU

Every run trains all-MiniLM-L6-v2 with the settings of configs/experiment/full_gpu.yaml (bf16 where the GPU has it,
256 training tokens, batches of 512, learning rate 1e-4 with 5% warm-up, the subject batch sampler; cached MNRL with
mini-batches of 128), on anchor/positive pairs drawn from the embedded sample's train split (the data and the
logger are the only settings changed: `data=sample logger=none`, no Hub, no W&B). With `--losses mnrl,cached_mnrl`
it runs plain MNRL at the same batch size next to it: cached MNRL trades a second forward pass for constant memory.

Prints per run: pairs/s (the trainer's own train_samples_per_second), training seconds, peak GPU memory
(torch.cuda.max_memory_allocated), and subject retrieval P@10 on the test split (815 papers) and on the fresh papers
(1,740) at 256 tokens, next to the zero-shot model, with 95% paired-bootstrap intervals. Target on an H200-class
GPU: >= 5,000 pairs/s. Writes bench/results/gpu.json. Its GPU time is not measured yet (no GPU has run it); the
defaults train 2 x 200,000 pairs, 80 s of training at the target rate, plus loading and scoring. Nothing else in the
project needs a GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

LOSSES = {
    "cached_mnrl": ["loss=cached_mnrl"],  # full_gpu's own loss
    "mnrl": ["loss=mnrl"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=200_000, help="train pairs of each run")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--mini-batch", type=int, default=128, help="cached MNRL's mini-batch")
    parser.add_argument("--losses", default="cached_mnrl,mnrl", help=f"comma-separated, of {', '.join(LOSSES)}")
    parser.add_argument("--device", default="auto", help="auto (cuda when there is one) | cuda | cpu")
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--workers", type=int, default=4, help="dataloader workers (full_gpu uses 4)")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--max-papers", type=int, default=0, help="score at most this many papers per set (0: all)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu.json")
    parser.add_argument(
        "overrides", nargs="*", help="more Hydra overrides of the train stage, e.g. train.freeze_layers=0"
    )
    args = parser.parse_args()
    losses = [n.strip() for n in args.losses.split(",") if n.strip()]
    unknown = [n for n in losses if n not in LOSSES]
    if unknown or not losses:
        raise SystemExit(f"--losses {args.losses!r}: choose from {', '.join(LOSSES)}.")
    if args.pairs < args.batch_size:
        raise SystemExit(f"--pairs {args.pairs} is less than one batch ({args.batch_size}); give more pairs.")

    import torch

    from arxiv_embeddings import pairs, preprocess
    from arxiv_embeddings.backends.loading import default_device
    from arxiv_embeddings.backends.torch_embedder import TorchEmbedder
    from arxiv_embeddings.config import compose
    from arxiv_embeddings.evaluation.data import load_fresh
    from arxiv_embeddings.io import read_parquet
    from arxiv_embeddings.layout import split_path
    from arxiv_embeddings.logging_utils import setup_logging
    from arxiv_embeddings.metrics import RankingCutoffs, label_retrieval, paired_bootstrap
    from arxiv_embeddings.papers import paper_text
    from arxiv_embeddings.train import stage as train_stage

    device = default_device() if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible (torch.cuda.is_available() is False).")
    cuda = device == "cuda"
    if not cuda:
        print(f"No GPU: running on {device}, so the figures say nothing about the GPU target.", flush=True)
    setup_logging("WARNING")
    root = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    cutoffs = RankingCutoffs(precision_recall_at=(10,), mrr_at=(10,), ndcg_at=(), map_at=(), accuracy_at=())
    rows: dict[str, dict] = {}
    try:
        preprocess.run(compose("preprocess", [f"paths.root_dir={root}"]))
        # the losses on the main task's pairs alone (mix=none): a mix's other tasks would change what is timed
        pairs.run(
            compose(
                "pairs", [f"paths.root_dir={root}", "mix=none", f"pairs.num_train={args.pairs}", "pairs.num_eval=0"]
            )
        )
        eval_cfg = compose("evaluate", [f"paths.root_dir={root}"])
        test = read_parquet(split_path(eval_cfg, "test")).to_pandas()
        fresh = load_fresh(eval_cfg)[0].to_pandas()
        if args.max_papers > 0:  # a seeded subset, for smoke runs
            test = test.sample(n=min(args.max_papers, len(test)), random_state=0)
            fresh = fresh.sample(n=min(args.max_papers, len(fresh)), random_state=0)
        sets = {
            "test": (list(paper_text(test, "title_abstract")), test.primary_subject.to_numpy()),
            "fresh": (list(paper_text(fresh, "title_abstract")), fresh.primary_subject.to_numpy()),
        }

        def score(model: str) -> dict:
            embedder = TorchEmbedder(model, device=device, max_seq_length=256)
            return {
                name: label_retrieval(embedder.encode(texts, batch_size=256), labels, cutoffs=cutoffs).per_query
                for name, (texts, labels) in sets.items()
            }

        zero_shot = score(args.model)
        for name in losses:
            cfg = compose(
                "train",
                [
                    "experiment=full_gpu",
                    "data=sample",
                    "logger=none",
                    f"paths.root_dir={root}",
                    f"run_name=gpu-{name}",
                    f"model.name={args.model}",
                    f"train.device={device}",
                    f"trainer.per_device_train_batch_size={args.batch_size}",
                    f"trainer.dataloader_num_workers={args.workers}",
                    "trainer.eval_strategy=no",
                    "trainer.save_strategy=no",
                    "trainer.logging_steps=50",
                    "train.eval_papers=0",
                    "train.test_papers=0",
                    "train.resume=never",
                    *LOSSES[name],
                    *([f"loss.mini_batch_size={args.mini_batch}"] if name == "cached_mnrl" else []),
                    *args.overrides,
                ],
            )
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            result = train_stage.run(cfg)
            wall = time.perf_counter() - t0
            summary = result["summary"]
            row: dict = {
                "loss": str(cfg.loss.name),
                "pairs": args.pairs,
                "batch_size": args.batch_size,
                "mini_batch": args.mini_batch if name == "cached_mnrl" else None,
                "precision": summary["precision"],
                "max_seq_length": summary["train_max_seq_length"],
                "steps": summary["global_step"],
                "pairs_per_s": summary["pairs_per_second"],
                "train_s": round(float(result["train"].get("train_runtime", wall)), 1),
                "stage_wall_s": round(wall, 1),
                "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            }
            per_query = score(str(result["model"]))
            for split in sets:
                g = paired_bootstrap(
                    per_query[split]["precision@10"], zero_shot[split]["precision@10"], resamples=args.bootstrap
                )
                row[f"{split} P@10"] = round(g["a"], 4)
                row[f"{split} P@10 zero-shot"] = round(g["b"], 4)
                row[f"{split} P@10 gain"] = [round(g["diff"], 4), round(g["low"], 4), round(g["high"], 4)]
            rows[name] = row
            print(name, json.dumps(row), flush=True)
            shutil.rmtree(Path(str(result["model"])).parent, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    gpu = torch.cuda.get_device_name(0) if cuda else None
    print(f"\n{gpu or device}; {len(sets['test'][0])} test papers, {len(sets['fresh'][0])} fresh papers, 256 tokens")
    print(
        "| loss | batch | precision | pairs/s | train s | peak GPU GiB | test P@10, gain [95% CI] | fresh P@10, gain |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows.values():
        t, f = r["test P@10 gain"], r["fresh P@10 gain"]
        mem = "-" if r["peak_gpu_mem_gib"] is None else f"{r['peak_gpu_mem_gib']:.2f}"
        print(
            f"| {r['loss']} | {r['batch_size']} | {r['precision']} | {r['pairs_per_s']:,.0f} | {r['train_s']:.0f} | "
            f"{mem} | {r['test P@10']:.4f} {t[0]:+.4f} [{t[1]:+.4f}, {t[2]:+.4f}] | "
            f"{r['fresh P@10']:.4f} {f[0]:+.4f} [{f[1]:+.4f}, {f[2]:+.4f}] |"
        )
    target = [r["pairs_per_s"] >= 5000 for r in rows.values()]
    if cuda:
        print(f"target >= 5,000 pairs/s: {'PASS' if any(target) else 'FAIL'} (best run)")
    meta = {
        "overrides": args.overrides,
        "device": device,
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machine": meta, "runs": rows}, indent=2) + "\n")
    tmp.replace(args.out)


if __name__ == "__main__":
    main()

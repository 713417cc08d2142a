"""The subject head alone: linear maps fit over a frozen encoder's embeddings, scored like the models.

    uv run python bench/bench_head.py --bf16                                   # over all-MiniLM-L6-v2
    uv run python bench/bench_head.py --bf16 --model models/minilm-sample/final  # over a trained model's encoder

The embedded sample's train split (6,384 papers), eval split, test split (815) and both fresh slices (1,740 balanced,
15 per subject; 1,940 in natural proportions) are embedded once by the encoder (title + abstract, 256 tokens; a
model that already has a head is read up to its first Normalize, the encoder its head sits on). Each head is then fit
on the train embeddings alone, as `train.head` fits it (arxiv_embeddings/train/head.py):

- `lda`: linear discriminant analysis in closed form (`train.head.kind=lda`), for each number of components and
  shrinkage asked;
- `supcon`: a map started at the identity and trained with the supervised contrastive loss (`train.head.kind=supcon`:
  batches of 256, learning rate 1e-3, temperature 0.05), for each number of epochs asked.

Each is scored by subject P@10 (each paper a query against the others of its set, relevant = same primary subject)
on the eval split (the split to choose a setting on), the test split and both fresh slices, as the gain over the
encoder's own embeddings with a 95% paired-bootstrap interval, and by the graded score on the eval split and the
balanced fresh slice (Spearman correlation of the cosine with the Jaccard overlap of the subject lists, the
evaluation's own seeded pairs), and by the evaluation's probe: a logistic regression (evaluate.classification's C and
max_iter) fit on a seeded evaluate.classification.max_train_papers of the train papers' outputs, its macro-F1 on the
eval and test splits (the head is fit on those train papers, as in training). Prints the seconds spent embedding (the
head's cost in training) and fitting each head.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

SETS = ("eval", "test", "fresh", "fresh_natural")
GRADED_SETS = ("eval", "fresh")
PROBE_SETS = ("eval", "test")


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bf16", action="store_true", help="embed in bf16 instead of fp32")
    parser.add_argument("--components", default="32,64,96", help="LDA components, comma-separated")
    parser.add_argument("--shrinkage", default="0.02,0.05", help="LDA shrinkage values, comma-separated")
    parser.add_argument("--epochs", default="10,20", help="epochs of each SupCon head, comma-separated")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2", help="the frozen encoder")
    parser.add_argument("--train-papers", type=int, default=8000, help="fit on this many train papers (as train.head)")
    parser.add_argument(
        "--fit-papers",
        default="",
        help="also fit the first LDA setting on seeded subsets of the train papers of these sizes, comma-separated "
        "(how the head's gain grows with its papers)",
    )
    parser.add_argument(
        "--blend",
        default="",
        help="also fit the first LDA setting with its unused rows holding the papers' principal directions at these "
        "weights, comma-separated (0 = the plain head)",
    )
    parser.add_argument(
        "--embeddings",
        type=Path,
        default=None,
        help="an .npz file: the papers' embeddings are read from it when it exists, else written to it",
    )
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides of the data, e.g. experiment=cpu_budget data.path=corpus.parquet"
    )
    args = parser.parse_args()

    import numpy as np
    import torch

    from arxiv_embeddings import preprocess
    from arxiv_embeddings.backends.loading import load_model
    from arxiv_embeddings.backends.torch_embedder import encoder_view
    from arxiv_embeddings.config import compose
    from arxiv_embeddings.evaluation.data import graded_pairs, load_fresh
    from arxiv_embeddings.io import read_parquet
    from arxiv_embeddings.layout import split_path
    from arxiv_embeddings.logging_utils import setup_logging
    from arxiv_embeddings.metrics import RankingCutoffs, label_retrieval, paired_bootstrap, spearman
    from arxiv_embeddings.papers import paper_text
    from arxiv_embeddings.train.head import fit_lda_head, fit_linear_head, sample_papers

    setup_logging("WARNING")
    root = Path(tempfile.mkdtemp(prefix="bench-head-"))
    try:
        cfg = compose("evaluate", [f"paths.root_dir={root}", *args.overrides])
        preprocess.run(compose("preprocess", [f"paths.root_dir={root}", *args.overrides]))
        tables = {split: read_parquet(split_path(cfg, split)) for split in ("train", "eval", "test")}
        tables["train"] = sample_papers(tables["train"], args.train_papers, int(cfg.seed))
        tables["fresh"] = load_fresh(cfg)[0]
        tables["fresh_natural"] = load_fresh(cfg, "fresh_natural")[0]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    model = load_model(args.model, device="cpu", max_seq_length=256)
    if any(type(m).__name__ == "Dense" for m in model._modules.values()):
        model, _ = encoder_view(model, model.get_embedding_dimension())
    model.max_seq_length = 256
    if args.bf16:
        model.to(torch.bfloat16)
    t0 = time.perf_counter()
    if args.embeddings is not None and args.embeddings.exists():
        with np.load(args.embeddings) as cached:
            emb = {k: cached[k] for k in tables}
        if any(len(emb[k]) != tables[k].num_rows for k in tables):
            raise SystemExit(f"{args.embeddings} holds embeddings of other papers; remove it to embed them again.")
    else:
        emb = {
            k: model.encode(paper_text(t, "title_abstract"), batch_size=64, normalize_embeddings=True).astype(
                np.float32
            )
            for k, t in tables.items()
        }
        if args.embeddings is not None:
            np.savez(args.embeddings, **emb)
    embed_s = time.perf_counter() - t0
    labels = {k: t.column("primary_subject").to_numpy(zero_copy_only=False).astype(str) for k, t in tables.items()}
    cutoffs = RankingCutoffs(precision_recall_at=(10,), mrr_at=(10,), ndcg_at=(), map_at=(), accuracy_at=())
    pairs = {
        s: graded_pairs(tables[s], 2000, 0.5, int(cfg.seed), "fresh" if s == "fresh" else "test") for s in GRADED_SETS
    }

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def p10(x: np.ndarray, split: str) -> np.ndarray:
        return label_retrieval(unit(x), labels[split], cutoffs=cutoffs).per_query["precision@10"]

    def graded(x: np.ndarray, split: str) -> float:
        a, b, target = pairs[split]
        x = unit(x)
        return float(spearman((x[a] * x[b]).sum(1), target) or 0.0)

    probe_cfg = cfg.evaluate.classification
    cap = probe_cfg.max_train_papers
    probe_rows = np.random.default_rng(int(cfg.seed)).permutation(len(emb["train"]))[: cap or None]

    def probe(out: dict[str, np.ndarray]) -> list[str]:
        """The evaluation's probe on these outputs: macro-F1 on the eval and test splits."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import f1_score

        clf = LogisticRegression(C=float(probe_cfg.C), max_iter=int(probe_cfg.max_iter), random_state=int(cfg.seed))
        clf.fit(unit(out["train"][probe_rows]), labels["train"][probe_rows])
        return [
            f"{f1_score(labels[s], clf.predict(unit(out[s])), average='macro', zero_division=0):.4f}"
            for s in PROBE_SETS
        ]

    base = {s: p10(emb[s], s) for s in SETS}
    rows = [
        [
            "encoder (no head)",
            "",
            *(f"{base[s].mean():.4f}" for s in SETS),
            *(f"{graded(emb[s], s):.4f}" for s in GRADED_SETS),
            *probe(emb),
        ]
    ]

    def record(name: str, seconds: float, weight: np.ndarray, bias: np.ndarray) -> None:
        row = [name, f"{seconds:.1f}"]
        out = {s: emb[s] @ weight.T + bias for s in ("train", *SETS)}
        for split in SETS:
            g = paired_bootstrap(p10(out[split], split), base[split], resamples=args.bootstrap)
            row.append(f"{g['a']:.4f} {g['diff']:+.4f} [{g['low']:+.4f}, {g['high']:+.4f}]")
        row += [f"{graded(out[s], s):.4f}" for s in GRADED_SETS]
        row += probe(out)
        rows.append(row)
        print(" | ".join(row), flush=True)

    for shrinkage in _floats(args.shrinkage):
        for components in _ints(args.components):
            fit = fit_lda_head(emb["train"], labels["train"], components=components, shrinkage=shrinkage)
            record(f"lda, {fit.components} components, shrinkage {shrinkage}", fit.seconds, fit.weight, fit.bias)
    first = (_ints(args.components)[0], _floats(args.shrinkage)[0])
    order = np.random.default_rng(int(cfg.seed)).permutation(len(emb["train"]))
    for n in _ints(args.fit_papers):
        if n >= len(order):
            continue
        pick = order[:n]
        fit = fit_lda_head(emb["train"][pick], labels["train"][pick], components=first[0], shrinkage=first[1])
        record(
            f"lda, {fit.components} components, shrinkage {first[1]}, {n:,} papers", fit.seconds, fit.weight, fit.bias
        )
    for weight_share in _floats(args.blend):
        fit = fit_lda_head(emb["train"], labels["train"], components=first[0], shrinkage=first[1], blend=weight_share)
        record(
            f"lda, {fit.components} components, shrinkage {first[1]}, blend {weight_share}",
            fit.seconds,
            fit.weight,
            fit.bias,
        )
    for epochs in _ints(args.epochs):
        fit = fit_linear_head(
            emb["train"], labels["train"], epochs=epochs, learning_rate=1e-3, batch_size=256, temperature=0.05, seed=0
        )
        record(f"supcon, {epochs} epochs", fit.seconds, fit.weight, fit.bias)

    sizes = ", ".join(f"{k} {len(v):,}" for k, v in emb.items())
    print(
        f"\n{args.model}: embedding the papers ({sizes}; {'bf16' if args.bf16 else 'fp32'}, 256 tokens, "
        f"{torch.get_num_threads()} threads) took {embed_s:.0f} s."
    )
    print(
        "| head | fit s | eval P@10 | test P@10 | fresh P@10 | fresh natural P@10 | eval graded | fresh graded "
        "| eval macro-F1 | test macro-F1 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()

"""A cheap adapter: a linear head trained over frozen all-MiniLM-L6-v2 embeddings, against the zero-shot model.

    uv run python bench/bench_head.py                  # fp32 embeddings
    uv run python bench/bench_head.py --bf16           # bf16 embeddings (faster where the CPU has AMX / AVX512-BF16)

The embedded sample's train split (6,384 papers), its test split (815) and the fresh papers of the generalization
check (1,740) are embedded once by the base model (title + abstract, 256 tokens). A 384 x 384 linear map
(initialized to the identity) is then trained on the train embeddings alone with the supervised contrastive loss
(arxiv_embeddings.train.losses.SupervisedContrastiveLoss: every same-subject paper of a batch a positive), and the head's
outputs are scored like the base embeddings: subject retrieval among the test papers and among the fresh papers
(P@10, gain over zero-shot with a 95% paired-bootstrap interval). It also tries the closed-form alternative, a
within-subject whitening (the inverse square root of the regularized within-subject covariance).

Prints the seconds spent embedding (the cost of the approach) and training each head, and the figures of each.
The training stage fits the same head into the saved model with train.head (arxiv_embeddings/train/head.py); this
script measures it alone, over any frozen encoder (--model), on any corpus (Hydra overrides).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bf16", action="store_true", help="embed in bf16 instead of fp32")
    parser.add_argument("--epochs", default="10,20,50", help="epochs of each SupCon head, comma-separated")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2", help="the frozen encoder")
    parser.add_argument("--train-papers", type=int, default=0, help="embed only this many train papers (0: all)")
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides of the data, e.g. experiment=cpu_budget data.path=corpus.parquet"
    )
    args = parser.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F

    from arxiv_embeddings import preprocess
    from arxiv_embeddings.backends.loading import load_model
    from arxiv_embeddings.config import compose
    from arxiv_embeddings.evaluation.data import load_fresh
    from arxiv_embeddings.io import read_parquet
    from arxiv_embeddings.layout import split_path
    from arxiv_embeddings.logging_utils import setup_logging
    from arxiv_embeddings.metrics import RankingCutoffs, label_retrieval, paired_bootstrap
    from arxiv_embeddings.papers import paper_text
    from arxiv_embeddings.train.losses import SupervisedContrastiveLoss

    setup_logging("WARNING")
    root = Path(tempfile.mkdtemp(prefix="bench-head-"))
    try:
        cfg = compose("evaluate", [f"paths.root_dir={root}", *args.overrides])
        preprocess.run(compose("preprocess", [f"paths.root_dir={root}", *args.overrides]))
        tables = {
            "train": read_parquet(split_path(cfg, "train")).to_pandas(),
            "test": read_parquet(split_path(cfg, "test")).to_pandas(),
            "fresh": load_fresh(cfg)[0].to_pandas(),
        }
        if 0 < args.train_papers < len(tables["train"]):
            tables["train"] = tables["train"].sample(n=args.train_papers, random_state=0)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    model = load_model(args.model, device="cpu", max_seq_length=256)
    if args.bf16:
        model.to(torch.bfloat16)
    t0 = time.perf_counter()
    emb = {
        k: model.encode(list(paper_text(t, "title_abstract")), batch_size=64, normalize_embeddings=True)
        for k, t in tables.items()
    }
    embed_s = time.perf_counter() - t0
    labels = {k: t.primary_subject.to_numpy().astype(str) for k, t in tables.items()}
    cutoffs = RankingCutoffs(precision_recall_at=(10,), mrr_at=(10,), ndcg_at=(), map_at=(), accuracy_at=())

    def p10(x: np.ndarray, split: str) -> np.ndarray:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        return label_retrieval(x, labels[split], cutoffs=cutoffs).per_query["precision@10"]

    base = {s: p10(emb[s], s) for s in ("test", "fresh")}
    rows = []

    def record(name: str, seconds: float, transform) -> None:  # type: ignore[no-untyped-def]
        row = [name, f"{seconds:.1f}"]
        for split in ("test", "fresh"):
            g = paired_bootstrap(p10(transform(emb[split]), split), base[split], resamples=args.bootstrap)
            row.append(f"{g['a']:.4f} {g['diff']:+.4f} [{g['low']:+.4f}, {g['high']:+.4f}]")
        rows.append(row)
        print(" | ".join(row), flush=True)

    names, codes = np.unique(labels["train"], return_inverse=True)
    for lam in (0.01, 0.003):
        t0 = time.perf_counter()
        means = np.stack([emb["train"][codes == c].mean(0) for c in range(len(names))])
        within = np.cov((emb["train"] - means[codes]).T) + lam * np.eye(emb["train"].shape[1])
        w, v = np.linalg.eigh(within)
        whiten = v @ np.diag(w**-0.5) @ v.T
        record(f"within-subject whitening, lambda {lam}", time.perf_counter() - t0, lambda x, m=whiten: x @ m)

    x_train, y_train = torch.tensor(emb["train"], dtype=torch.float32), torch.tensor(codes)
    loss_fn = SupervisedContrastiveLoss(model=None, temperature=0.05)
    for epochs in (int(e) for e in args.epochs.split(",")):
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        head = torch.nn.Linear(x_train.shape[1], x_train.shape[1])
        torch.nn.init.eye_(head.weight)
        torch.nn.init.zeros_(head.bias)
        opt = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=0.0)
        t0 = time.perf_counter()
        for _ in range(epochs):
            perm = rng.permutation(len(x_train))
            for i in range(0, len(perm), args.batch_size):
                batch = perm[i : i + args.batch_size]
                loss = loss_fn.from_embeddings(F.normalize(head(x_train[batch]), dim=-1), y_train[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            record(f"SupCon linear head, {epochs} epochs", seconds, lambda x, h=head: h(torch.tensor(x)).numpy())

    print(
        f"\nEmbedding {sum(len(t) for t in tables.values()):,} papers ({'bf16' if args.bf16 else 'fp32'}, 256 tokens, "
        f"{torch.get_num_threads()} threads) took {embed_s:.0f} s; zero-shot P@10 test {base['test'].mean():.4f}, "
        f"fresh {base['fresh'].mean():.4f}."
    )
    print("| head | train s | test P@10, gain [95% CI] | fresh P@10, gain [95% CI] |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()

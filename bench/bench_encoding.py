"""Encoding speed on this CPU, in one run: every backend variant at 128 and 256 tokens and on real papers at their
real lengths, what length-aware batches buy, and the index stage's papers/s with one and two worker processes.

    uv run python bench/bench_encoding.py --model models/minilm-sample/final     # a folder 'inv export' exported
    uv run python bench/bench_encoding.py --model ... --skip-index --papers 512   # the variants only, quicker
    uv run python bench/bench_encoding.py --model ... --index-only --index-papers 3072   # the index figures only
    uv run python bench/bench_encoding.py --model ... --variants openvino-fp32,openvino-int8   # these beside torch fp32

Texts: the embedded sample's papers (title + abstract). Every figure is texts/s, the best of ``--repeats`` timed
passes after a warm-up, all at ``--threads`` intra-op threads:

1. **variants**: torch fp32 and bf16, and each ONNX variant of the folder's ``onnx/`` (``inv export`` writes them and
   checks their parity; the ``openvino-*`` ones where OpenVINO is installed), at 128 tokens and 256 tokens (each
   text a paper followed by the next papers' abstracts, so that it fills the length: the export's own throughput
   texts) and on the papers as they are ("real": each paper truncated at 256 tokens, most shorter), with each one's
   ratio to torch fp32 at the same length;
2. **batching** (the fastest ONNX variant, or torch fp32 without one, on the real papers, batches of 32): the texts
   in their own order cut into batches of 32 (each padded to its longest text), the same texts grouped by token
   length (what every embedder does within a call), and grouped with a cap of ``--max-batch-tokens`` padded tokens
   per call, with the share of padding each leaves;
3. **index** (``--index-papers`` sample papers, the stage's own run with ``index.type=flat``, torch fp32 unless
   ``--index-backend onnx``): one process with one thread, one process with two threads, and two worker processes
   with one thread each (``index.workers=2``), in papers/s of the embedding step (from the manifest's ``embed_s``;
   the workers' start and model load included).

Writes the figures to bench/results/encoding.json.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


#: Environment variables that cap the instruction sets oneDNN / OpenVINO, MKL and torch's ATen kernels use.
ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")


def _fill(papers: list[str], abstracts: list[str]) -> list[str]:
    """Each paper followed by the next two papers' abstracts: texts that fill 256 tokens."""
    n = len(papers)
    return [f"{papers[i]} {abstracts[(i + 1) % n]} {abstracts[(i + 2) % n]}" for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model folder with an ONNX export (uv run inv export)")
    parser.add_argument("--papers", type=int, default=1024, help="sample papers timed per pass")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: usable cores)")
    parser.add_argument("--max-batch-tokens", type=int, default=2048, help="the token cap of the batching figure")
    parser.add_argument("--skip-index", action="store_true", help="leave out the index figures")
    parser.add_argument(
        "--variants",
        default=None,
        help="comma-separated names to time beside torch-fp32, as the export report names them (e.g. "
        "openvino-fp32,openvino-int8); default: torch-bf16 where the CPU has native bf16 and every exported variant",
    )
    parser.add_argument("--index-only", action="store_true", help="the index figures alone (no variants, no batching)")
    parser.add_argument("--index-papers", type=int, default=2048, help="papers the index runs embed")
    parser.add_argument("--index-backend", default="torch", choices=("torch", "onnx"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "encoding.json")
    args = parser.parse_args()

    import numpy as np
    import torch

    from arxiv_embeddings.backends.batches import token_batches
    from arxiv_embeddings.backends.loading import cpu_supports_bf16
    from arxiv_embeddings.backends.onnx_embedder import (
        OnnxEmbedder,
        exported_variants,
        report_name,
        usable_cpus,
        variant_file,
    )
    from arxiv_embeddings.backends.torch_embedder import TorchEmbedder
    from arxiv_embeddings.export.measure import machine, texts_per_second
    from arxiv_embeddings.io import read_parquet
    from arxiv_embeddings.layout import ONNX_DIR
    from arxiv_embeddings.logging_utils import setup_logging
    from arxiv_embeddings.papers import SAMPLE_PATH, paper_text

    setup_logging("WARNING")
    model = Path(args.model).resolve()
    variants = exported_variants(model)
    if not variants:
        raise SystemExit(f'{model} has no ONNX export; run: uv run inv export --overrides "export.model={model}"')
    threads = int(args.threads or usable_cpus())
    torch.set_num_threads(threads)
    sample = read_parquet(SAMPLE_PATH)
    table = sample.slice(0, args.papers)
    papers = list(paper_text(table, "title_abstract"))
    abstracts = [str(a) for a in table.column("abstract").to_pylist()]
    bs, repeats = int(args.batch_size), int(args.repeats)
    results: dict[str, Any] = {
        "machine": machine(threads, None),
        "model": str(model),
        "papers": len(papers),
        # instruction-set caps in force (an emulated older CPU: the machine's flags above are the real ones)
        "isa_caps": {k: os.environ[k] for k in ISA_CAPS if k in os.environ},
        "batch_size": bs,
        "repeats": repeats,
    }

    if args.index_only:
        results["index"] = _index(args, model, sample)
        _write(args.out.with_name("encoding_index.json"), results)
        _print(results)
        return

    # 1. variants at 128, 256 and real lengths
    available = [*(["torch-bf16"] if cpu_supports_bf16() else []), *map(report_name, variants)]
    wanted = available if args.variants is None else [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(wanted) - set(available) - {"torch-fp32"})
    if unknown:
        raise SystemExit(f"--variants: {', '.join(unknown)} not available here; choose from {', '.join(available)}.")
    embedders: dict[str, Any] = {"torch-fp32": TorchEmbedder(model, device="cpu", precision="fp32")}
    # emulated bf16 (no AMX / AVX512-BF16) is several times slower than fp32: torch-bf16 is left out there
    if "torch-bf16" in wanted:
        embedders["torch-bf16"] = TorchEmbedder(model, device="cpu", precision="bf16")
    for v in variants:  # named as in the export report
        if report_name(v) in wanted:
            embedders[report_name(v)] = OnnxEmbedder(model, model / ONNX_DIR / variant_file(v), v, threads=threads)
    filled = _fill(papers, abstracts)
    lengths = {"128": (filled, 128), "256": (filled, 256), "real": (papers, 256)}
    speed: dict[str, dict[str, float]] = {name: {} for name in embedders}
    for label, (texts, n) in lengths.items():  # every variant at one length, then the next: load shifts show alike
        for name, emb in embedders.items():
            if isinstance(emb, OnnxEmbedder):
                emb.max_seq_length = n
            else:
                emb.model.max_seq_length = n
            speed[name][label] = round(
                texts_per_second(lambda t, e=emb: e.encode(t, batch_size=bs), texts, bs, repeats), 2
            )
            print(f"{name:<24} {label:>5}: {speed[name][label]:8.1f} texts/s", flush=True)
    counter = next(e for e in embedders.values() if isinstance(e, OnnxEmbedder))
    counter.max_seq_length = 256
    real_tokens = counter.token_counts(papers)
    results["variants"] = {
        name: {
            "texts_per_s": s,
            "x_torch_fp32": {k: round(v / speed["torch-fp32"][k], 2) for k, v in s.items()},
        }
        for name, s in speed.items()
    }
    results["real_tokens"] = {
        "mean": round(float(real_tokens.mean()), 1),
        "median": float(np.median(real_tokens)),
        "p90": float(np.percentile(real_tokens, 90)),
    }

    # 2. batching on the real papers with the fastest ONNX variant (onnxruntime or OpenVINO)
    onnx_names = [n for n, e in embedders.items() if isinstance(e, OnnxEmbedder)]
    best = max(onnx_names, key=lambda n: speed[n]["real"])
    emb = embedders[best]
    emb.max_seq_length = 256
    encodings = emb.tokenizer.encode_batch(emb._prepare(papers))

    def run(batches: list[np.ndarray]) -> None:
        for rows in batches:
            emb._run([encodings[i] for i in rows])

    counts = np.array([len(e.ids) for e in encodings])
    plans = {
        "text order, 32 a batch": [np.arange(i, min(i + bs, len(papers))) for i in range(0, len(papers), bs)],
        "grouped by length, 32 a batch": token_batches(counts, bs),
        f"grouped, 128 a batch, <= {args.max_batch_tokens} tokens": token_batches(counts, 128, args.max_batch_tokens),
    }
    batching = {}
    for label, plan in plans.items():
        padded = sum(int(counts[rows].max()) * len(rows) for rows in plan)
        run(plan[:2])  # warm-up
        best_s = min(_timed(lambda p=plan: run(p)) for _ in range(repeats))
        batching[label] = {
            "texts_per_s": round(len(papers) / best_s, 2),
            "padding_share": round(1 - int(counts.sum()) / padded, 3),
            "calls": len(plan),
        }
        print(f"{best} {label:<40}: {batching[label]}", flush=True)
    results["batching"] = {"variant": best, **batching}

    # 3. the index stage with 1 and 2 workers
    if not args.skip_index:
        results["index"] = _index(args, model, sample)
    _write(args.out, results)
    _print(results)


def _write(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(path)


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _index(args: argparse.Namespace, model: Path, sample: Any) -> dict[str, Any]:
    """papers/s of the index stage's embedding with 1 process x 1 thread, 1 x 2 threads and 2 workers x 1 thread."""
    from arxiv_embeddings.config import compose
    from arxiv_embeddings.index import stage as index_stage
    from arxiv_embeddings.io import write_parquet

    root = Path(tempfile.mkdtemp(prefix="bench-encoding-"))
    corpus = root / "corpus.parquet"
    write_parquet(sample.slice(0, args.index_papers), corpus)
    shard = max(64, args.index_papers // 8)  # 8 shards: the two workers take 4 each
    runs = {"1 process x 1 thread": (1, 1), "1 process x 2 threads": (1, 2), "2 workers x 1 thread": (2, 2)}
    out = {}
    try:
        for i, (label, (workers, threads)) in enumerate(runs.items()):
            cfg = compose(
                "index",
                [
                    f"paths.root_dir={root / str(i)}",
                    f"index.model={model}",
                    f"index.backend={args.index_backend}",
                    "index.encode.device=cpu",
                    f"index.corpus.path={corpus}",
                    f"index.shard_size={shard}",
                    "index.type=flat",
                    "index.eval.queries=100",
                    f"index.threads={threads}",
                    f"index.workers={workers}",
                ],
            )
            import torch

            torch.set_num_threads(threads)
            manifest = index_stage.run(cfg)["manifest"]
            build = manifest["build"]
            out[label] = {
                # the embedding step's time: with workers, their start and model load included
                "papers_per_s": round(manifest["count"] / build["embed_s"], 2),
                "embed_s": build["embed_s"],
                "workers": build["embed_workers"],
            }
            print(f"index {label:<28}: {out[label]}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    one = next(iter(out.values()))["papers_per_s"]
    for row in out.values():
        row["x_one_thread"] = round(row["papers_per_s"] / one, 2)
    return {"papers": args.index_papers, "backend": args.index_backend, "shard_size": shard, "runs": out}


def _print(results: dict[str, Any]) -> None:
    m = results["machine"]
    if "variants" not in results:  # --index-only
        ix = results["index"]
        print(f"\n{m['cpu']}: index stage, {ix['papers']} papers ({ix['backend']}, shards of {ix['shard_size']})")
        for label, row in ix["runs"].items():
            print(f"  {label:<28} {row['papers_per_s']:>8.1f} papers/s  x{row['x_one_thread']:.2f}")
        return
    print(
        f"\n{m['cpu']} ({', '.join(m['simd'])}), {m['threads']} threads; {results['papers']} sample papers, real "
        f"lengths mean {results['real_tokens']['mean']} tokens (median {results['real_tokens']['median']:.0f})"
    )
    print(f"{'variant':<24}" + "".join(f"{f'@{k}':>10}{'x fp32':>8}" for k in ("128", "256", "real")))
    for name, row in results["variants"].items():
        print(
            f"{name:<24}"
            + "".join(f"{row['texts_per_s'][k]:>10.1f}{row['x_torch_fp32'][k]:>8.2f}" for k in ("128", "256", "real"))
        )
    b = results["batching"]
    print(f"\nbatching ({b['variant']}, real papers)")
    for label, row in b.items():
        if label != "variant":
            print(
                f"  {label:<44} {row['texts_per_s']:>8.1f} texts/s  padding {100 * row['padding_share']:5.1f}%  {row['calls']} calls"
            )
    if "index" in results:
        ix = results["index"]
        print(f"\nindex stage, {ix['papers']} papers ({ix['backend']}, shards of {ix['shard_size']})")
        for label, row in ix["runs"].items():
            print(f"  {label:<28} {row['papers_per_s']:>8.1f} papers/s  x{row['x_one_thread']:.2f}")


if __name__ == "__main__":
    main()

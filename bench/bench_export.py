"""ONNX export: every variant side by side with torch fp32 and bf16 (parity and texts/s), from one export run.

    uv run python bench/bench_export.py                                   # base all-MiniLM-L6-v2, O1/O2/O3 + int8
    uv run python bench/bench_export.py --model models/minilm-sample/final --levels O3

Runs the export stage (src/arxiv_embeddings/export.py) on the model and prints the table of its
export_report.json: per variant the file size, the parity figures against torch fp32 on held-out test papers
(mean / min cosine, subject-retrieval P@10 and its difference in points) and texts/s at each length with the ratio
to torch fp32, and which variant became the serving default. A Hub name is exported into a temporary project root
(the installed package is read-only); a model folder is exported in place, as `uv run inv export` would.
The processed splits come from data/processed (run `uv run inv preprocess` first).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--levels", default="O1,O2,O3", help="optimization levels, comma-separated ('' = none)")
    parser.add_argument("--papers", type=int, default=200, help="test papers in the parity check")
    parser.add_argument("--texts", type=int, default=64, help="texts per timed pass")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-lengths", default="128,256")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--processed", type=Path, default=REPO / "data" / "processed")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "export.json")
    args = parser.parse_args()

    from arxiv_embeddings.config import compose
    from arxiv_embeddings.export import stage as export_stage
    from arxiv_embeddings.export.measure import format_table
    from arxiv_embeddings.logging_utils import setup_logging

    setup_logging()
    levels = [v for v in args.levels.split(",") if v]
    root = Path(tempfile.mkdtemp(prefix="bench-export-"))
    overrides = [
        f"paths.root_dir={root}",
        f"paths.processed_dir={args.processed}",
        f"export.model={Path(args.model).resolve() if Path(args.model).exists() else args.model}",
        f"export.optimization_levels=[{','.join(levels)}]",
        f"export.parity.max_papers={args.papers}",
        f"export.throughput.texts={args.texts}",
        f"export.throughput.batch_size={args.batch_size}",
        f"export.throughput.seq_lengths=[{args.seq_lengths}]",
        f"export.throughput.repeats={args.repeats}",
    ]
    load_before = os.getloadavg()
    try:
        result = export_stage.run(compose("export", overrides))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = result["report"]
    m, t, p = report["machine"], report["throughput"], report["parity"]
    print()
    print(f"model: {args.model}")
    print(
        f"machine: {m['cpu']} ({m['arch']}), {m['usable_cpus']} usable cores, {t['threads']} threads, SIMD "
        f"{'/'.join(m['simd']) or '-'}, native bf16: {m['native_bf16']}, int8 preset: {m['quantization_arch']}"
    )
    print(f"load average before / after: {load_before[0]:.2f} / {m['load_average'][0]:.2f} (1 min)")
    print(
        f"parity: {p['data']['papers']} test papers at {p['max_seq_length']} tokens, torch fp32 P@10 "
        f"{p['reference_p10']:.4f}; throughput: {t['texts']} texts (mean tokens {t['mean_tokens']}), batch "
        f"{t['batch_size']}, best of {t['repeats']}"
    )
    print()
    print(format_table(report))
    print(f"serving default: {report['serving_default']['name']} ({report['serving_default']['reason']})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report: {args.out}")


if __name__ == "__main__":
    main()

"""Measuring each variant against torch fp32, side by side in one run: parity (cosine to the reference
embeddings of held-out test abstracts, subject-retrieval P@10) and throughput (texts/s at each length), the serving
default chosen from them, and the table printed and written to the report."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from arxiv_embeddings.backends.loading import (
    cpu_supports_bf16,
)
from arxiv_embeddings.backends.onnx_embedder import (
    usable_cpus,
)
from arxiv_embeddings.config import (
    ConfigError,
)
from arxiv_embeddings.evaluation.data import read_sample
from arxiv_embeddings.export.plan import REFERENCE, cpu_flags
from arxiv_embeddings.io import file_sha256
from arxiv_embeddings.layout import split_path
from arxiv_embeddings.papers import paper_text


# ---------------------------------------------------------------------------------------------------- data
def load_texts(cfg: DictConfig) -> tuple[list[str], np.ndarray, list[str], dict[str, Any]]:
    """Held-out texts: the parity papers (seeded cap of the test split) with their subjects, and throughput texts.

    Each throughput text is a paper followed by the abstracts of the next two, so that every text fills the longest
    ``export.throughput.seq_lengths`` and the figures are per length, not per paper.
    """
    path = split_path(cfg, "test")
    p = cfg.export.parity
    table, n_split = read_sample(path, p.max_papers, int(cfg.seed), "test")
    if table.num_rows < 2:
        raise ConfigError(f"The test split at {path} has {table.num_rows} paper(s); the parity check needs at least 2.")
    texts = paper_text(table, str(p.text))
    labels = np.asarray(table.column("primary_subject").to_pylist(), dtype=object).astype(str)
    abstracts = paper_text(table, "abstract")
    n, want = len(texts), int(cfg.export.throughput.texts)
    bench = [f"{texts[i % n]}\n{abstracts[(i + 1) % n]}\n{abstracts[(i + 2) % n]}" for i in range(want)]
    info = {"path": str(path), "sha256": file_sha256(path), "split_papers": n_split, "papers": n}
    return texts, labels, bench, info


def load_calibration(cfg: DictConfig) -> list[str]:
    """The texts a static int8 quantization calibrates on: a seeded choice of ``export.calibration.papers`` papers
    of the train split (never the test papers the parity gate scores), as ``export.parity.text`` writes them."""
    try:
        path = split_path(cfg, "train")
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{err} openvino-int8 calibrates on the train split; or leave int8 out of export.openvino "
            "(e.g. export.openvino=[fp32,bf16])."
        ) from err
    table, _ = read_sample(path, int(cfg.export.calibration.papers), int(cfg.seed), "calibration")
    if table.num_rows < 1:
        raise ConfigError(f"The train split at {path} is empty; the static int8 export calibrates on its papers.")
    return paper_text(table, str(cfg.export.parity.text))


# ------------------------------------------------------------------------------------------------ parity
def subject_p10(vectors: np.ndarray, labels: np.ndarray) -> float:
    """Subject-retrieval precision@10 (each paper against the others, relevant = same primary subject), as in
    :mod:`arxiv_embeddings.evaluate`."""
    from arxiv_embeddings.metrics import RankingCutoffs, label_retrieval

    cutoffs = RankingCutoffs(precision_recall_at=(10,), accuracy_at=(), mrr_at=(), ndcg_at=(), map_at=())
    return float(label_retrieval(vectors, labels, cutoffs=cutoffs).summary().get("precision@10", 0.0))


def parity(
    reference: np.ndarray,
    vectors: np.ndarray,
    labels: np.ndarray,
    reference_p10: float,
    min_cosine: float,
    max_p10_diff: float,
) -> dict[str, Any]:
    """Parity figures of one variant's (L2-normalized) vectors against the reference's."""
    cosine = np.sum(reference.astype(np.float64) * vectors.astype(np.float64), axis=1)
    p10 = subject_p10(vectors, labels)
    mean_cosine, diff = float(cosine.mean()), p10 - reference_p10
    return {
        "mean_cosine": round(mean_cosine, 6),
        "min_cosine": round(float(cosine.min()), 6),
        "p10": round(p10, 6),
        "p10_diff": round(diff, 6),
        # the rounding margin keeps a difference of exactly the threshold (0.01 from 0.31 - 0.30) a pass
        "passed": bool(mean_cosine >= min_cosine and abs(diff) <= max_p10_diff + 1e-9),
    }


def parity_failure(name: str, figures: dict[str, Any], cfg: DictConfig) -> str:
    """One line naming both numbers of a failed variant and the thresholds."""
    p = cfg.export.parity
    return (
        f"{name}: mean cosine {figures['mean_cosine']:.4f} (needs >= {float(p.min_cosine):.4f}; min "
        f"{figures['min_cosine']:.4f}), P@10 {figures['p10']:.4f} vs {REFERENCE} {figures['p10'] - figures['p10_diff']:.4f}"
        f" (difference {100 * figures['p10_diff']:+.2f} points; allowed +/-{100 * float(p.max_p10_diff):.2f})"
    )


# -------------------------------------------------------------------------------------------- throughput
def texts_per_second(encode: Callable[[list[str]], Any], texts: list[str], batch_size: int, repeats: int) -> float:
    """Best of ``repeats`` timed passes over ``texts`` after one warm-up batch (the best pass is the least disturbed
    by other work on a shared machine)."""
    encode(texts[:batch_size])
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        encode(texts)
        best = min(best, time.perf_counter() - t0)
    return len(texts) / max(best, 1e-9)


def position_limit(model_dir: Path) -> int | None:
    """The model's ``max_position_embeddings`` (its config.json), or None when it does not say."""
    from arxiv_embeddings.io import read_json

    config = model_dir / "config.json"
    value = read_json(config).get("max_position_embeddings") if config.exists() else None
    return int(value) if value else None


def geomean(values: Sequence[float]) -> float:
    """The geometric mean of ``values`` (0 for none): how the report ranks variants by speed."""
    return float(math.exp(sum(math.log(max(v, 1e-12)) for v in values) / len(values))) if values else 0.0


def choose_default(variants: dict[str, dict[str, Any]]) -> tuple[str | None, str | None]:
    """(fastest passing entry overall, fastest passing ONNX entry), by the geometric mean of texts/s over the lengths."""
    timed = {k: v for k, v in variants.items() if v["parity"]["passed"] and v["throughput"]}
    speed = {k: geomean(list(v["throughput"].values())) for k, v in timed.items()}
    best = max(speed, key=lambda k: speed[k], default=None)
    onnx = [k for k in speed if variants[k]["backend"] == "onnx"]
    best_onnx = max(onnx, key=lambda k: speed[k], default=None)
    if best_onnx is None:  # no timing asked for: the ONNX default is the plain fp32 export
        best_onnx = next((k for k, v in variants.items() if v["backend"] == "onnx" and v["parity"]["passed"]), None)
    return best, best_onnx


# ---------------------------------------------------------------------------------------------- the table
def format_table(report: dict[str, Any]) -> str:
    """The report's variants side by side: parity figures, texts/s per length and the ratio to torch fp32."""
    lengths = [str(n) for n in report["throughput"]["seq_lengths"]]
    default = (report.get("serving_default") or {}).get("name")
    head = ["variant", "size MB", "mean cos", "min cos", "P@10", "dP@10 pt"]
    head += [f"texts/s @{n}" for n in lengths] + [f"x fp32 @{n}" for n in lengths] + ["parity"]
    rows = []
    for name, v in report["variants"].items():
        par, thr, spd = v["parity"], v["throughput"], v["speedup_vs_torch_fp32"]
        rows.append(
            [
                name + (" *" if name == default else ""),
                f"{v['size_mb']:.1f}" if v["size_mb"] is not None else "-",
                f"{par['mean_cosine']:.4f}",
                f"{par['min_cosine']:.4f}",
                f"{par['p10']:.4f}",
                f"{100 * par['p10_diff']:+.2f}",
                *(f"{thr[n]:.1f}" if n in thr else "-" for n in lengths),
                *(f"{spd[n]:.2f}" if n in spd else "-" for n in lengths),
                "pass" if par["passed"] else "FAIL",
            ]
        )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in [head, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n* = serving default"


# ------------------------------------------------------------------------------------------------ machine
def versions() -> dict[str, str]:
    """The installed versions of the packages an export depends on (the report's ``versions``)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in (
        "onnxruntime",
        "openvino",
        "optimum",
        "optimum-onnx",
        "onnx",
        "torch",
        "sentence-transformers",
        "transformers",
    ):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def machine(threads: int, arch: str | None) -> dict[str, Any]:
    """The machine the figures were measured on (the report's ``machine``): CPU, SIMD flags, threads, load."""
    model_name = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    flags = cpu_flags()
    return {
        "cpu": model_name or platform.processor() or platform.machine(),
        "arch": platform.machine(),
        "usable_cpus": usable_cpus(),
        "threads": threads,
        "simd": sorted(
            f
            for f in flags
            if f in {"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"}
        ),
        "native_bf16": cpu_supports_bf16(),
        "quantization_arch": arch,
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }

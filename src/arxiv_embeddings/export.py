"""export: ONNX variants of a model, gated on parity with the torch model, with a side-by-side speed report.

    uv run inv export                                                   # models/<run_name>/final
    uv run inv export --overrides "export.model=sentence-transformers/all-MiniLM-L6-v2"
    uv run inv export --overrides "export.optimization_levels=[O1,O3] export.quantization_arch=avx512_vnni"

Writes, next to the model, what sentence-transformers loads with ``backend="onnx"`` and what
:func:`arxiv_embeddings.backends.onnx_embedder.load_onnx_embedder` loads without torch:

- ``<model>/onnx/model.onnx`` (fp32), ``model_O<n>.onnx`` (optimum's graph optimizations, one per
  ``export.optimization_levels``; O4 = fp16 for a GPU) and ``model_q[u]int8_<arch>.onnx`` (int8 dynamic
  quantization for the CPU family at hand, detected from its instruction set unless ``export.quantization_arch``
  names one);
- ``<model>/export_report.json``: per variant, the parity figures (mean / min cosine to the torch fp32 embeddings of
  held-out test abstracts, subject-retrieval P@10 and its difference to torch's) and the throughput (texts/s) at
  each ``export.throughput.seq_lengths``, measured in one run side by side with torch fp32 and torch bf16, and the
  serving default: the fastest variant (geometric mean of texts/s over the lengths) that passes parity, which may
  be a torch one.

Parity gate: every ONNX variant must reach mean cosine >= ``export.parity.min_cosine`` and a P@10 within
``export.parity.max_p10_diff`` of torch's, or the export fails naming both numbers, and the previous export (the
``onnx`` folder and the report) is left as it was. A Hub name is first saved under ``${paths.models_dir}/<name>/final``
(an installed model package is read-only), so the export has a folder to live in.

A model in a bucket (``paths=gcs``, or a ``gs://`` folder) is copied to ``${paths.cache_dir}`` (once per content),
exported and measured there, and the ``onnx`` folder and the report are published next to the model in the bucket.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from loguru import logger
from omegaconf import DictConfig, OmegaConf

from arxiv_embeddings.backends.loading import (
    ModelNotFoundError,
    cpu_supports_bf16,
    fetch_model,
    model_files,
    resolve_model,
)
from arxiv_embeddings.backends.onnx_embedder import (
    ONNX_DIR,
    REPORT_FILE,
    VARIANT_FILES,
    OnnxEmbedder,
    int8_variant,
    usable_cpus,
)
from arxiv_embeddings.config import (
    CONFIG_DIR,
    ConfigError,
    check_int,
    check_missing,
    require,
    require_in,
    to_plain,
)
from arxiv_embeddings.data import TEXT_FIELDS, paper_text
from arxiv_embeddings.evaluation import read_sample
from arxiv_embeddings.io import artifact_path, atomic_dir, file_sha256, is_remote, write_json
from arxiv_embeddings.layout import as_path, model_location, split_path
from arxiv_embeddings.stage import StageSpec

SCHEMA_VERSION = 1
OPTIMIZATION_LEVELS = ("O1", "O2", "O3", "O4")
#: int8 quantization targets (optimum's AutoQuantizationConfig presets), most capable first.
QUANTIZATION_ARCHS = ("avx512_vnni", "avx512", "avx2", "arm64")
TORCH_PRECISIONS = ("fp32", "bf16")
#: The reference every variant is compared with.
REFERENCE = "torch-fp32"
#: Top-level keys of export_report.json.
REPORT_KEYS = (
    "schema_version",
    "model",
    "source",
    "machine",
    "parity",
    "throughput",
    "variants",
    "serving_default",
    "onnx_default",
    "versions",
    "config",
    "created_at",
)
#: Keys of each entry of ``variants`` in the report.
VARIANT_KEYS = ("backend", "variant", "file", "size_mb", "parity", "throughput", "speedup_vs_torch_fp32")


class ParityError(RuntimeError):
    """An exported variant's embeddings differ from the torch model's by more than the parity thresholds."""


# --------------------------------------------------------------------------------------------- validation
def _cuda_onnxruntime() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def validate(cfg: DictConfig) -> None:
    """Check the ``export`` settings before any work, naming the offending key."""
    check_missing(cfg)
    x = cfg.export
    require(
        bool(str(x.model or "").strip()), "export.model", "is empty; pass a run name, a model folder or a Hub name."
    )
    levels = list(x.optimization_levels) if OmegaConf.is_list(x.optimization_levels) else None
    require(
        levels is not None and len(set(levels)) == len(levels),
        "export.optimization_levels",
        f"got {x.optimization_levels!r}; expected a list without repeats such as [O3] ([] for none).",
    )
    for level in levels or []:
        require_in("export.optimization_levels", level, OPTIMIZATION_LEVELS)
    if "O4" in (levels or []) and not _cuda_onnxruntime():
        raise ConfigError(
            "export.optimization_levels: O4 is fp16 and runs on a GPU only, and this onnxruntime has no "
            "CUDAExecutionProvider; drop O4 (e.g. export.optimization_levels=[O3]) or install onnxruntime-gpu on a "
            "machine with a GPU."
        )
    require(isinstance(x.quantize, bool), "export.quantize", f"got {x.quantize!r}; expected true or false.")
    require_in("export.quantization_arch", x.quantization_arch, ("auto", *QUANTIZATION_ARCHS))

    p = x.parity
    check_int(p.max_papers, "export.parity.max_papers", minimum=2, optional=True)
    require_in("export.parity.text", p.text, TEXT_FIELDS)
    check_int(p.max_seq_length, "export.parity.max_seq_length", minimum=2, optional=True)
    check_int(p.batch_size, "export.parity.batch_size")
    require(
        isinstance(p.min_cosine, (int, float)) and 0 < p.min_cosine <= 1,
        "export.parity.min_cosine",
        f"got {p.min_cosine!r}; expected a number in (0, 1] such as 0.99.",
    )
    require(
        isinstance(p.max_p10_diff, (int, float)) and 0 <= p.max_p10_diff <= 1,
        "export.parity.max_p10_diff",
        f"got {p.max_p10_diff!r}; expected a fraction in [0, 1] such as 0.01 (1 point of P@10).",
    )

    t = x.throughput
    check_int(t.texts, "export.throughput.texts")
    check_int(t.batch_size, "export.throughput.batch_size")
    check_int(t.repeats, "export.throughput.repeats")
    check_int(t.threads, "export.throughput.threads", optional=True)
    lengths = list(t.seq_lengths) if OmegaConf.is_list(t.seq_lengths) else None
    require(
        bool(lengths) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 2 for v in lengths or []),
        "export.throughput.seq_lengths",
        f"got {t.seq_lengths!r}; expected a list of token counts >= 2 such as [128, 256].",
    )
    torch_precisions = list(t.torch) if OmegaConf.is_list(t.torch) else None
    require(
        torch_precisions is not None,
        "export.throughput.torch",
        f"got {t.torch!r}; expected a list such as [fp32, bf16] ([] = no torch timing).",
    )
    for precision in torch_precisions or []:
        require_in("export.throughput.torch", precision, TORCH_PRECISIONS)
    if x.quantize:
        quantization_arch(cfg)  # fails here, before any work, on a CPU without an int8 preset


# ------------------------------------------------------------------------------------------ CPU and plan
def cpu_flags() -> set[str]:
    """Instruction-set flags of this CPU (empty where /proc/cpuinfo is not available)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def detect_quantization_arch(flags: set[str] | None = None, machine: str | None = None) -> str | None:
    """The int8 preset for this CPU: avx512_vnni, avx512 (avx512f + bw), avx2, arm64; None when none fits."""
    machine = (machine or platform.machine()).lower()
    if machine in ("arm64", "aarch64"):
        return "arm64"
    flags = cpu_flags() if flags is None else flags
    if {"avx512_vnni", "avx512f"} <= flags:
        return "avx512_vnni"
    if {"avx512f", "avx512bw"} <= flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return None


def quantization_arch(cfg: DictConfig) -> str | None:
    """The int8 preset to export (None when ``export.quantize`` is false)."""
    if not cfg.export.quantize:
        return None
    arch = str(cfg.export.quantization_arch)
    if arch != "auto":
        return arch
    detected = detect_quantization_arch()
    if detected is None:
        raise ConfigError(
            f"export.quantization_arch=auto: this CPU ({platform.machine()}) has none of the instruction sets an int8 "
            f"preset targets (avx512_vnni, avx512, avx2, arm64); set export.quantization_arch to one of "
            f"{', '.join(QUANTIZATION_ARCHS)}, or export.quantize=false."
        )
    return detected


def planned_variants(cfg: DictConfig) -> list[str]:
    """ONNX variant names the export writes: fp32, the optimization levels, the int8 preset."""
    arch = quantization_arch(cfg)
    return ["fp32", *map(str, cfg.export.optimization_levels), *([int8_variant(arch)] if arch else [])]


# ------------------------------------------------------------------------------------------ model folder
def _hub_folder(cfg: DictConfig, name: str) -> Path:
    return artifact_path(cfg.paths.models_dir) / name.rstrip("/").split("/")[-1] / "final"


def model_target(cfg: DictConfig) -> tuple[Path, str | None]:
    """The folder the export goes into, and the Hub name to save there first (None when the folder is the model).

    A run name X is ``${paths.models_dir}/X/final``; a folder is itself; a Hub name is saved (once) under
    ``${paths.models_dir}/<last part of the name>/final``. Raises :class:`ModelNotFoundError` for a missing model.
    """
    value = str(cfg.export.model).strip()
    location = model_location(cfg, value)
    path = as_path(location)
    if is_remote(location):
        if not (path / "modules.json").exists():
            raise ModelNotFoundError(
                f"export.model: no sentence-transformers model at {path} (no modules.json); train one there with "
                "'uv run inv train' (with the same paths overrides), or pass a run name, a model folder or a Hub name."
            )
        return path, None
    if path.exists():
        resolve_model(path)  # fails on a folder that is not a sentence-transformers model
        from arxiv_embeddings.backends.lora import is_adapter_dir

        if is_adapter_dir(path):
            raise ConfigError(
                f"export.model: {path} holds a LoRA adapter, not full weights, and ONNX needs the merged model. Export "
                "the merged model that training writes to models/<run>/final (model.lora.merge=true, the default)."
            )
        if not os.access(path, os.W_OK):
            raise ConfigError(
                f"export.model: {path} is read-only, so the ONNX files cannot be written next to the model; copy "
                "the folder under models/ and export the copy (or pass a Hub name, which is saved there)."
            )
        return path, None
    target = _hub_folder(cfg, value)
    if (target / "modules.json").exists():
        return target, None
    return target, value


def _spec_model_dir(cfg: DictConfig) -> Path | None:
    try:
        return model_target(cfg)[0]
    except (ModelNotFoundError, ConfigError):
        return None


def save_hub_model(name: str, target: Path) -> None:
    """Save a Hub model (offline: cache or installed package) as a sentence-transformers folder at ``target``."""
    from arxiv_embeddings.backends.loading import load_model

    try:
        model = load_model(name, device="cpu")
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(
            f"Could not load {name!r} ({type(err).__name__}: {err}). export.model takes a run name with a model at "
            "models/<run>/final, a model folder, or a Hub name in the local Hugging Face cache (or installed, like "
            "sentence-transformers/all-MiniLM-L6-v2)."
        ) from err
    with atomic_dir(target) as tmp:
        model.save(str(tmp))
    logger.info(f"Saved {name} to {target} (the export is written next to it).")


# ---------------------------------------------------------------------------------------------- building
@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Silence the chatty INFO/WARNING logs of optimum and sentence-transformers' exporters."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def activation_matmuls(onnx_path: Path) -> list[str]:
    """MatMul nodes whose second input is not a constant weight: in a transformer, the attention scores (Q K^T) and
    the attention-weighted values (softmax(...) V)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    constants = {t.name for t in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output
    }
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] not in constants]


def int8_config(arch: str, onnx_path: Path) -> Any:
    """optimum's dynamic int8 preset for ``arch``, with the activation x activation MatMuls left in fp32.

    onnxruntime's own ``quantize_dynamic`` quantizes only MatMuls with a constant B (``MatMulConstBOnly``); optimum's
    presets do not set that option, so they also quantize the attention MatMuls, whose inputs (softmax
    probabilities, per-tensor uint8 at run time) lose the most. On all-MiniLM-L6-v2 at 256 tokens (120 test
    papers), mean cosine to torch fp32: 0.9895 with the preset as is, 0.9940 with these MatMuls in fp32.
    """
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    return getattr(AutoQuantizationConfig, arch)(is_static=False, nodes_to_exclude=activation_matmuls(onnx_path))


def build_onnx(model_dir: Path, out_dir: Path, levels: Sequence[str], arch: str | None) -> dict[str, Path]:
    """Export ``model_dir`` to ONNX with optimum, then each optimization level and the int8 preset, into ``out_dir``.

    Returns ``{variant name: file}``. Uses sentence-transformers' helpers, so the files are the ones
    ``SentenceTransformer(model_dir, backend="onnx", model_kwargs={"file_name": ...})`` loads.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.backend import export_dynamic_quantized_onnx_model, export_optimized_onnx_model

    files: dict[str, Path] = {}
    with (
        tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir.parent) as scratch,
        _quiet("sentence_transformers", "optimum", "onnxruntime"),
    ):
        t0 = time.perf_counter()
        model = SentenceTransformer(str(model_dir), backend="onnx", device="cpu", model_kwargs={"export": True})
        model.save(scratch)
        logger.info(f"Exported {VARIANT_FILES['fp32']} in {time.perf_counter() - t0:.1f}s.")
        names = ["fp32"]
        for level in levels:
            t0 = time.perf_counter()
            export_optimized_onnx_model(model, level, scratch)
            names.append(level)
            logger.info(f"Optimized ({level}) in {time.perf_counter() - t0:.1f}s.")
        if arch:
            t0 = time.perf_counter()
            name = int8_variant(arch)
            suffix = VARIANT_FILES[name].removeprefix("model_").removesuffix(".onnx")
            config = int8_config(arch, Path(scratch) / ONNX_DIR / VARIANT_FILES["fp32"])
            export_dynamic_quantized_onnx_model(model, config, scratch, file_suffix=suffix)
            names.append(name)
            logger.info(
                f"Quantized (int8, {arch}) in {time.perf_counter() - t0:.1f}s; "
                f"{len(config.nodes_to_exclude)} activation x activation MatMul(s) left in fp32."
            )
        produced = Path(scratch) / ONNX_DIR
        for name in names:
            source = produced / VARIANT_FILES[name]
            if not source.exists():
                raise RuntimeError(f"The export of variant {name} did not write {source.name}.")
            shutil.move(source, out_dir / source.name)
            files[name] = out_dir / source.name
        for extra in produced.glob("*.onnx_data"):  # external weights of models over 2 GiB
            shutil.move(extra, out_dir / extra.name)
    return files


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


def _position_limit(model_dir: Path) -> int | None:
    from arxiv_embeddings.io import read_json

    config = model_dir / "config.json"
    value = read_json(config).get("max_position_embeddings") if config.exists() else None
    return int(value) if value else None


def _geomean(values: Sequence[float]) -> float:
    return float(math.exp(sum(math.log(max(v, 1e-12)) for v in values) / len(values))) if values else 0.0


def choose_default(variants: dict[str, dict[str, Any]]) -> tuple[str | None, str | None]:
    """(fastest passing entry overall, fastest passing ONNX entry), by the geometric mean of texts/s over the lengths."""
    timed = {k: v for k, v in variants.items() if v["parity"]["passed"] and v["throughput"]}
    speed = {k: _geomean(list(v["throughput"].values())) for k, v in timed.items()}
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


# --------------------------------------------------------------------------------------------------- run
def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("onnxruntime", "optimum", "optimum-onnx", "onnx", "torch", "sentence-transformers", "transformers"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def _machine(threads: int, arch: str | None) -> dict[str, Any]:
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


def run(cfg: DictConfig) -> dict[str, Any]:
    """Export, check parity, time every variant, write the variants and export_report.json. Returns
    ``{"dir", "report", "files"}``; raises :class:`ParityError` (nothing written) when a variant fails parity."""
    import torch

    from arxiv_embeddings.backends.torch_embedder import TorchEmbedder

    validate(cfg)
    started = time.perf_counter()
    model_dir, hub_name = model_target(cfg)  # fails on a missing model before any work
    texts, labels, bench_texts, data_info = load_texts(cfg)
    if hub_name is not None:
        save_hub_model(hub_name, model_dir)
    # The files the export reads: the model folder itself, or for one in a bucket its local copy. What the export
    # writes goes to model_dir either way (onnx/ through atomic_dir's staging folder, the report as one object).
    source = Path(fetch_model(str(model_dir), cfg.paths.cache_dir))
    x, p, t = cfg.export, cfg.export.parity, cfg.export.throughput
    arch = quantization_arch(cfg)
    threads = int(t.threads or usable_cpus())
    limit = _position_limit(source)
    lengths = [int(n) for n in t.seq_lengths]
    if limit is not None and any(n > limit for n in lengths):
        raise ConfigError(
            f"export.throughput.seq_lengths={lengths}: {model_dir} has {limit} positions; use lengths <= {limit}."
        )
    if limit is not None and p.max_seq_length is not None and int(p.max_seq_length) > limit:
        raise ConfigError(
            f"export.parity.max_seq_length={p.max_seq_length}: {model_dir} has {limit} positions; use at most {limit} "
            "(or null for the model's own limit)."
        )
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        reference = TorchEmbedder(source, device="cpu", precision="fp32", max_seq_length=p.max_seq_length)
        parity_len = int(reference.max_seq_length)
        bs = int(p.batch_size)
        logger.info(f"Torch fp32 reference: {len(texts)} test papers at {parity_len} tokens.")
        ref_vectors = reference.encode(texts, batch_size=bs)
        ref_p10 = subject_p10(ref_vectors, labels)
        thresholds = (ref_p10, float(p.min_cosine), float(p.max_p10_diff))

        embedders: dict[str, Any] = {}
        entries: dict[str, dict[str, Any]] = {}

        def add(name: str, backend: str, variant: str, file: Path | None, figures: dict[str, Any]) -> None:
            """Record an entry; ``file`` is the staged ONNX file (its final place is ``<model>/onnx/<name>``)."""
            entries[name] = {
                "backend": backend,
                "variant": variant,
                "file": f"{ONNX_DIR}/{file.name}" if file is not None else None,
                "size_mb": round(file.stat().st_size / 2**20, 2) if file is not None else None,
                "parity": figures,
                "throughput": {},
                "speedup_vs_torch_fp32": {},
            }

        add(REFERENCE, "torch", "fp32", None, parity(ref_vectors, ref_vectors, labels, *thresholds))
        embedders[REFERENCE] = reference
        if "bf16" in t.torch:
            bf16 = TorchEmbedder(source, device="cpu", precision="bf16", max_seq_length=parity_len)
            add("torch-bf16", "torch", "bf16", None, parity(ref_vectors, bf16.encode(texts, bs), labels, *thresholds))
            embedders["torch-bf16"] = bf16

        with atomic_dir(model_dir / ONNX_DIR) as stage_dir:
            files = build_onnx(source, stage_dir, [str(v) for v in x.optimization_levels], arch)
            failures = []
            for variant, file in files.items():
                emb = OnnxEmbedder(source, file, variant, max_seq_length=parity_len, threads=threads)
                name = f"onnx-{variant}"
                figures = parity(ref_vectors, emb.encode(texts, bs), labels, *thresholds)
                add(name, "onnx", variant, file, figures)
                logger.info(
                    f"{name}: mean cosine {figures['mean_cosine']:.4f}, P@10 {figures['p10']:.4f} "
                    f"({100 * figures['p10_diff']:+.2f} points vs torch)."
                )
                if not figures["passed"]:
                    failures.append(parity_failure(name, figures, cfg))
                embedders[name] = emb
            if failures:
                raise ParityError(
                    f"Export of {model_dir} failed the parity gate on {len(texts)} test papers at {parity_len} "
                    "tokens; the previous export is left as it was.\n  "
                    + "\n  ".join(failures)
                    + "\nRelax export.parity.min_cosine / export.parity.max_p10_diff, or drop the variant "
                    "(export.optimization_levels, export.quantize)."
                )
            timed = [n for n in entries if entries[n]["backend"] == "onnx" or entries[n]["variant"] in t.torch]
            mean_tokens = _measure(embedders, entries, timed, bench_texts, lengths, int(t.batch_size), int(t.repeats))
        best, best_onnx = choose_default(entries)
        for entry in entries.values():
            ref_thr = entries[REFERENCE]["throughput"]
            entry["speedup_vs_torch_fp32"] = {
                n: round(v / ref_thr[n], 3) for n, v in entry["throughput"].items() if ref_thr.get(n)
            }
        report: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "model": str(model_dir),
            "source": str(x.model),
            "machine": _machine(threads, arch),
            "parity": {
                "reference": REFERENCE,
                "split": "test",
                "text": str(p.text),
                "max_seq_length": parity_len,
                "min_cosine": float(p.min_cosine),
                "max_p10_diff": float(p.max_p10_diff),
                "reference_p10": round(ref_p10, 6),
                "data": data_info,
            },
            "throughput": {
                "seq_lengths": lengths,
                "texts": len(bench_texts),
                "batch_size": int(t.batch_size),
                "repeats": int(t.repeats),
                "threads": threads,
                "mean_tokens": mean_tokens,
                "unit": "texts/s, best of the repeats",
            },
            "variants": entries,
            "serving_default": _default_entry(entries, best, lengths),
            "onnx_default": entries[best_onnx]["variant"] if best_onnx else None,
            "versions": _versions(),
            "config": {"seed": cfg.seed, "export": to_plain(x)},
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        write_json(model_dir / REPORT_FILE, report)
    finally:
        torch.set_num_threads(torch_threads)
    table = format_table(report)
    logger.info("\n" + table)
    sd: dict[str, Any] = report["serving_default"] or {}
    logger.success(
        f"export: {len(files)} ONNX variant(s) pass parity (mean cosine >= "
        f"{min(e['parity']['mean_cosine'] for e in entries.values()):.4f}); serving default {sd.get('name')} "
        f"({sd.get('reason', '-')}); wrote {model_dir / ONNX_DIR} and {REPORT_FILE} in {time.perf_counter() - started:.1f}s."
    )
    return {
        "dir": model_dir,
        "report": report,
        "files": [model_dir / ONNX_DIR / f.name for f in files.values()] + [model_dir / REPORT_FILE],
    }


def _measure(
    embedders: dict[str, Any],
    entries: dict[str, dict[str, Any]],
    names: list[str],
    texts: list[str],
    lengths: list[int],
    batch_size: int,
    repeats: int,
) -> dict[str, float]:
    """texts/s of every entry at every length, interleaved (all entries at one length, then the next) so that a
    change in the machine's load shows in every entry alike. Returns the mean tokens per text at each length."""
    from tqdm import tqdm

    mean_tokens: dict[str, float] = {}
    counter = next((e for e in embedders.values() if isinstance(e, OnnxEmbedder)), None)
    with tqdm(total=len(names) * len(lengths), desc="throughput", unit="run", dynamic_ncols=True) as bar:
        for n in lengths:
            if counter is not None:
                counter.max_seq_length = n
                mean_tokens[str(n)] = round(float(counter.token_counts(texts).mean()), 1)
            for name in names:
                emb = embedders[name]
                if isinstance(emb, OnnxEmbedder):
                    emb.max_seq_length = n
                else:
                    emb.model.max_seq_length = n
                speed = texts_per_second(
                    functools.partial(emb.encode, batch_size=batch_size), texts, batch_size, repeats
                )
                entries[name]["throughput"][str(n)] = round(speed, 2)
                bar.set_postfix_str(f"{name} @{n}: {speed:.1f}/s")
                bar.update()
    return mean_tokens


def _default_entry(entries: dict[str, dict[str, Any]], name: str | None, lengths: list[int]) -> dict[str, Any] | None:
    if name is None:
        return None
    e = entries[name]
    speed = _geomean(list(e["throughput"].values()))
    return {
        "name": name,
        "backend": e["backend"],
        "variant": e["variant"],
        "file": e["file"],
        "texts_per_s_geomean": round(speed, 2),
        "reason": f"fastest passing parity; geometric mean {speed:.1f} texts/s over {lengths} tokens",
    }


def _outputs(cfg: DictConfig) -> list[Path]:
    model_dir = _spec_model_dir(cfg)
    if model_dir is None:
        return []
    files = [model_dir / ONNX_DIR / VARIANT_FILES[v] for v in planned_variants(cfg)]
    return [*files, model_dir / REPORT_FILE]


def _inputs(cfg: DictConfig) -> list[Path]:
    """The model's own files (for a Hub name, those of its local source, the same before and after it is saved
    under models/) and the test split."""
    processed = artifact_path(cfg.paths.processed_dir) / "test.parquet"
    value = str(cfg.export.model).strip()
    try:
        path = as_path(model_location(cfg, value))
    except ModelNotFoundError:
        return [processed]
    if not path.exists():
        try:
            path = Path(resolve_model(value))
        except ModelNotFoundError:
            return [processed]
    return [*model_files(path), processed]


SPEC = StageSpec(
    name="export",
    run=run,
    inputs=_inputs,
    outputs=_outputs,
    # Inside onnx/, so the stamp is neither an input (the model files) nor one of the hashed outputs.
    stamp_dir=lambda cfg: (_spec_model_dir(cfg) or artifact_path(cfg.paths.models_dir)) / ONNX_DIR,
    validate=validate,
    config_keys=("export", "seed"),
)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
def main(cfg: DictConfig) -> None:
    from arxiv_embeddings.stage import cli_main

    try:
        cli_main(SPEC, cfg)
    except ParityError as err:
        logger.error(str(err))
        sys.exit(3)


if __name__ == "__main__":
    main()

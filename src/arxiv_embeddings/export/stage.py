"""The export stage: ``validate(cfg)``, ``run(cfg)``, its :class:`~arxiv_embeddings.runner.StageSpec` and the
``@hydra.main`` entry point of ``python -m arxiv_embeddings.export``."""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from loguru import logger
from omegaconf import DictConfig, OmegaConf

from arxiv_embeddings.backends.loading import (
    fetch_model,
    model_files,
    resolve_model,
)
from arxiv_embeddings.backends.onnx_embedder import (
    OPENVINO_VARIANTS,
    STATIC_INT8,
    VARIANT_FILES,
    OnnxEmbedder,
    report_name,
    usable_cpus,
)
from arxiv_embeddings.config import (
    CONFIG_DIR,
    ConfigError,
    check_int,
    check_missing,
    require,
    require_in,
    require_model_name,
    to_plain,
)
from arxiv_embeddings.export.build import Calibration, build_onnx
from arxiv_embeddings.export.measure import (
    choose_default,
    format_table,
    geomean,
    load_calibration,
    load_texts,
    machine,
    parity,
    parity_failure,
    position_limit,
    subject_p10,
    texts_per_second,
    versions,
)
from arxiv_embeddings.export.plan import (
    OPENVINO_PRECISIONS,
    OPTIMIZATION_LEVELS,
    QUANTIZATION_ARCHS,
    REFERENCE,
    SCHEMA_VERSION,
    TORCH_PRECISIONS,
    ParityError,
    cuda_onnxruntime,
    model_target,
    openvino_variants,
    planned_variants,
    quantization_arch,
    save_hub_model,
    spec_model_dir,
    static_planned,
)
from arxiv_embeddings.io import artifact_path, atomic_dir, write_json
from arxiv_embeddings.layout import (
    BASE_DIR,
    ONNX_DIR,
    REPORT_FILE,
    ModelNotFoundError,
    as_path,
    model_location,
    processed_split,
)
from arxiv_embeddings.runner import StageSpec
from arxiv_embeddings.texts import TEXT_FIELDS


def onnx_entries(files: dict[str, Path], ov_variants: list[str]) -> list[tuple[str, str, Path]]:
    """``(report name, variant, file)`` of each ONNX variant an export checks: ``onnx-<variant>`` for each file
    onnxruntime runs, then each ``openvino-*`` variant over its file (the plain export's, or the static int8 one)."""
    pairs = [
        *((v, f) for v, f in files.items() if v not in OPENVINO_VARIANTS),
        *((v, files.get(v, files["fp32"])) for v in ov_variants),
    ]
    return [(report_name(variant), variant, file) for variant, file in pairs]


def _distinct_choices(value: Any, key: str, valid: tuple[str, ...], example: str) -> list[Any]:
    """Require at ``key`` a list without repeats whose items are all in ``valid``; return it."""
    items = list(value) if OmegaConf.is_list(value) else None
    require(
        items is not None and len(set(items)) == len(items),
        key,
        f"got {value!r}; expected a list without repeats such as {example} ([] for none).",
    )
    for item in items or []:
        require_in(key, item, valid)
    return items or []


def validate(cfg: DictConfig) -> None:
    """Check the ``export`` settings before any work, naming the offending key."""
    check_missing(cfg)
    x = cfg.export
    require_model_name(x.model, "export.model")
    levels = _distinct_choices(x.optimization_levels, "export.optimization_levels", OPTIMIZATION_LEVELS, "[O3]")
    if "O4" in levels and not cuda_onnxruntime():
        raise ConfigError(
            "export.optimization_levels: O4 is fp16 and runs on a GPU only, and this onnxruntime has no "
            "CUDAExecutionProvider; drop O4 (e.g. export.optimization_levels=[O3]) or install onnxruntime-gpu on a "
            "machine with a GPU."
        )
    require(isinstance(x.quantize, bool), "export.quantize", f"got {x.quantize!r}; expected true or false.")
    _distinct_choices(x.openvino, "export.openvino", OPENVINO_PRECISIONS, "[fp32, bf16]")
    require_in("export.quantization_arch", x.quantization_arch, ("auto", *QUANTIZATION_ARCHS))

    p = x.parity
    check_int(x.calibration.papers, "export.calibration.papers")
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


def run(cfg: DictConfig) -> dict[str, Any]:
    """Export, check parity, time every variant, write the variants and export_report.json. Returns
    ``{"dir", "report", "files"}``; raises :class:`ParityError` (nothing written) when a variant fails parity."""
    import torch

    from arxiv_embeddings.backends.torch_embedder import TorchEmbedder

    validate(cfg)
    started = time.perf_counter()
    model_dir, hub_name = model_target(cfg)  # fails on a missing model before any work
    texts, labels, bench_texts, data_info = load_texts(cfg)
    ov_variants = openvino_variants(cfg)
    calibration_texts = (
        load_calibration(cfg) if STATIC_INT8 in ov_variants else None
    )  # a missing train split fails here
    if hub_name is not None:
        save_hub_model(hub_name, model_dir)
    # The files the export reads: the model folder itself, or for one in a bucket its local copy. What the export
    # writes goes to model_dir either way (onnx/ through atomic_dir's staging folder, the report as one object).
    source = Path(fetch_model(str(model_dir), cfg.paths.cache_dir))
    x, p, t = cfg.export, cfg.export.parity, cfg.export.throughput
    arch = quantization_arch(cfg)
    threads = int(t.threads or usable_cpus())
    limit = position_limit(source)
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

        calibration = Calibration(calibration_texts, parity_len) if calibration_texts is not None else None
        with atomic_dir(model_dir / ONNX_DIR) as stage_dir:
            files = build_onnx(source, stage_dir, [str(v) for v in x.optimization_levels], arch, calibration)
            failures = []
            for name, variant, file in onnx_entries(files, ov_variants):
                emb = OnnxEmbedder(source, file, variant, max_seq_length=parity_len, threads=threads)
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
                    "(export.optimization_levels, export.quantize, export.openvino)."
                )
            timed = [n for n in entries if entries[n]["backend"] == "onnx" or entries[n]["variant"] in t.torch]
            mean_tokens = _measure(embedders, entries, timed, bench_texts, lengths, int(t.batch_size), int(t.repeats))
            # the untouched base model a folder keeps for search (train.search_model=base): the same variants,
            # each checked against that model in torch; last, so that a failure here leaves both exports as they were
            base_parity = None
            if (source / BASE_DIR).is_dir():
                base_parity = _export_base(
                    source / BASE_DIR, model_dir / BASE_DIR, cfg, ov_variants, texts, labels, threads, calibration
                )
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
            "machine": machine(threads, arch),
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
            # the base model in base/ (null when the folder keeps none): each variant's parity against it in torch
            "base": base_parity,
            "serving_default": _default_entry(entries, best, lengths),
            "onnx_default": entries[best_onnx]["variant"] if best_onnx else None,
            "versions": versions(),
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
        f"export: {sum(e['backend'] == 'onnx' for e in entries.values())} ONNX variant(s) pass parity (mean cosine >= "
        f"{min(e['parity']['mean_cosine'] for e in entries.values()):.4f}); serving default {sd.get('name')} "
        f"({sd.get('reason', '-')}); wrote {model_dir / ONNX_DIR} and {REPORT_FILE} in {time.perf_counter() - started:.1f}s."
    )
    return {
        "dir": model_dir,
        "report": report,
        "files": [model_dir / ONNX_DIR / f.name for f in files.values()] + [model_dir / REPORT_FILE],
    }


def _export_base(
    source: Path,
    target: Any,
    cfg: DictConfig,
    ov_variants: list[str],
    texts: list[str],
    labels: Any,
    threads: int,
    calibration: Calibration | None,
) -> dict[str, Any]:
    """Export the base model a folder keeps in ``base/`` (``source``; written to ``target/onnx``) in the variants
    the main model is exported in, each through the parity gate against that model in torch fp32. Raises
    :class:`ParityError` (nothing written) when one fails. Returns each variant's parity figures."""
    from arxiv_embeddings.backends.torch_embedder import TorchEmbedder

    x, p = cfg.export, cfg.export.parity
    reference = TorchEmbedder(source, device="cpu", precision="fp32", max_seq_length=p.max_seq_length)
    bs = int(p.batch_size)
    logger.info(f"Base model in {BASE_DIR}/: torch fp32 reference on {len(texts)} test papers.")
    ref_vectors = reference.encode(texts, batch_size=bs)
    thresholds = (subject_p10(ref_vectors, labels), float(p.min_cosine), float(p.max_p10_diff))
    figures: dict[str, Any] = {}
    failures = []
    with atomic_dir(target / ONNX_DIR) as stage_dir:
        files = build_onnx(
            source, stage_dir, [str(v) for v in x.optimization_levels], quantization_arch(cfg), calibration
        )
        for name, variant, file in onnx_entries(files, ov_variants):
            emb = OnnxEmbedder(source, file, variant, max_seq_length=int(reference.max_seq_length), threads=threads)
            figures[variant] = parity(ref_vectors, emb.encode(texts, bs), labels, *thresholds)
            if not figures[variant]["passed"]:
                failures.append(parity_failure(f"{BASE_DIR}/{name}", figures[variant], cfg))
        if failures:
            raise ParityError(
                f"Export of the base model in {source} failed the parity gate; the previous exports are left as they "
                "were.\n  "
                + "\n  ".join(failures)
                + "\nRelax export.parity.min_cosine / export.parity.max_p10_diff, or drop the variant "
                "(export.optimization_levels, export.quantize, export.openvino)."
            )
    logger.info(
        f"{BASE_DIR}/: {len(figures)} ONNX variant(s) pass parity (mean cosine >= "
        f"{min(f['mean_cosine'] for f in figures.values()):.4f})."
    )
    return figures


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
    speed = geomean(list(e["throughput"].values()))
    return {
        "name": name,
        "backend": e["backend"],
        "variant": e["variant"],
        "file": e["file"],
        "texts_per_s_geomean": round(speed, 2),
        "reason": f"fastest passing parity; geometric mean {speed:.1f} texts/s over {lengths} tokens",
    }


def _outputs(cfg: DictConfig) -> list[Path]:
    model_dir = spec_model_dir(cfg)
    if model_dir is None:
        return []
    variants = [*planned_variants(cfg), *([STATIC_INT8] if static_planned(cfg) else [])]
    files = [model_dir / ONNX_DIR / VARIANT_FILES[v] for v in variants]
    if (model_dir / BASE_DIR).is_dir():  # the base model it keeps for search, exported beside it
        files += [model_dir / BASE_DIR / ONNX_DIR / VARIANT_FILES[v] for v in variants]
    return [*files, model_dir / REPORT_FILE]


def _inputs(cfg: DictConfig) -> list[Path]:
    """The model's own files (for a Hub name, those of its local source, the same before and after it is saved
    under models/), the test split and, for a static int8 export, the train split it calibrates on."""
    processed = [processed_split(cfg, "test"), *([processed_split(cfg, "train")] if static_planned(cfg) else [])]
    value = str(cfg.export.model).strip()
    try:
        path = as_path(model_location(cfg, value))
    except ModelNotFoundError:
        return processed
    if not path.exists():
        try:
            path = Path(resolve_model(value))
        except ModelNotFoundError:
            return processed
    return [*model_files(path), *processed]


SPEC = StageSpec(
    name="export",
    run=run,
    inputs=_inputs,
    outputs=_outputs,
    # Inside onnx/, so the stamp is neither an input (the model files) nor one of the hashed outputs.
    stamp_dir=lambda cfg: (spec_model_dir(cfg) or artifact_path(cfg.paths.models_dir)) / ONNX_DIR,
    validate=validate,
    config_keys=("export", "seed"),
)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
def main(cfg: DictConfig) -> None:
    from arxiv_embeddings.runner import cli_main

    try:
        cli_main(SPEC, cfg)
    except ParityError as err:
        logger.error(str(err))
        sys.exit(3)

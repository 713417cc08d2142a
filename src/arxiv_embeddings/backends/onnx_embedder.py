"""Embeddings from an exported ONNX model with onnxruntime and tokenizers only: no torch, no transformers.

    from arxiv_embeddings.backends.onnx_embedder import load_onnx_embedder
    emb = load_onnx_embedder("models/minilm-sample/final")           # the serving default of export_report.json
    emb = load_onnx_embedder("models/minilm-sample/final", variant="int8-avx2", max_seq_length=128)
    emb = load_onnx_embedder("models/minilm-sample/final", variant="openvino-bf16")   # onnx/model.onnx on OpenVINO
    vectors = emb.encode(["A title\\nAn abstract ..."])              # float32, (n, dim), L2-normalized

The model folder is a sentence-transformers folder that ``uv run inv export`` has written ONNX variants into
(``onnx/model.onnx``, ``onnx/model_O3.onnx``, ``onnx/model_quint8_avx2.onnx``, ...). The rest of the pipeline is
read from the sentence-transformers files beside them: ``tokenizer.json``, ``sentence_bert_config.json`` /
``tokenizer_config.json`` (most tokens per text, lower-casing), ``modules.json`` (which modules follow the
transformer) and ``1_Pooling/config.json`` (the pooling modes), so that the vectors match the torch model's.
Supported: Transformer -> Pooling, then any sequence of Normalize and linear Dense modules (identity activation:
the subject head of ``train.head``, weights read with safetensors' NumPy loader); another module fails with its name.
``encode(texts, output="encoder")`` leaves out every module after the Pooling (the encoder without its head).

The ``openvino-*`` variants run an ONNX file with OpenVINO's CPU runtime instead of onnxruntime: ``openvino-fp32``
and ``openvino-bf16`` the plain export (``onnx/model.onnx``) at the precision their name gives (``bf16`` uses AMX /
AVX512-BF16 where the CPU has them), ``openvino-int8`` its static int8 quantization
(``onnx/model_qint8_static.onnx``, fast where the CPU has int8 dot products: VNNI, AMX-INT8); they need the ``openvino`` extra
(``pip install "arxiv-embeddings[openvino]"``).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from arxiv_embeddings.backends.batches import check_max_batch_tokens, token_batches
from arxiv_embeddings.backends.lora import is_adapter_dir
from arxiv_embeddings.backends.tasks import BASE, MODEL, check_output
from arxiv_embeddings.layout import FINAL_DIR, ONNX_DIR, REPORT_FILE
from arxiv_embeddings.vectors import normalize_rows

#: File of every ONNX variant under ``<model>/onnx/``. ``fp32`` is the plain export; ``O1``-``O4`` are optimum's
#: graph optimization levels (O4 = fp16, GPU only); ``int8-<arch>`` are dynamically quantized for a CPU family
#: (optimum's AutoQuantizationConfig: unsigned weights for avx2, signed for the others, as sentence-transformers names them).
VARIANT_FILES: dict[str, str] = {
    "fp32": "model.onnx",
    "O1": "model_O1.onnx",
    "O2": "model_O2.onnx",
    "O3": "model_O3.onnx",
    "O4": "model_O4.onnx",
    "int8-avx512_vnni": "model_qint8_avx512_vnni.onnx",
    "int8-avx512": "model_qint8_avx512.onnx",
    "int8-avx2": "model_quint8_avx2.onnx",
    "int8-arm64": "model_qint8_arm64.onnx",
    "openvino-fp32": "model.onnx",
    "openvino-bf16": "model.onnx",
    # NNCF's post-training static quantization of model.onnx (int8 weights and activations as QuantizeLinear /
    # DequantizeLinear pairs), calibrated on train papers; OpenVINO runs its quantized MatMuls in int8.
    "openvino-int8": "model_qint8_static.onnx",
}
#: Variants that run an ONNX file with OpenVINO instead of onnxruntime: their inference precision (OpenVINO's
#: INFERENCE_PRECISION_HINT; f32 is asked for explicitly, since OpenVINO runs bf16 by default on a CPU with AMX).
#: openvino-int8 runs its quantized operations in int8 and the rest in f32.
OPENVINO_VARIANTS: dict[str, str] = {"openvino-fp32": "f32", "openvino-bf16": "bf16", "openvino-int8": "f32"}
#: The variant whose file the export quantizes statically (the others are model.onnx itself or optimum's files).
STATIC_INT8 = "openvino-int8"
#: Input shapes whose kernels an OpenVINO model keeps (see :class:`OpenVinoSession`).
OPENVINO_SHAPE_CACHE = 100
#: How to install what the openvino-* variants need.
OPENVINO_INSTALL = 'pip install "arxiv-embeddings[openvino]" (in a checkout, uv sync installs it)'
#: Pooling modes in sentence-transformers' order (the order legacy configs concatenate them in).
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# Module types (last part of the class path in modules.json) this embedder reproduces.
_TRANSFORMER, _POOLING, _NORMALIZE, _DENSE = "Transformer", "Pooling", "Normalize", "Dense"
#: Dense activations run here (sentence-transformers writes the class path in the module's config.json).
_LINEAR_ACTIVATIONS = ("torch.nn.modules.linear.Identity",)


class ExportNotFoundError(FileNotFoundError):
    """The model folder has no ONNX export (or not the variant asked for)."""


def usable_cpus() -> int:
    """CPU cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def openvino_available() -> bool:
    """Whether OpenVINO (the ``openvino`` extra) is installed, so that the ``openvino-*`` variants can run."""
    return importlib.util.find_spec("openvino") is not None


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


# ----------------------------------------------------------------------------------------- model layout
@dataclass(frozen=True)
class PipelineConfig:
    """What the sentence-transformers files say about tokenization and pooling."""

    transformer_dir: Path
    max_seq_length: int
    do_lower_case: bool
    pooling_modes: tuple[str, ...]
    token_dim: int
    #: What follows the pooling, in order: ``("normalize", None, None)`` or ``("dense", weight, bias)``.
    post: tuple[tuple[str, np.ndarray | None, np.ndarray | None], ...] = ()

    @property
    def normalize(self) -> bool:
        """True when the model's last module is a Normalize (its outputs are unit vectors)."""
        return bool(self.post) and self.post[-1][0] == "normalize"

    @property
    def pooled_dimension(self) -> int:
        """Length of the Pooling's vectors (the ``encoder`` output)."""
        return self.token_dim * len(self.pooling_modes)

    @property
    def dimension(self) -> int:
        for kind, weight, _ in reversed(self.post):
            if kind == "dense" and weight is not None:
                return int(weight.shape[0])
        return self.pooled_dimension

    def apply_post(self, pooled: np.ndarray) -> np.ndarray:
        """The modules after the pooling, in NumPy."""
        out = pooled
        for kind, weight, bias in self.post:
            if kind == "normalize":
                out = normalize_rows(out)
            else:
                assert weight is not None
                out = out @ weight.T + (bias if bias is not None else 0.0)
        return out.astype(np.float32, copy=False)


def _module_kind(type_path: str) -> str:
    return type_path.rsplit(".", 1)[-1]


def _pooling_modes(cfg: dict[str, Any]) -> tuple[str, ...]:
    mode = cfg.get("pooling_mode")
    if mode is None:
        modes = tuple(name for key, name in _LEGACY_POOLING_KEYS.items() if cfg.get(key, False)) or ("mean",)
    else:
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    unknown = [m for m in modes if m not in POOLING_MODES]
    if unknown:
        raise ValueError(f"Unknown pooling mode(s) {unknown}; known: {', '.join(POOLING_MODES)}.")
    return modes


def _max_seq_length(transformer_dir: Path) -> int:
    """sentence-transformers' rule: sentence_bert_config.json's max_seq_length (older models), else the tokenizer's
    model_max_length capped at the model's max_position_embeddings."""
    st_cfg_path = transformer_dir / "sentence_bert_config.json"
    st_cfg = _read_json(st_cfg_path) if st_cfg_path.exists() else {}
    if st_cfg.get("max_seq_length"):
        return int(st_cfg["max_seq_length"])
    tok_cfg_path, hf_cfg_path = transformer_dir / "tokenizer_config.json", transformer_dir / "config.json"
    tok_cfg = _read_json(tok_cfg_path) if tok_cfg_path.exists() else {}
    positions = int((_read_json(hf_cfg_path) if hf_cfg_path.exists() else {}).get("max_position_embeddings", 0) or 0)
    model_max = int(tok_cfg.get("model_max_length") or 0)
    if model_max <= 0 or model_max > 1_000_000:  # transformers writes a huge number for "no limit"
        model_max = positions
    limit = min(model_max, positions) if positions > 0 else model_max
    return limit if limit > 0 else 512


def read_pipeline(model_dir: Path) -> PipelineConfig:
    """Read modules.json and the module configs of a sentence-transformers folder."""
    modules_path = model_dir / "modules.json"
    if not modules_path.exists():
        raise ExportNotFoundError(
            f"{model_dir} is not a sentence-transformers model folder (no modules.json); pass the folder that "
            "'uv run inv train' writes (models/<run>/final) and 'uv run inv export' exported."
        )
    modules = _read_json(modules_path)
    kinds = [_module_kind(str(m.get("type", ""))) for m in modules]
    if (
        not kinds
        or kinds[0] != _TRANSFORMER
        or kinds[1:2] != [_POOLING]
        or any(k not in (_NORMALIZE, _DENSE) for k in kinds[2:])
    ):
        raise ValueError(
            f"{model_dir}: modules {kinds} are not supported by the ONNX embedder, which runs Transformer -> Pooling "
            "(-> Normalize / linear Dense); use backend='torch' for this model."
        )
    post = tuple(
        ("normalize", None, None) if kind == _NORMALIZE else ("dense", *_dense_weights(model_dir / str(m["path"])))
        for kind, m in zip(kinds[2:], modules[2:], strict=True)
    )
    transformer_dir = model_dir / str(modules[0].get("path", ""))
    pooling_cfg = _read_json(model_dir / str(modules[1]["path"]) / "config.json")
    token_dim = int(pooling_cfg.get("embedding_dimension") or pooling_cfg.get("word_embedding_dimension") or 0)
    st_cfg_path = transformer_dir / "sentence_bert_config.json"
    st_cfg = _read_json(st_cfg_path) if st_cfg_path.exists() else {}
    return PipelineConfig(
        transformer_dir=transformer_dir,
        max_seq_length=_max_seq_length(transformer_dir),
        do_lower_case=bool(st_cfg.get("do_lower_case", False)),
        pooling_modes=_pooling_modes(pooling_cfg),
        token_dim=token_dim,
        post=post,
    )


def _dense_weights(module_dir: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Weight ``(out, in)`` and bias of a sentence-transformers Dense module folder with a linear activation."""
    cfg = _read_json(module_dir / "config.json")
    activation = str(cfg.get("activation_function", ""))
    if activation not in _LINEAR_ACTIVATIONS:
        raise ValueError(
            f"{module_dir}: Dense activation {activation!r} is not supported by the ONNX embedder (only "
            f"{', '.join(_LINEAR_ACTIVATIONS)}); use backend='torch' for this model."
        )
    weights_path = module_dir / "model.safetensors"
    if not weights_path.exists():
        raise ExportNotFoundError(
            f"{weights_path} not found: the ONNX embedder reads a Dense module's weights from safetensors; re-save "
            "the model with sentence-transformers (it writes model.safetensors by default)."
        )
    from safetensors.numpy import load_file

    tensors = load_file(str(weights_path))
    weight = np.asarray(tensors["linear.weight"], dtype=np.float32)
    bias = tensors.get("linear.bias")
    return weight, None if bias is None else np.asarray(bias, dtype=np.float32)


def _pool(modes: tuple[str, ...], tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """sentence-transformers' Pooling (padded inputs, right padding) in NumPy."""
    tokens = tokens.astype(np.float32, copy=False)
    m = mask.astype(np.float32)[:, :, None]
    lengths = np.maximum(m.sum(axis=1), 1e-9)
    out = []
    for mode in modes:
        if mode == "cls":
            out.append(tokens[np.arange(len(tokens)), mask.argmax(axis=1)])
        elif mode == "max":
            out.append(np.where(m > 0, tokens, -np.inf).max(axis=1))
        elif mode == "mean":
            out.append((tokens * m).sum(axis=1) / lengths)
        elif mode == "mean_sqrt_len_tokens":
            out.append((tokens * m).sum(axis=1) / np.sqrt(lengths))
        elif mode == "weightedmean":
            w = m * np.arange(1, tokens.shape[1] + 1, dtype=np.float32)[None, :, None]
            out.append((tokens * w).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-9))
        elif mode == "lasttoken":
            last = mask.shape[1] - 1 - np.flip(mask, axis=1).argmax(axis=1)
            out.append(tokens[np.arange(len(tokens)), last] * (mask.max(axis=1) > 0)[:, None])
    return np.concatenate(out, axis=1) if len(out) > 1 else out[0]


# -------------------------------------------------------------------------------------------- embedder
class OnnxEmbedder:
    """One ONNX variant of a sentence-transformers model in an onnxruntime session (satisfies ``Embedder``)."""

    backend = "onnx"

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        onnx_path: str | os.PathLike[str],
        variant: str,
        max_seq_length: int | None = None,
        threads: int | None = None,
        providers: list[str] | None = None,
        max_batch_tokens: int | None = None,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.name = str(model_dir)
        self.variant = variant
        self.onnx_path = Path(onnx_path)
        model_path = Path(model_dir)
        self.pipeline = read_pipeline(model_path)
        tokenizer_path = self.pipeline.transformer_dir / "tokenizer.json"
        if not tokenizer_path.exists():
            raise ExportNotFoundError(
                f"{tokenizer_path} not found: the ONNX embedder needs a fast tokenizer file; re-save the model with "
                "sentence-transformers (SentenceTransformer(...).save(folder)) to write it."
            )
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        pad_token, pad_type_id = "[PAD]", 0
        tok_cfg_path = self.pipeline.transformer_dir / "tokenizer_config.json"
        if tok_cfg_path.exists():
            tok_cfg = _read_json(tok_cfg_path)
            pad = tok_cfg.get("pad_token")
            pad_token = str(pad.get("content") if isinstance(pad, dict) else pad or pad_token)
            pad_type_id = int(tok_cfg.get("pad_token_type_id", 0) or 0)
        pad_id = self.tokenizer.token_to_id(pad_token)
        # each call's texts are tokenized once, unpadded, and every batch is padded to its own longest text here
        self.tokenizer.no_padding()
        self._pad_id, self._pad_type_id = (0 if pad_id is None else pad_id), pad_type_id
        self.max_seq_length = int(max_seq_length or self.pipeline.max_seq_length)
        #: Most padded tokens in one model call (None = batches capped by count only); see backends.batches.
        self.max_batch_tokens = check_max_batch_tokens(max_batch_tokens)

        options = ort.SessionOptions()
        self.threads = int(threads or usable_cpus())
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        #: What runs the ONNX file: ``onnxruntime``, or ``openvino`` for the ``openvino-*`` variants.
        self.engine = "openvino" if variant in OPENVINO_VARIANTS else "onnxruntime"
        if self.engine == "openvino":
            if providers is not None:
                raise ValueError(f"providers={providers!r}: variant {variant!r} runs on OpenVINO, not onnxruntime.")
            session: Any = OpenVinoSession(self.onnx_path, OPENVINO_VARIANTS[variant], self.threads)
            self.device = "cpu"
            inputs, outputs = session.input_names, session.output_names
        else:
            if providers is None:
                # O4 is fp16 for a GPU; everything else runs on the CPU unless told otherwise.
                gpu = variant == "O4" and "CUDAExecutionProvider" in ort.get_available_providers()
                providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]
            session = ort.InferenceSession(str(self.onnx_path), sess_options=options, providers=providers)
            self.device = "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
            inputs, outputs = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
        self.session = session
        self._inputs = set(inputs)
        self._output = "last_hidden_state" if "last_hidden_state" in outputs else outputs[0]
        self.dimension = self.pipeline.dimension

    @property
    def max_seq_length(self) -> int:
        return self._max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        if int(value) < 2:
            raise ValueError(f"max_seq_length must be >= 2 (room for the special tokens), got {value}.")
        self._max_seq_length = int(value)
        self.tokenizer.enable_truncation(max_length=self._max_seq_length)

    def _prepare(self, texts: list[str]) -> list[str]:
        return [t.lower() for t in texts] if self.pipeline.do_lower_case else list(texts)

    def token_counts(self, texts: list[str]) -> np.ndarray:
        """Tokens per text after truncation (special tokens included), as the model sees them."""
        encodings = self.tokenizer.encode_batch(self._prepare(texts))
        return np.array([len(e.ids) for e in encodings], dtype=np.int64)

    def _padded(self, encodings: list[Any]) -> dict[str, np.ndarray]:
        """Token ids, attention mask and token types of ``encodings`` (unpadded), padded to the longest of them."""
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.full((len(encodings), width), self._pad_type_id, dtype=np.int64)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n], mask[row, :n], types[row, :n] = e.ids, 1, e.type_ids
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    def feeds(self, texts: list[str]) -> list[dict[str, np.ndarray]]:
        """The model's inputs for each text on its own (a batch of one, no padding), truncated at
        :attr:`max_seq_length`: what a static quantization calibrates on."""
        feeds = [self._padded([e]) for e in self.tokenizer.encode_batch(self._prepare(texts))]
        return [{k: v for k, v in feed.items() if k in self._inputs} for feed in feeds]

    def _run(self, encodings: list[Any], post: bool = True) -> np.ndarray:
        """One model call: ``encodings`` (unpadded) padded to the longest of them."""
        feed = self._padded(encodings)
        tokens = self.session.run([self._output], {k: v for k, v in feed.items() if k in self._inputs})[0]
        pooled = _pool(self.pipeline.pooling_modes, np.asarray(tokens), feed["attention_mask"])
        return self.pipeline.apply_post(pooled) if post else pooled.astype(np.float32, copy=False)

    def encode(self, texts: list[str], batch_size: int = 32, normalize: bool = True, output: str = MODEL) -> np.ndarray:
        """Embeddings of ``texts`` as float32 ``(len(texts), d)``.

        ``output="model"``: the whole pipeline (``d`` = :attr:`dimension`), L2-normalized when ``normalize`` (the
        model's own Normalize module, when it has one, applies either way, as in sentence-transformers).
        ``output="encoder"``: the pooled vectors with none of the modules after the Pooling, always L2-normalized
        (``d`` = the pooled dimension)."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of texts, not a single string; wrap it: encode([text]).")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if check_output(output) == BASE:
            from arxiv_embeddings.backends.with_base import no_base_output

            raise no_base_output(self.name)
        post = output == MODEL
        out = np.zeros((len(texts), self.dimension if post else self.pipeline.pooled_dimension), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(self._prepare(texts))
        # similar token lengths per batch (less padding), capped by count and by max_batch_tokens
        for rows in token_batches([len(e.ids) for e in encodings], batch_size, self.max_batch_tokens):
            out[rows] = self._run([encodings[i] for i in rows], post=post)
        return normalize_rows(out) if normalize or not post or self.pipeline.normalize else out

    def replica(self) -> OnnxEmbedder:
        """A copy to encode from another thread at the same time: the same onnxruntime session (its ``run`` may be
        called from several threads; OpenVINO's model is compiled again, since one runs a request at a time), its own
        tokenizer (a Rust tokenizer must not be used by two threads at once)."""
        from tokenizers import Tokenizer

        clone = copy.copy(self)
        clone.tokenizer = Tokenizer.from_str(self.tokenizer.to_str())
        if isinstance(self.session, OpenVinoSession):
            clone.session = self.session.copy()
        return clone

    def __repr__(self) -> str:
        return (
            f"OnnxEmbedder(name={self.name!r}, variant={self.variant!r}, file={self.onnx_path.name!r}, "
            f"engine={self.engine!r}, dimension={self.dimension}, max_seq_length={self.max_seq_length}, threads={self.threads})"
        )


class OpenVinoSession:
    """An ONNX file compiled by OpenVINO for the CPU, with the part of onnxruntime's session the embedder uses
    (``run(output_names, feed)``). One compiled model runs one request at a time on its ``threads`` threads (a single
    stream: the lowest latency for one caller), so a replica for another thread compiles its own (:meth:`copy`)."""

    def __init__(self, onnx_path: Path, precision: str, threads: int, model: Any = None) -> None:
        if not openvino_available():
            raise ExportNotFoundError(
                f"The openvino-* variants run on OpenVINO, which is not installed: {OPENVINO_INSTALL}; or load an "
                "onnxruntime variant (variant=None takes the fastest one the export measured)."
            )
        import openvino as ov

        self.onnx_path, self.precision, self.threads = onnx_path, precision, int(threads)
        core = ov.Core()
        self.model = model if model is not None else core.read_model(str(onnx_path))
        config = {
            "INFERENCE_PRECISION_HINT": precision,
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "LATENCY",
            # Pinned, every compiled model (the API's workers, the index's worker processes) put its threads on the
            # same first cores: two one-thread workers ran at half the speed of one.
            "ENABLE_CPU_PINNING": False,
            # Kernels kept for at most this many input shapes: with OpenVINO's default (5,000) a server's memory grew
            # with every new (batch, length) it saw.
            "CPU_RUNTIME_CACHE_CAPACITY": OPENVINO_SHAPE_CACHE,
        }
        self.compiled = core.compile_model(self.model, "CPU", config)
        self.input_names = [p.get_any_name() for p in self.compiled.inputs]
        self.output_names = [p.get_any_name() for p in self.compiled.outputs]
        self._local = threading.local()

    def copy(self) -> OpenVinoSession:
        """The same model compiled again: its own stream and threads, for a worker thread of its own."""
        return OpenVinoSession(self.onnx_path, self.precision, self.threads, model=self.model)

    def run(self, output_names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        request = getattr(self._local, "request", None)  # usable from several threads (one request each)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        result = request.infer(feed)
        return [np.asarray(result[self.compiled.output(name)]) for name in output_names]


# ------------------------------------------------------------------------------------------- variants
def variant_file(variant: str) -> str:
    """File name (under ``onnx/``) of a variant name, failing with the list of known names."""
    try:
        return VARIANT_FILES[variant]
    except KeyError:
        raise ValueError(f"Unknown ONNX variant {variant!r}; known variants: {', '.join(VARIANT_FILES)}.") from None


def report_name(variant: str) -> str:
    """The name of a variant's entry in ``export_report.json``: ``onnx-<variant>``, an ``openvino-*`` one as it is."""
    return variant if variant in OPENVINO_VARIANTS else f"onnx-{variant}"


def exported_variants(model_dir: str | os.PathLike[str]) -> list[str]:
    """Variant names whose file is present under ``<model_dir>/onnx/`` (the ``openvino-*`` ones where OpenVINO is
    installed, ``openvino-bf16`` only on a CPU with native bf16, as the export plans them)."""
    from arxiv_embeddings.backends.loading import cpu_supports_bf16

    onnx_dir = Path(model_dir) / ONNX_DIR
    ov = openvino_available()
    skip = {*([] if ov else OPENVINO_VARIANTS), *([] if cpu_supports_bf16() else ["openvino-bf16"])}
    return [name for name, file in VARIANT_FILES.items() if (onnx_dir / file).exists() and name not in skip]


def read_report(model_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The export report of a model folder, or None when it has none."""
    path = Path(model_dir) / REPORT_FILE
    return _read_json(path) if path.exists() else None


def serving_default(model_dir: str | os.PathLike[str]) -> tuple[str, str] | None:
    """``(backend, variant)`` the export marked as the serving default (e.g. ``("onnx", "int8-avx2")`` or
    ``("torch", "bf16")``), or None for a folder without an export report."""
    report = read_report(model_dir)
    if not report or not report.get("serving_default"):
        return None
    default = report["serving_default"]
    return str(default["backend"]), str(default["variant"])


def _default_variant(model_dir: Path) -> str:
    report = read_report(model_dir)
    if report is None:
        if (model_dir / ONNX_DIR / VARIANT_FILES["fp32"]).exists():
            return "fp32"
        raise ExportNotFoundError(
            f"{model_dir} has no ONNX export ({REPORT_FILE} and {ONNX_DIR}/{VARIANT_FILES['fp32']} are missing); run "
            f"'uv run inv export --overrides \"export.model={model_dir}\"' first."
        )
    default = report.get("serving_default") or {}
    # The fastest variant overall may be torch (e.g. bf16 on a CPU with AMX); the ONNX backend then takes the
    # fastest ONNX variant that passed parity.
    name = str(default["variant"]) if default.get("backend") == "onnx" else report.get("onnx_default")
    if not name:
        raise ExportNotFoundError(f"{model_dir / REPORT_FILE} names no ONNX variant; re-run 'uv run inv export'.")
    if name in OPENVINO_VARIANTS and not openvino_available():
        fallback = fastest_onnxruntime_variant(report)
        if fallback is None:
            raise ExportNotFoundError(
                f"{model_dir / REPORT_FILE} names {name}, which runs on OpenVINO, and no onnxruntime variant passed "
                f"parity; {OPENVINO_INSTALL}."
            )
        logger.warning(
            f"{model_dir}: the export's fastest ONNX variant {name} runs on OpenVINO, which is not installed; serving "
            f"{fallback}, the fastest onnxruntime variant it measured ({OPENVINO_INSTALL} to serve {name})."
        )
        return fallback
    return str(name)


def fastest_onnxruntime_variant(report: dict[str, Any]) -> str | None:
    """The onnxruntime variant with the highest geometric mean of texts/s that passed parity in an export report
    (``fp32`` when none was timed), or None when none passed."""
    passing = [
        v
        for v in report.get("variants", {}).values()
        if v.get("backend") == "onnx" and v.get("variant") not in OPENVINO_VARIANTS and v["parity"]["passed"]
    ]
    if not passing:
        return None

    def speed(entry: dict[str, Any]) -> float:
        values = [max(float(x), 1e-12) for x in entry.get("throughput", {}).values()]
        return float(np.exp(np.mean(np.log(values)))) if values else 0.0

    return str(max(passing, key=speed)["variant"])


def load_onnx_embedder(
    model_dir: str | os.PathLike[str],
    variant: str | None = None,
    max_seq_length: int | None = None,
    **kw: Any,
) -> OnnxEmbedder:
    """An :class:`OnnxEmbedder` for one exported variant of a model folder.

    ``variant``: a name of :data:`VARIANT_FILES` (``fp32``, ``O3``, ``int8-avx2``, ``openvino-bf16``, ...); None =
    the serving default recorded in ``export_report.json`` (its fastest ONNX variant when the overall default is a
    torch one, its fastest onnxruntime one when that variant runs on OpenVINO and OpenVINO is not installed; ``fp32``
    for a folder with ``onnx/model.onnx`` but no report). ``max_seq_length``: None = the model's own. ``kw``:
    ``threads`` (onnxruntime intra-op threads; default = usable cores), ``providers`` (onnxruntime execution
    providers; default CPU, CUDA first for O4 when available) and ``max_batch_tokens`` (most padded tokens in one
    model call; default: batches capped by count only).
    """
    path = Path(model_dir)
    if not path.is_dir():
        raise ExportNotFoundError(
            f"Model folder not found: {path}. Pass a model folder (models/<run>/final) that 'uv run inv export' "
            "has exported."
        )
    if is_adapter_dir(path):
        raise ExportNotFoundError(adapter_message(path))
    unknown = set(kw) - {"threads", "providers", "device", "max_batch_tokens"}
    if unknown:
        raise TypeError(
            f"load_onnx_embedder() got unknown option(s) {sorted(unknown)}; known: threads, providers, max_batch_tokens."
        )
    device = kw.pop("device", None)
    if device not in (None, "cpu", "cuda") and not str(device).startswith("cuda"):
        raise ValueError(f"device={device!r} is not available to the ONNX backend; use 'cpu' or 'cuda'.")
    name = variant or _default_variant(path)
    if device is not None and str(device).startswith("cuda") and kw.get("providers") is None:
        if name in OPENVINO_VARIANTS:
            raise ValueError(f"device={device!r}: variant {name!r} runs on OpenVINO's CPU runtime; use device='cpu'.")
        kw["providers"] = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    file = path / ONNX_DIR / variant_file(name)
    if not file.exists():
        present = exported_variants(path)
        raise ExportNotFoundError(
            f"ONNX variant {name!r} was not exported for {path} (no {file}); exported variants: "
            f"{', '.join(present) or 'none'}. Export it with 'uv run inv export' (export.optimization_levels, "
            "export.quantize, export.openvino)."
        )
    return OnnxEmbedder(path, file, name, max_seq_length=max_seq_length, **kw)


def adapter_message(path: Path) -> str:
    """Why a LoRA adapter folder cannot run on ONNX, and which folder to serve instead."""
    merged = path.parent / FINAL_DIR
    if merged.is_dir() and merged.resolve() != path.resolve() and not is_adapter_dir(merged):
        instead = f"the merged model {merged}"
    else:
        instead = "the merged model that training writes to models/<run>/final (model.lora.merge=true, the default)"
    return (
        f"{path} is a LoRA adapter folder (adapter_config.json), and an ONNX export has no adapters: serve {instead} "
        "once 'uv run inv export' has exported it, or serve this folder with backend=torch (peft installed)."
    )


def int8_variant(arch: str) -> str:
    """Variant name of the int8 quantization for a CPU family (``avx2`` -> ``int8-avx2``)."""
    name = f"int8-{arch}"
    variant_file(name)
    return name

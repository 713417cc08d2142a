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

The package's modules: :mod:`~arxiv_embeddings.export.plan` (report names, the int8 target of this CPU, the variants,
the model folder), :mod:`~arxiv_embeddings.export.build` (the ONNX files, with optimum),
:mod:`~arxiv_embeddings.export.measure` (parity, throughput, the serving default, the table) and
:mod:`~arxiv_embeddings.export.stage` (``validate``, ``run``, ``SPEC``, ``main``). The names above are importable
from here.
"""

from __future__ import annotations

from arxiv_embeddings.export.build import activation_matmuls as activation_matmuls
from arxiv_embeddings.export.build import build_onnx as build_onnx
from arxiv_embeddings.export.build import int8_config as int8_config
from arxiv_embeddings.export.measure import choose_default as choose_default
from arxiv_embeddings.export.measure import format_table as format_table
from arxiv_embeddings.export.measure import load_texts as load_texts
from arxiv_embeddings.export.measure import parity as parity
from arxiv_embeddings.export.measure import parity_failure as parity_failure
from arxiv_embeddings.export.measure import subject_p10 as subject_p10
from arxiv_embeddings.export.measure import texts_per_second as texts_per_second
from arxiv_embeddings.export.plan import OPTIMIZATION_LEVELS as OPTIMIZATION_LEVELS
from arxiv_embeddings.export.plan import QUANTIZATION_ARCHS as QUANTIZATION_ARCHS
from arxiv_embeddings.export.plan import REFERENCE as REFERENCE
from arxiv_embeddings.export.plan import REPORT_KEYS as REPORT_KEYS
from arxiv_embeddings.export.plan import SCHEMA_VERSION as SCHEMA_VERSION
from arxiv_embeddings.export.plan import TORCH_PRECISIONS as TORCH_PRECISIONS
from arxiv_embeddings.export.plan import VARIANT_KEYS as VARIANT_KEYS
from arxiv_embeddings.export.plan import ParityError as ParityError
from arxiv_embeddings.export.plan import cpu_flags as cpu_flags
from arxiv_embeddings.export.plan import detect_quantization_arch as detect_quantization_arch
from arxiv_embeddings.export.plan import model_target as model_target
from arxiv_embeddings.export.plan import planned_variants as planned_variants
from arxiv_embeddings.export.plan import quantization_arch as quantization_arch
from arxiv_embeddings.export.plan import save_hub_model as save_hub_model
from arxiv_embeddings.export.stage import SPEC as SPEC
from arxiv_embeddings.export.stage import main as main
from arxiv_embeddings.export.stage import run as run
from arxiv_embeddings.export.stage import validate as validate

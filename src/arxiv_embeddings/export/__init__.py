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
:mod:`~arxiv_embeddings.export.stage` (``validate``, ``run``, ``SPEC``, ``main``). Each name is imported from the
module that defines it; ``python -m arxiv_embeddings.export`` runs the stage.
"""

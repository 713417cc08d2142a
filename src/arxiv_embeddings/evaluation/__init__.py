"""How a run is scored, shared by the evaluate and baseline stages (and by publish and the export's sample):

- :mod:`~arxiv_embeddings.evaluation.settings`: the ``evaluate:`` checks, report names and files, model sources;
- :mod:`~arxiv_embeddings.evaluation.data`: the test split, the probe's train sample, the two fresh slices, the
  graded score's pairs;
- :mod:`~arxiv_embeddings.evaluation.features`: a model (or any encoder) to
  :class:`~arxiv_embeddings.evaluation.features.Features`;
- :mod:`~arxiv_embeddings.evaluation.scoring`: retrieval, the graded score, probe, clustering, per-query figures, the
  report folder.

Each name is imported from the module that defines it. The comparison across runs is :mod:`arxiv_embeddings.report`.
"""

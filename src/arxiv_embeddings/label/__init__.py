"""label: teacher-scored graded pairs for CoSENT / CosineSimilarityLoss, from a scorer or from a CSV.

    uv run inv label                                                   # candidates scored by subject overlap
    uv run inv label --overrides "label.scorer=llm label.llm.model=gpt-4o-mini"        # key from $OPENAI_API_KEY
    uv run inv label --overrides "label.source=csv label.csv.path=scored_pairs.csv"
    uv run inv train --overrides "train.pairs_from=label loss=cosent"

The stage writes ``graded`` pairs (``sentence1, sentence2, score``, score in [0, 1]) to ``paths.labels_dir`` (the
train stage reads them with ``train.pairs_from=label``; the pairs stage's ``paths.pairs_dir`` is left alone), in the
layout the pairs stage uses: ``train.parquet``, ``eval.parquet``, their
``*_meta.parquet`` twins and ``manifest.json``. Two sources (``label.source``):

- ``papers``: candidate pairs are drawn from the processed train and eval splits (half from the same primary subject
  by default, the rest at random) and scored by the scorer named in ``label.scorer`` (see
  :data:`~arxiv_embeddings.label.scorers.SCORERS`):
  ``subject_overlap`` (Jaccard overlap of the papers' subject lists, local and instant), ``cross_encoder`` (a
  sentence-transformers ``CrossEncoder``) or ``llm`` (a chat model behind an OpenAI-compatible HTTP API, asked to
  rate the relatedness of the two papers from 0 to 1; see :class:`~arxiv_embeddings.label.llm.LLMScorer`);
- ``csv``: pairs a teacher already scored, e.g. in a labelling notebook: a CSV file with the header
  ``sentence1,sentence2,score`` (see :func:`~arxiv_embeddings.label.csv_import.read_scored_csv`), split into train
  and eval at random (seeded).

A CSV with bad rows fails as a whole, with every bad row's line number in one error; the previous pairs stay as
they were, as after any failed run (the folder is replaced in one rename).

The package's modules: :mod:`~arxiv_embeddings.label.candidates` (the pairs to score, the
:class:`~arxiv_embeddings.label.candidates.Scorer` interface), :mod:`~arxiv_embeddings.label.scorers` (subject
overlap, cross-encoder, LLM; :func:`~arxiv_embeddings.label.scorers.build_scorer`),
:mod:`~arxiv_embeddings.label.llm` and :mod:`~arxiv_embeddings.label.prompts` (the LLM teacher's client, prompt and
reply parsing), :mod:`~arxiv_embeddings.label.cache` (the resumable score cache),
:mod:`~arxiv_embeddings.label.csv_import` (pairs scored elsewhere) and :mod:`~arxiv_embeddings.label.stage`
(``validate``, ``run``, ``SPEC``, ``main``). Each name is imported from the module that defines it;
``python -m arxiv_embeddings.label`` runs the stage.
"""

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
  by default, the rest at random) and scored by the scorer named in ``label.scorer`` (see :data:`SCORERS`):
  ``subject_overlap`` (Jaccard overlap of the papers' subject lists, local and instant), ``cross_encoder`` (a
  sentence-transformers ``CrossEncoder``) or ``llm`` (a chat model behind an OpenAI-compatible HTTP API, asked to
  rate the relatedness of the two papers from 0 to 1; see :class:`LLMScorer`);
- ``csv``: pairs a teacher already scored, e.g. in a labelling notebook: a CSV file with the header
  ``sentence1,sentence2,score`` (see :func:`read_scored_csv`), split into train and eval at random (seeded).

A CSV with bad rows fails as a whole, with every bad row's line number in one error; the previous pairs stay as
they were, as after any failed run (the folder is replaced in one rename).

The package's modules: :mod:`~arxiv_embeddings.label.candidates` (the pairs to score, the :class:`Scorer`
interface), :mod:`~arxiv_embeddings.label.scorers` (subject overlap, cross-encoder, LLM; :func:`build_scorer`),
:mod:`~arxiv_embeddings.label.llm` and :mod:`~arxiv_embeddings.label.prompts` (the LLM teacher's client, prompt and
reply parsing), :mod:`~arxiv_embeddings.label.cache` (the resumable score cache),
:mod:`~arxiv_embeddings.label.csv_import` (pairs scored elsewhere) and :mod:`~arxiv_embeddings.label.stage`
(``validate``, ``run``, ``SPEC``, ``main``). The names above are importable from here.
"""

from __future__ import annotations

from arxiv_embeddings.label.cache import ScoreCache as ScoreCache
from arxiv_embeddings.label.cache import cache_key as cache_key
from arxiv_embeddings.label.candidates import Candidates as Candidates
from arxiv_embeddings.label.candidates import Scorer as Scorer
from arxiv_embeddings.label.candidates import ScoringError as ScoringError
from arxiv_embeddings.label.candidates import sample_candidates as sample_candidates
from arxiv_embeddings.label.csv_import import CSV_HEADER as CSV_HEADER
from arxiv_embeddings.label.csv_import import PAIR_TYPE as PAIR_TYPE
from arxiv_embeddings.label.csv_import import PAPER_COLUMNS as PAPER_COLUMNS
from arxiv_embeddings.label.csv_import import SOURCES as SOURCES
from arxiv_embeddings.label.csv_import import CsvPairsError as CsvPairsError
from arxiv_embeddings.label.csv_import import read_scored_csv as read_scored_csv
from arxiv_embeddings.label.llm import RETRY_STATUSES as RETRY_STATUSES
from arxiv_embeddings.label.llm import LLMRequestError as LLMRequestError
from arxiv_embeddings.label.llm import LLMScorer as LLMScorer
from arxiv_embeddings.label.llm import LLMSettings as LLMSettings
from arxiv_embeddings.label.llm import retry_after_seconds as retry_after_seconds
from arxiv_embeddings.label.prompts import PROMPT_VERSION as PROMPT_VERSION
from arxiv_embeddings.label.prompts import SYSTEM_PROMPT as SYSTEM_PROMPT
from arxiv_embeddings.label.prompts import USER_PROMPT as USER_PROMPT
from arxiv_embeddings.label.prompts import build_messages as build_messages
from arxiv_embeddings.label.prompts import paper_prompt_text as paper_prompt_text
from arxiv_embeddings.label.prompts import parse_score as parse_score
from arxiv_embeddings.label.scorers import SCORERS as SCORERS
from arxiv_embeddings.label.scorers import CrossEncoderScorer as CrossEncoderScorer
from arxiv_embeddings.label.scorers import SubjectOverlapScorer as SubjectOverlapScorer
from arxiv_embeddings.label.scorers import build_scorer as build_scorer
from arxiv_embeddings.label.stage import SPEC as SPEC
from arxiv_embeddings.label.stage import main as main
from arxiv_embeddings.label.stage import run as run
from arxiv_embeddings.label.stage import validate as validate

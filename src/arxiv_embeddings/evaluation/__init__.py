"""How a run is scored, shared by the evaluate and baseline stages (and by publish and the export's sample):

- :mod:`~arxiv_embeddings.evaluation.settings`: the ``evaluate:`` checks, report names and files, model sources;
- :mod:`~arxiv_embeddings.evaluation.data`: the test split, the probe's train sample, the two fresh slices, the
  graded score's pairs;
- :mod:`~arxiv_embeddings.evaluation.features`: a model (or any encoder) to :class:`Features`;
- :mod:`~arxiv_embeddings.evaluation.scoring`: retrieval, the graded score, probe, clustering, per-query figures, the
  report folder.

The names of those modules are importable from here. The comparison across runs is :mod:`arxiv_embeddings.report`.
"""

from __future__ import annotations

from arxiv_embeddings.evaluation.data import COLUMNS as COLUMNS
from arxiv_embeddings.evaluation.data import EvalData as EvalData
from arxiv_embeddings.evaluation.data import fresh_inputs as fresh_inputs
from arxiv_embeddings.evaluation.data import fresh_path as fresh_path
from arxiv_embeddings.evaluation.data import graded_pairs as graded_pairs
from arxiv_embeddings.evaluation.data import labels_of as labels_of
from arxiv_embeddings.evaluation.data import load_data as load_data
from arxiv_embeddings.evaluation.data import load_fresh as load_fresh
from arxiv_embeddings.evaluation.data import read_sample as read_sample
from arxiv_embeddings.evaluation.features import Features as Features
from arxiv_embeddings.evaluation.features import embed as embed
from arxiv_embeddings.evaluation.features import encode_texts as encode_texts
from arxiv_embeddings.evaluation.features import features_from as features_from
from arxiv_embeddings.evaluation.features import load_encoder as load_encoder
from arxiv_embeddings.evaluation.scoring import PER_QUERY_KEYS as PER_QUERY_KEYS
from arxiv_embeddings.evaluation.scoring import TITLE_ABSTRACT_PER_QUERY_KEYS as TITLE_ABSTRACT_PER_QUERY_KEYS
from arxiv_embeddings.evaluation.scoring import evaluate_features as evaluate_features
from arxiv_embeddings.evaluation.scoring import evaluate_model as evaluate_model
from arxiv_embeddings.evaluation.scoring import faiss_paired_retrieval as faiss_paired_retrieval
from arxiv_embeddings.evaluation.scoring import graded_section as graded_section
from arxiv_embeddings.evaluation.scoring import paired_title_abstract as paired_title_abstract
from arxiv_embeddings.evaluation.scoring import per_query as per_query
from arxiv_embeddings.evaluation.scoring import score as score
from arxiv_embeddings.evaluation.scoring import subject_section as subject_section
from arxiv_embeddings.evaluation.scoring import summary_line as summary_line
from arxiv_embeddings.evaluation.scoring import title_abstract_retrieval as title_abstract_retrieval
from arxiv_embeddings.evaluation.settings import FRESH_FILE as FRESH_FILE
from arxiv_embeddings.evaluation.settings import FRESH_NATURAL_FILE as FRESH_NATURAL_FILE
from arxiv_embeddings.evaluation.settings import FRESH_SLICES as FRESH_SLICES
from arxiv_embeddings.evaluation.settings import MAP_METHODS as MAP_METHODS
from arxiv_embeddings.evaluation.settings import METRICS_FILE as METRICS_FILE
from arxiv_embeddings.evaluation.settings import METRICS_KEYS as METRICS_KEYS
from arxiv_embeddings.evaluation.settings import PLOTS_DIR as PLOTS_DIR
from arxiv_embeddings.evaluation.settings import REPORT_FILE as REPORT_FILE
from arxiv_embeddings.evaluation.settings import SCHEMA_VERSION as SCHEMA_VERSION
from arxiv_embeddings.evaluation.settings import TITLE_ABSTRACT_INDEXES as TITLE_ABSTRACT_INDEXES
from arxiv_embeddings.evaluation.settings import check_report_name as check_report_name
from arxiv_embeddings.evaluation.settings import local_model_dir as local_model_dir
from arxiv_embeddings.evaluation.settings import model_source as model_source
from arxiv_embeddings.evaluation.settings import report_dir as report_dir
from arxiv_embeddings.evaluation.settings import report_files as report_files
from arxiv_embeddings.evaluation.settings import report_name as report_name
from arxiv_embeddings.evaluation.settings import validate_evaluation as validate_evaluation

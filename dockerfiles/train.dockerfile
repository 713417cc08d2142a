# syntax=docker/dockerfile:1.7
# The training image: the same container for local GPU runs and Vertex AI custom jobs.
#
#   docker build -f dockerfiles/train.dockerfile -t arxiv-embeddings-train .
#   docker run --gpus all -e WANDB_API_KEY -v "$PWD/data:/app/data" -v "$PWD/models:/app/models" \
#       arxiv-embeddings-train trainer.max_steps=200 logger=wandb
#
# The arguments are Hydra overrides of the train stage (Vertex AI passes them as the job's `args:`). The entry
# point (src/arxiv_embeddings/train_launcher.py) runs one process on one GPU and one DDP process per GPU on several.
# torch's wheels bring their own CUDA libraries; the CUDA base image supplies the runtime they expect.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /uvx /usr/local/bin/

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON=3.11 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1

WORKDIR /app

# Dependencies first, in their own layer: it is rebuilt only when uv.lock or pyproject.toml change.
# --no-default-groups --extra train: the project, its serving dependencies and its `train` extra (torch,
# sentence-transformers, ...), as `pip install "arxiv-embeddings[train]"` gets them; not the test tools.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv python install 3.11 \
    && uv sync --locked --no-default-groups --extra train --no-install-project

COPY pyproject.toml uv.lock README.md ./
COPY configs ./configs
COPY src ./src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-default-groups --extra train

ENTRYPOINT ["python", "-m", "arxiv_embeddings.train_launcher"]

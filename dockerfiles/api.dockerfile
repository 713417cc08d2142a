# syntax=docker/dockerfile:1.7
# The API image for Cloud Run: ONNX Runtime + OpenVINO + tokenizers + FAISS + FastAPI, no torch (a few hundred MB).
#
#   docker build -f dockerfiles/api.dockerfile -t arxiv-embeddings-api .
#   docker run -p 8080:8080 -v "$PWD/models:/app/models:ro" -v "$PWD/indexes:/app/indexes:ro" arxiv-embeddings-api
#
# Settings come from configs/serve.yaml and the environment (PORT, MODEL_PATH, INDEX_PATH, API_KEY, ...; see
# src/arxiv_embeddings/api/settings.py). Serve an ONNX export (uv run inv export): this image cannot run torch.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app
# --no-default-groups: the project's own dependencies only (the serving set), none of the pipeline or dev groups;
# --extra openvino: OpenVINO for the openvino-* variants an export may pick as the fastest.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --locked --no-default-groups --extra openvino --no-install-project
COPY pyproject.toml uv.lock README.md ./
COPY configs ./configs
COPY src ./src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-default-groups --extra openvino

FROM ${PYTHON_IMAGE}
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin app
WORKDIR /app
COPY --from=build --chown=root:root /app /app
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PORT=8080 \
    LOG_JSON=1 \
    BACKEND=onnx \
    ARXIV_EMBEDDINGS_ROOT=/app
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8080') + '/health', timeout=4)"]
ENTRYPOINT ["python", "-m", "arxiv_embeddings.api"]

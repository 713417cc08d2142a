"""The FastAPI application: :func:`create_app` builds it from :class:`Settings`; its lifespan loads the model.

Routes: ``GET /health``, ``GET /info``, ``POST /embed`` (also text-embeddings-inference's body), ``POST
/v1/embeddings`` and ``GET /v1/models`` (OpenAI-compatible), ``POST /search``, ``GET /metrics`` (Prometheus), ``GET /``
(a search page), ``GET /docs`` (OpenAPI).

Each route is a few lines: it reads its body, calls :class:`~arxiv_embeddings.api.service.Service` (``embed`` or
``search``, which own what a request means) and shapes the answer. A request chooses its task (``task`` of /embed,
``model`` of /v1/embeddings, see :func:`~arxiv_embeddings.api.service.task_of_model`); the
model folder's ``tasks.json`` (:mod:`arxiv_embeddings.backends.tasks`) says which output computes it, and the
micro-batcher batches texts of one output together.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator

from arxiv_embeddings.api.errors import ApiError, error_response, install_error_handlers
from arxiv_embeddings.api.metrics import Metrics
from arxiv_embeddings.api.middleware import ApiKeyMiddleware, BodyLimitMiddleware
from arxiv_embeddings.api.schemas import (
    EmbedRequest,
    EmbedResponse,
    ErrorResponse,
    HealthResponse,
    InfoResponse,
    ModelsResponse,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    SearchRequest,
    SearchResponse,
    as_text,
)
from arxiv_embeddings.api.service import VERSION, LoadEmbedder, Service
from arxiv_embeddings.api.settings import Settings

#: Paths served without an API key: the health probe, and the static search page (it holds no data; it sends the
#: key the user types with each of its calls).
OPEN_PATHS = ("/health", "/")

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": what}
    for status, what in {
        400: "Malformed request (not JSON, bad header).",
        401: "Missing or wrong API key (when the server has one).",
        408: "Request body not complete within serve.body_timeout_s.",
        413: "Request body over serve.max_body_bytes.",
        422: "Invalid request: the message names the field and the fix (`unknown_task` lists the valid tasks).",
        429: "Queue full; retry after the Retry-After header's seconds.",
        503: "Model loading, failed to load, or the server is shutting down.",
    }.items()
}


def _json(obj: Any, status: int = 200) -> Response:
    """A JSON response serialized with the standard library (much faster than FastAPI's encoder for vectors)."""
    body = json.dumps(obj, allow_nan=False, separators=(",", ":")).encode()
    return Response(content=body, status_code=status, media_type="application/json")


def create_app(settings: Settings | None = None, *, load_embedder: LoadEmbedder | None = None) -> FastAPI:
    """The API for ``settings`` (default: :meth:`Settings.load`, i.e. configs + environment).

    Nothing is loaded here: the lifespan starts loading the model (and index) in the background when the server
    starts. ``load_embedder`` replaces :func:`arxiv_embeddings.backends.load_embedder` (same signature), e.g. to
    wrap the real embedder.
    """
    if settings is None:
        settings = Settings.load()
    api_key = settings.resolved_api_key()  # an unreadable key file fails here, before the server starts
    if load_embedder is None:
        from arxiv_embeddings.backends import load_embedder as default_loader

        load_embedder = default_loader
    registry = CollectorRegistry()
    service = Service(settings, load_embedder, Metrics(registry))
    s = settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await asyncio.to_thread(service.stop)

    app = FastAPI(
        title="arxiv-embeddings",
        version=VERSION,
        summary="Embeddings of arXiv titles and abstracts, and nearest-paper search.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.settings = settings
    install_error_handlers(app)

    # ------------------------------------------------------------------------------------------ routes
    # Each route reads its body and shapes its answer; the Service owns what the request means.
    @app.get(
        "/health",
        response_model=HealthResponse,
        responses={503: _ERRORS[503]},
        summary="Readiness: 200 with the model's details once it is loaded, 503 before (or after a failed load).",
    )
    async def health() -> Any:
        try:
            service.ready()
        except ApiError as err:
            return error_response(err.status, err.type, err.message, err.headers)
        return service.health()

    @app.get(
        "/v1/models",
        response_model=ModelsResponse,
        responses={401: _ERRORS[401], 503: _ERRORS[503]},
        summary="OpenAI-compatible model list: the served name, then `<served name>:<task>` for each task.",
    )
    async def models() -> Any:
        return service.models()

    @app.get(
        "/info",
        response_model=InfoResponse,
        responses={401: _ERRORS[401], 503: _ERRORS[503]},
        summary="What is served (as text-embeddings-inference's /info): name, dimension, max input tokens, backend.",
    )
    async def info() -> Any:
        return service.info()

    @app.post(
        "/embed",
        response_model=EmbedResponse,
        responses=_ERRORS,
        summary="Embed a text, a paper {title, abstract}, or a list of them (or TEI's body, `inputs`).",
    )
    async def embed(body: EmbedRequest) -> Any:
        tei = body.inputs is not None  # text-embeddings-inference's body: answered in its shape, a bare array
        given = body.inputs if tei else body.input
        assert given is not None  # the request's validator asks for one of the two
        texts = [as_text(i) for i in (given if isinstance(given, list) else [given])]
        out = await service.embed(texts, task=body.task, dimensions=body.dimensions, normalize=body.normalize)
        if tei:
            return _json(out.vectors.tolist())
        return _json(
            {
                "embeddings": out.vectors.tolist(),
                "model": service.served_name,
                "dimension": int(out.vectors.shape[1]),
                "normalized": body.normalize,
                "task": out.task,
                "output": out.output,
            }
        )

    @app.post(
        "/v1/embeddings",
        response_model=OpenAIEmbeddingResponse,
        responses=_ERRORS,
        summary="OpenAI-compatible embeddings (`input`, `model` = the task, `encoding_format`, `dimensions`).",
    )
    async def openai_embeddings(body: OpenAIEmbeddingRequest) -> Any:
        texts = body.input if isinstance(body.input, list) else [body.input]
        out = await service.embed(texts, model=body.model, dimensions=body.dimensions, count_tokens=True)
        if body.encoding_format == "base64":
            rows: list[Any] = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in out.vectors]
        else:
            rows = out.vectors.tolist()
        return _json(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
                "model": service.served_name,
                "usage": {"prompt_tokens": out.tokens, "total_tokens": out.tokens},
            }
        )

    @app.post(
        "/search",
        response_model=SearchResponse,
        responses={**_ERRORS, 404: {"model": ErrorResponse, "description": "No index loaded, or unknown arXiv id."}},
        summary="Nearest papers to a text (or paper), or to an indexed paper given by its arXiv id.",
    )
    async def search(body: SearchRequest) -> Any:
        text = as_text(body.text) if body.arxiv_id is None and body.text is not None else None
        found = await service.search(k=body.k, text=text, arxiv_id=body.arxiv_id)
        return _json(
            {
                "query": found.query,
                "results": [
                    {"arxiv_id": h.arxiv_id, "title": h.title, "primary_subject": h.primary_subject, "score": h.score}
                    for h in found.hits
                ],
                "model": service.served_name,
                "index_size": found.index_size,
            }
        )

    page = files("arxiv_embeddings.api").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def home() -> HTMLResponse:
        return HTMLResponse(page)

    # -------------------------------------------------------------------------------------- middleware
    # Added inside out: the body limit sees only authenticated requests; the metrics count every request.
    app.add_middleware(BodyLimitMiddleware, max_bytes=s.max_body_bytes, timeout_s=s.body_timeout_s)
    if api_key:
        app.add_middleware(ApiKeyMiddleware, key=api_key, open_paths=OPEN_PATHS)
    Instrumentator(registry=registry, excluded_handlers=["/metrics"]).instrument(app).expose(
        app, include_in_schema=False
    )
    return app

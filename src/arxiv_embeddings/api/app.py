"""The FastAPI application: :func:`create_app` builds it from :class:`Settings`; its lifespan loads the model.

Routes: ``GET /health``, ``POST /embed``, ``POST /v1/embeddings`` (OpenAI-compatible), ``POST /search``,
``GET /metrics`` (Prometheus), ``GET /`` (a search page), ``GET /docs`` (OpenAPI).

A request chooses its task (``task`` of /embed, ``model`` of /v1/embeddings, see :func:`task_of_model`); the
model folder's ``tasks.json`` (:mod:`arxiv_embeddings.backends.tasks`) says which output computes it, and the
micro-batcher batches texts of one output together.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator

from arxiv_embeddings.api.batching import BatcherClosedError, QueueFullError
from arxiv_embeddings.api.errors import (
    ApiError,
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    error_response,
    install_error_handlers,
)
from arxiv_embeddings.api.schemas import (
    EmbedRequest,
    EmbedResponse,
    ErrorResponse,
    HealthResponse,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    SearchRequest,
    SearchResponse,
    as_text,
)
from arxiv_embeddings.api.service import VERSION, LoadEmbedder, Metrics, Service, postprocess
from arxiv_embeddings.api.settings import Settings
from arxiv_embeddings.backends.tasks import TaskMap, UnknownTaskError

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

    # ----------------------------------------------------------------------------------------- helpers
    def ready() -> Service:
        if service.status == "ready":
            return service
        retry = {"Retry-After": str(s.retry_after_s)}
        if service.status == "loading":
            raise ApiError(503, "not_ready", "The model is still loading; retry in a few seconds.", retry)
        if service.status == "failed":
            raise ApiError(
                503,
                "model_load_failed",
                f"The model or its index failed to load ({service.error}); fix serve.model_path / MODEL_PATH (or "
                "serve.index_path / INDEX_PATH, as the reason says) and restart.",
            )
        raise ApiError(503, "shutting_down", "The server is shutting down; retry on another instance.", retry)

    def check_texts(texts: Sequence[str], field: str) -> list[str]:
        if len(texts) > s.max_batch:
            raise ApiError(
                422,
                "too_many_texts",
                f"{field} has {len(texts)} texts, over the limit of {s.max_batch} per request (serve.max_batch); "
                "split it into several requests.",
            )
        for i, text in enumerate(texts):
            where = f"{field}.{i}" if len(texts) > 1 or field == "input" else field
            if not text.strip():
                raise ApiError(422, "empty_text", f"{where} is empty or only whitespace; send some text.")
            if len(text) > s.max_chars:
                raise ApiError(
                    422,
                    "text_too_long",
                    f"{where} has {len(text):,} characters, over the limit of {s.max_chars:,} (serve.max_chars); "
                    "shorten it (the model reads only its first few hundred tokens anyway).",
                )
            _check_encodable(text, where)
        return list(texts)

    def check_dimensions(dimensions: int | None, full: int) -> int | None:
        if dimensions is not None and dimensions > full:
            raise ApiError(
                422,
                "invalid_dimensions",
                f"dimensions={dimensions} is larger than the model's {full}; choose 1 to {full}.",
            )
        return dimensions

    def check_task(svc: Service, task: str | None, where: str = "", fix: str = "") -> tuple[str, str]:
        """``(task, output)`` of a request's task (None = the default task); 422 ``unknown_task`` otherwise."""
        assert svc.tasks is not None
        try:
            return svc.tasks.resolve(task)
        except UnknownTaskError as err:
            raise ApiError(422, "unknown_task", f"{where}{err.message}{fix}") from None

    async def encode(svc: Service, texts: list[str], output: str) -> np.ndarray:
        if svc.batcher is None:
            raise ApiError(503, "not_ready", "The model is not loaded.")
        try:
            future = svc.batcher.submit(texts, output)  # batched only with texts of the same output
        except QueueFullError as err:
            svc.metrics.rejected.inc()
            raise ApiError(
                429, "queue_full", f"The server is busy: {err}", {"Retry-After": str(s.retry_after_s)}
            ) from None
        except BatcherClosedError as err:
            raise ApiError(503, "shutting_down", str(err), {"Retry-After": str(s.retry_after_s)}) from None
        return await asyncio.wrap_future(future)

    # ------------------------------------------------------------------------------------------ routes
    @app.get(
        "/health",
        response_model=HealthResponse,
        responses={503: _ERRORS[503]},
        summary="Readiness: 200 with the model's details once it is loaded, 503 before (or after a failed load).",
    )
    async def health() -> Any:
        if service.status != "ready":
            try:
                ready()
            except ApiError as err:
                return error_response(err.status, err.type, err.message, err.headers)
        return service.health()

    @app.post(
        "/embed",
        response_model=EmbedResponse,
        responses=_ERRORS,
        summary="Embed a text, a paper {title, abstract}, or a list of them.",
    )
    async def embed(body: EmbedRequest) -> Any:
        svc = ready()
        task, output = check_task(svc, body.task)
        items = body.input if isinstance(body.input, list) else [body.input]
        texts = check_texts([as_text(i) for i in items], "input")
        dims = check_dimensions(body.dimensions, svc.dimensions[output])
        vectors = postprocess(await encode(svc, texts, output), dims, body.normalize)
        return _json(
            {
                "embeddings": vectors.tolist(),
                "model": svc.model_name,
                "dimension": int(vectors.shape[1]),
                "normalized": body.normalize,
                "task": task,
                "output": output,
            }
        )

    @app.post(
        "/v1/embeddings",
        response_model=OpenAIEmbeddingResponse,
        responses=_ERRORS,
        summary="OpenAI-compatible embeddings (`input`, `model` = the task, `encoding_format`, `dimensions`).",
    )
    async def openai_embeddings(body: OpenAIEmbeddingRequest) -> Any:
        svc = ready()
        assert svc.tasks is not None and svc.model_name is not None
        example = svc.tasks.names[-1]
        fix = f' Send model="{example}" or model="{svc.model_name}:{example}".'
        _, output = check_task(svc, task_of_model(body.model, svc.model_name, svc.tasks), "model: ", fix)
        texts = check_texts(body.input if isinstance(body.input, list) else [body.input], "input")
        dims = check_dimensions(body.dimensions, svc.dimensions[output])
        # Count tokens in a thread while the batcher encodes (usage is informational: 0 without a tokenizer).
        counting = asyncio.create_task(asyncio.to_thread(svc.count_tokens, texts)) if svc.count_tokens else None
        try:
            vectors = postprocess(await encode(svc, texts, output), dims, normalize=True)
        except BaseException:
            if counting is not None:
                counting.cancel()
            raise
        tokens = int(await counting) if counting is not None else 0
        if body.encoding_format == "base64":
            rows: list[Any] = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
        else:
            rows = vectors.tolist()
        return _json(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
                "model": svc.model_name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    @app.post(
        "/search",
        response_model=SearchResponse,
        responses={**_ERRORS, 404: {"model": ErrorResponse, "description": "No index loaded, or unknown arXiv id."}},
        summary="Nearest papers to a text (or paper), or to an indexed paper given by its arXiv id.",
    )
    async def search(body: SearchRequest) -> Any:
        from arxiv_embeddings.index.format import UnknownPaperError

        svc = ready()
        index = svc.index
        if index is None:
            raise ApiError(
                404,
                "search_unavailable",
                "No search index is loaded on this server: build one with 'uv run inv index' (for the served "
                "model), or point INDEX_PATH / serve.index_path at one, and restart.",
            )
        if body.k > s.max_k:
            raise ApiError(422, "invalid_k", f"k={body.k} is over the limit of {s.max_k} (serve.max_k).")
        if body.arxiv_id is not None:
            query = body.arxiv_id.strip()
            _check_encodable(query, "arxiv_id")
            try:
                hits = await asyncio.to_thread(index.search_id, query, body.k)
            except UnknownPaperError as err:
                raise ApiError(404, "unknown_paper", err.message) from None
        else:
            query = check_texts([as_text(body.text)], "text")[0]  # type: ignore[arg-type]
            vector = await encode(svc, [query], svc.search_output)  # the output the index was built with
            hits = (await asyncio.to_thread(index.search, vector, body.k))[0]
        return _json(
            {
                "query": query,
                "results": [
                    {"arxiv_id": h.arxiv_id, "title": h.title, "primary_subject": h.primary_subject, "score": h.score}
                    for h in hits
                ],
                "model": svc.model_name,
                "index_size": len(index),
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


def task_of_model(model: str, served: str, tasks: TaskMap) -> str | None:
    """The task a /v1/embeddings ``model`` names: ``<task>`` itself, or ``<served>:<task>`` (``served`` = the model
    /health reports); None (the default task) for any other name, so that clients which send a fixed model name
    (``text-embedding-3-small``) keep working. ``<served>:<anything>`` returns ``<anything>``, which the caller
    refuses when it is not a task."""
    name = model.strip()
    if name in tasks.tasks:
        return name
    prefix, colon, task = name.rpartition(":")
    if colon and prefix == served:
        return task
    return None


def _check_encodable(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(
            422, "invalid_text", f"{where} holds an unpaired UTF-16 surrogate (e.g. '\\ud800'); send valid Unicode."
        ) from None

"""Embeddings from a hosted, OpenAI-compatible API (``POST {base_url}/embeddings``), cached on disk.

    embedder = HostedEmbedder("https://api.openai.com/v1", "text-embedding-3-small", api_key_env="OPENAI_API_KEY",
                              cache="logs/cache/hosted-embeddings.sqlite")
    vectors = embedder.encode(["A title", "An abstract ..."])     # float32 (n, dim), L2-normalized

The ``hosted_api`` baseline (``baseline.runs=[hosted_api]``, off by default) scores such a model with the evaluation
every other run goes through. The request is ``{"model", "input": [texts], "encoding_format": "float"}`` (plus
``dimensions`` when set); the answer's ``data[i].embedding`` is the vector of ``input[data[i].index]``.

Requests go through the official ``openai`` client, so any OpenAI-compatible server works and its retries are the
SDK's: a 408, 409, 429 or 5xx answer, a timeout or a connection error is retried up to ``max_retries`` times, after
what the server's ``retry-after-ms`` or ``Retry-After`` (seconds or a date) asks, else the SDK's exponential backoff;
another 4xx fails at once with the server's message.

Every vector received is written to a SQLite cache keyed by a hash of (endpoint, model, dimensions, text) as soon as
its request succeeds, so a re-run (after a crash, or with more papers) requests only texts it has not seen, and an
unchanged re-run makes no request at all (and needs no key).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from arxiv_embeddings.backends.tasks import MODEL, check_output
from arxiv_embeddings.config import ConfigError, require_http_url
from arxiv_embeddings.vectors import normalize_rows


class HostedAPIError(RuntimeError):
    """The embedding API refused a request, or its answer is not an embeddings response."""


class EmbeddingCache:
    """float32 vectors by key in a SQLite file (one table; each batch committed at once)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS embeddings (key TEXT PRIMARY KEY, dim INTEGER, vector BLOB)")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            with db:  # commits, or rolls back on an error
                yield db
        finally:
            db.close()

    def get(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        with self._connect() as db:
            for lo in range(0, len(keys), 500):
                chunk = list(keys[lo : lo + 500])
                marks = ",".join("?" * len(chunk))
                for key, dim, blob in db.execute(
                    f"SELECT key, dim, vector FROM embeddings WHERE key IN ({marks})",  # placeholders only
                    chunk,
                ):
                    vector = np.frombuffer(blob, dtype=np.float32)
                    if vector.shape == (dim,):
                        found[key] = vector
        return found

    def put(self, items: dict[str, np.ndarray]) -> None:
        rows = [(k, int(v.shape[0]), np.asarray(v, dtype=np.float32).tobytes()) for k, v in items.items()]
        with self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO embeddings (key, dim, vector) VALUES (?, ?, ?)", rows)

    def __len__(self) -> int:
        with self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])


class HostedEmbedder:
    """Texts -> vectors through an OpenAI-compatible ``/embeddings`` endpoint, with a disk cache.

    Attributes ``requests``, ``texts_requested`` and ``texts_cached`` count this instance's work.
    """

    backend = "hosted"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        cache: str | os.PathLike[str],
        api_key_env: str | None = "OPENAI_API_KEY",
        dimensions: int | None = None,
        batch_size: int = 128,
        max_retries: int = 5,
        timeout_s: float = 60.0,
    ) -> None:
        require_http_url(base_url, "hosted API base_url")
        self.url = base_url.rstrip("/") + "/embeddings"
        self.name = self.variant = model
        self.api_key_env = api_key_env
        self.dimensions = dimensions
        self.batch_size = int(batch_size)
        self.base_url = base_url.rstrip("/")
        self.max_retries, self.timeout_s = int(max_retries), float(timeout_s)
        self.cache = EmbeddingCache(cache)
        self.device = "remote"
        self.dimension = int(dimensions) if dimensions else 0  # learnt from the first answer when not asked for
        self.max_seq_length = 0  # unknown: the server truncates to its model's own limit
        self.requests = self.texts_requested = self.texts_cached = 0

    def key(self, text: str) -> str:
        return hashlib.sha256(json.dumps([self.url, self.name, self.dimensions, text]).encode()).hexdigest()

    def _api_key(self) -> str:
        """The key from ``$api_key_env``; a placeholder for a server without authentication (``api_key_env=None``)."""
        if not self.api_key_env:
            return "none"
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ConfigError(
                f"The hosted embedding API key is read from ${self.api_key_env}, which is not set: export it, or set "
                "api_key_env=null for a server without authentication."
            )
        return key

    def _client(self) -> Any:
        import openai

        return openai.OpenAI(
            base_url=self.base_url, api_key=self._api_key(), max_retries=self.max_retries, timeout=self.timeout_s
        )

    def _post(self, client: Any, batch: list[str]) -> list[np.ndarray]:
        """One request for ``batch``, retried by the SDK; :attr:`requests` counts every attempt."""
        import openai

        extra: dict[str, Any] = {"dimensions": int(self.dimensions)} if self.dimensions else {}
        try:
            raw = client.embeddings.with_raw_response.create(
                model=self.name, input=batch, encoding_format="float", **extra
            )
        except openai.APIStatusError as err:
            retried = err.status_code in (408, 409, 429) or err.status_code >= 500
            self.requests += self.max_retries + 1 if retried else 1
            message = f"HTTP {err.status_code}: {_message(err)}"
            if retried:
                raise HostedAPIError(
                    f"{self.url}: giving up after {self.max_retries + 1} attempts; last error: {message}."
                ) from err
            raise HostedAPIError(
                f"{self.url} answered {err.status_code} for model {self.name!r}: {_message(err)}"
            ) from err
        except openai.APIConnectionError as err:  # timeouts too
            self.requests += self.max_retries + 1
            raise HostedAPIError(
                f"{self.url}: giving up after {self.max_retries + 1} attempts; last error: {type(err).__name__}: {err}."
            ) from err
        self.requests += 1 + int(getattr(raw, "retries_taken", 0))
        return self._parse(raw.parse(), len(batch))

    def _parse(self, response: Any, n: int) -> list[np.ndarray]:
        try:
            vectors: list[np.ndarray | None] = [None] * n
            for item in response.data:
                vectors[int(item.index)] = np.asarray(item.embedding, dtype=np.float32)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
            raise HostedAPIError(f"{self.url}: not an embeddings response ({type(err).__name__}: {err}).") from err
        if any(v is None for v in vectors) or len({v.shape for v in vectors if v is not None}) != 1:
            raise HostedAPIError(f"{self.url}: the answer does not hold one vector of one size per input text.")
        return [v for v in vectors if v is not None]

    def encode(
        self, texts: list[str], batch_size: int | None = None, normalize: bool = True, output: str = MODEL
    ) -> np.ndarray:
        """Vectors of ``texts`` as float32 ``(len(texts), dim)``, from the cache where it has them. A hosted model
        has one output, what the API answers: ``output`` must be ``model``."""
        from tqdm import tqdm

        if output != MODEL:
            check_output(output)  # an unknown name: the message lists the outputs
            raise ValueError(
                f"output={output!r}: the hosted model {self.name!r} has one output, {MODEL!r} (what its API answers); "
                f"{output!r} needs the model's own modules (load it with backend torch or onnx)."
            )

        keys = [self.key(t) for t in texts]
        found = self.cache.get(list(dict.fromkeys(keys)))
        missing = list(dict.fromkeys(t for t, k in zip(texts, keys, strict=True) if k not in found))
        self.texts_cached += len(texts) - sum(1 for k in keys if k not in found)
        if missing:
            size = int(batch_size or self.batch_size)
            with self._client() as client:
                for lo in tqdm(range(0, len(missing), size), desc=f"embedding via {self.name}", unit="request"):
                    batch = missing[lo : lo + size]
                    got = {self.key(t): v for t, v in zip(batch, self._post(client, batch), strict=True)}
                    self.cache.put(got)
                    found.update(got)
                    self.texts_requested += len(batch)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = np.stack([found[k] for k in keys]).astype(np.float32, copy=False)
        self.dimension = int(vectors.shape[1])
        if normalize:
            vectors = normalize_rows(vectors)
        return vectors


def _message(err: Any) -> str:
    """The server's message of an SDK error: ``error.message`` of an OpenAI-style body, else the SDK's own."""
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        error = body.get("error")
        inner: dict[str, Any] = error if isinstance(error, dict) else body
        if inner.get("message"):
            return str(inner["message"])
    return str(getattr(err, "message", err))[:300]

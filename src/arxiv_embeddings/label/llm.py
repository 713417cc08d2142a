"""The LLM teacher's client: retries with back-off (``Retry-After`` honoured), the endpoint's settings, and
:class:`LLMScorer`, which scores candidate pairs concurrently through an OpenAI-compatible endpoint."""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from loguru import logger
from omegaconf import DictConfig
from tqdm import tqdm

from arxiv_embeddings.config import ConfigError
from arxiv_embeddings.label.cache import ScoreCache, cache_key
from arxiv_embeddings.label.candidates import Candidates
from arxiv_embeddings.label.prompts import build_messages, paper_prompt_text, parse_score


class LLMRequestError(ConfigError):
    """The LLM endpoint refused a request in a way retrying cannot fix (bad key, model or URL)."""


RETRY_STATUSES = frozenset({408, 429})  # and every 5xx


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The wait a 429 or 503 response asks for: ``retry-after-ms``, or ``Retry-After`` in seconds or as an HTTP
    date. None when there is none (or it cannot be read)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in lowered:
        try:
            return max(0.0, float(lowered["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass
class LLMSettings:
    """``label.llm`` (see configs/base.yaml)."""

    base_url: str
    model: str
    api_key: str | None
    concurrency: int
    max_retries: int
    backoff_s: float
    max_backoff_s: float
    timeout_s: float
    temperature: float
    max_tokens: int | None
    max_failed_fraction: float
    cache: str

    @classmethod
    def from_config(cls, c: DictConfig) -> LLMSettings:
        key = os.environ.get(str(c.api_key_env)) if c.api_key_env else None
        return cls(
            base_url=str(c.base_url).rstrip("/"),
            model=str(c.model),
            api_key=key,
            concurrency=int(c.concurrency),
            max_retries=int(c.max_retries),
            backoff_s=float(c.backoff_s),
            max_backoff_s=float(c.max_backoff_s),
            timeout_s=float(c.timeout_s),
            temperature=float(c.temperature),
            max_tokens=int(c.max_tokens) if c.max_tokens is not None else None,
            max_failed_fraction=float(c.max_failed_fraction),
            cache=str(c.cache),
        )


@dataclass
class _Outcome:
    score: float | None
    reply: str = ""


@dataclass
class LLMScorer:
    """Scores pairs with a chat model behind an OpenAI-compatible ``/chat/completions`` endpoint (httpx, async).

    At most ``concurrency`` requests are in flight (an :class:`asyncio.Semaphore`). A 429, a 5xx, a 408, a timeout
    or a connection error is retried up to ``max_retries`` times, after the wait the server asks for
    (``Retry-After``) or else an exponential backoff with jitter. Any other error status (a bad key, model or URL)
    stops the run with :class:`LLMRequestError`. Each score is appended to a :class:`ScoreCache` as it arrives; pairs
    already in the cache are not requested again. A pair whose reply holds no usable score (see
    :func:`parse_score`), or that fails after every retry, scores NaN and is not cached.
    """

    settings: LLMSettings
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def description(self) -> str:
        return f"llm ({self.settings.model} at {self.settings.base_url})"

    def score(self, candidates: Candidates) -> np.ndarray:
        a = [
            paper_prompt_text(t, ab)
            for t, ab in zip(candidates.column("title", "a"), candidates.column("abstract", "a"), strict=True)
        ]
        b = [
            paper_prompt_text(t, ab)
            for t, ab in zip(candidates.column("title", "b"), candidates.column("abstract", "b"), strict=True)
        ]
        return self.score_texts(a, b)

    def score_texts(self, papers_a: Sequence[str], papers_b: Sequence[str]) -> np.ndarray:
        """Scores of pairs given as the papers' prompt texts (:func:`paper_prompt_text`)."""
        return asyncio.run(self._score_all(list(papers_a), list(papers_b)))

    async def _score_all(self, papers_a: list[str], papers_b: list[str]) -> np.ndarray:
        import httpx

        s = self.settings
        cache = ScoreCache(s.cache)
        keys = [cache_key(s.model, a, b) for a, b in zip(papers_a, papers_b, strict=True)]
        scores = np.full(len(keys), np.nan, dtype=np.float32)
        todo: dict[str, list[int]] = {}  # each distinct pair is requested once
        for i, key in enumerate(keys):
            if key in cache:
                scores[i] = cache.scores[key]
            else:
                todo.setdefault(key, []).append(i)
        self.stats = {"pairs": len(keys), "cached": len(keys) - sum(map(len, todo.values())), "requests": 0}
        self.stats |= {"retries": 0, "failed": 0, "bad_replies": 0}
        if todo:
            logger.info(
                f"llm: {len(todo):,} pair(s) to request from {s.model} at {s.base_url} "
                f"({self.stats['cached']:,} in the cache {s.cache}), {s.concurrency} at a time."
            )
        headers = {"Authorization": f"Bearer {s.api_key}"} if s.api_key else {}
        semaphore = asyncio.Semaphore(s.concurrency)
        bar = tqdm(total=len(todo), desc="llm scores", unit="pair", disable=not todo)

        async def one(client: httpx.AsyncClient, key: str, rows: list[int]) -> None:
            try:
                i = rows[0]
                outcome = await self._request(client, build_messages(papers_a[i], papers_b[i]))
                if outcome.score is not None:
                    cache.add(key, outcome.score, model=s.model, reply=outcome.reply)
                    scores[rows] = outcome.score
            finally:
                semaphore.release()
                bar.update(1)

        try:
            limits = httpx.Limits(max_connections=s.concurrency, max_keepalive_connections=s.concurrency)
            async with (
                httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(s.timeout_s), limits=limits) as client,
                asyncio.TaskGroup() as group,
            ):
                for key, rows in todo.items():
                    await semaphore.acquire()  # at most `concurrency` requests in flight
                    group.create_task(one(client, key, rows))
        except BaseExceptionGroup as errors:  # a fatal answer stops every request; the first error says why
            raise errors.exceptions[0] from None
        finally:
            bar.close()
            cache.close()
        return scores

    async def _request(self, client: Any, messages: list[dict[str, str]]) -> _Outcome:
        import httpx

        s = self.settings
        url = f"{s.base_url}/chat/completions"
        body: dict[str, Any] = {"model": s.model, "messages": messages, "temperature": s.temperature}
        if s.max_tokens is not None:
            body["max_tokens"] = s.max_tokens
        reason = ""
        for attempt in range(s.max_retries + 1):
            wait: float | None = None
            self.stats["requests"] += 1
            try:
                response = await client.post(url, json=body)
            except httpx.TimeoutException:
                reason = f"no answer within {s.timeout_s:g}s"
            except httpx.TransportError as err:
                reason = f"{type(err).__name__}: {err}"
            else:
                if response.status_code == 200:
                    return self._parse(response)
                if response.status_code in RETRY_STATUSES or response.status_code >= 500:
                    reason = f"HTTP {response.status_code}"
                    wait = retry_after_seconds(response.headers)
                else:
                    raise LLMRequestError(_fatal_message(url, s, response.status_code, response.text))
            if attempt == s.max_retries:
                break
            self.stats["retries"] += 1
            if wait is None:
                wait = s.backoff_s * 2**attempt * random.uniform(0.5, 1.0)
            logger.debug(f"llm: {reason}; retry {attempt + 1}/{s.max_retries} in {wait:.2f}s")
            await asyncio.sleep(min(wait, s.max_backoff_s))
        self.stats["failed"] += 1
        logger.warning(f"llm: a pair failed after {s.max_retries + 1} attempt(s) ({reason}); it stays unscored.")
        return _Outcome(None)

    def _parse(self, response: Any) -> _Outcome:
        try:
            reply = response.json()["choices"][0]["message"]["content"]
            if not isinstance(reply, str):
                raise TypeError(f"content is {reply!r}")
            return _Outcome(parse_score(reply), reply)
        except (ValueError, KeyError, IndexError, TypeError) as err:
            self.stats["bad_replies"] += 1
            logger.warning(f"llm: no score in the answer ({err}); the pair stays unscored.")
            return _Outcome(None)


def _fatal_message(url: str, s: LLMSettings, status: int, text: str) -> str:
    hint = {
        401: "check the API key (label.llm.api_key_env names the environment variable that holds it)",
        403: "check that the API key may use this model",
        404: f"check label.llm.base_url (the part before /chat/completions) and label.llm.model={s.model!r}",
    }.get(status, "check label.llm.model and label.llm.max_tokens against what the server accepts")
    return f"{url} answered HTTP {status}: {' '.join(text.split())[:300]!r}. Not retried: {hint}."

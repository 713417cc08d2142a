"""The LLM teacher's client: the endpoint's settings, and :class:`LLMScorer`, which scores candidate pairs
concurrently through any OpenAI-compatible endpoint with the official ``openai`` client (its retries, which honour
``retry-after-ms`` and ``Retry-After``, and its timeouts), asking for the score as structured output where the server
supports it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
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


#: The structured output asked for: ``{"score": <number>}``. A server that refuses ``response_format`` gets plain
#: requests for the rest of the run, and the reply is read with :func:`parse_score` either way.
SCORE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {
        "name": "relatedness",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"score": {"type": "number"}},
            "required": ["score"],
            "additionalProperties": False,
        },
    },
}


def _retried(status: int) -> bool:
    """Statuses the client retries (408, 409, 429, 5xx)."""
    return status in (408, 409, 429) or status >= 500


@dataclass
class LLMSettings:
    """``label.llm`` (see configs/base.yaml)."""

    base_url: str
    model: str
    api_key: str | None
    concurrency: int
    max_retries: int
    timeout_s: float
    temperature: float
    max_tokens: int | None
    max_failed_fraction: float
    cache: str
    structured: bool = True

    @classmethod
    def from_config(cls, c: DictConfig) -> LLMSettings:
        key = os.environ.get(str(c.api_key_env)) if c.api_key_env else None
        return cls(
            base_url=str(c.base_url).rstrip("/"),
            model=str(c.model),
            api_key=key,
            concurrency=int(c.concurrency),
            max_retries=int(c.max_retries),
            timeout_s=float(c.timeout_s),
            temperature=float(c.temperature),
            max_tokens=int(c.max_tokens) if c.max_tokens is not None else None,
            max_failed_fraction=float(c.max_failed_fraction),
            cache=str(c.cache),
            structured=bool(c.get("structured_output", True)),
        )


@dataclass
class _Outcome:
    score: float | None
    reply: str = ""


@dataclass
class LLMScorer:
    """Scores pairs with a chat model behind an OpenAI-compatible ``/chat/completions`` endpoint (``AsyncOpenAI``).

    At most ``concurrency`` requests are in flight (an :class:`asyncio.Semaphore`). The client retries a 408, 409,
    429 or 5xx, a timeout or a connection error up to ``max_retries`` times, after the wait the server asks for
    (``retry-after-ms``, ``Retry-After``) or else its exponential backoff. Any other error status (a bad key, model or
    URL) stops the run with :class:`LLMRequestError`. Each score is appended to a :class:`ScoreCache` as it arrives; pairs
    already in the cache are not requested again. A pair whose reply holds no usable score (see
    :func:`parse_score`), or that fails after every retry, scores NaN and is not cached.
    """

    settings: LLMSettings
    stats: dict[str, int] = field(default_factory=dict)
    structured: bool | None = None  # whether to ask for structured output; None = settings.structured

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
        import openai

        s = self.settings
        self.structured = s.structured
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
        semaphore = asyncio.Semaphore(s.concurrency)
        bar = tqdm(total=len(todo), desc="llm scores", unit="pair", disable=not todo)

        async def one(client: openai.AsyncOpenAI, key: str, rows: list[int]) -> None:
            try:
                i = rows[0]
                outcome = await self._request(client, build_messages(papers_a[i], papers_b[i]))
                if outcome.score is not None:
                    cache.add(key, outcome.score, model=s.model, reply=outcome.reply)
                    scores[rows] = outcome.score
            finally:
                semaphore.release()
                bar.update(1)

        client = openai.AsyncOpenAI(
            base_url=s.base_url, api_key=s.api_key or "none", max_retries=s.max_retries, timeout=s.timeout_s
        )
        try:
            async with client, asyncio.TaskGroup() as group:
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
        import openai

        s = self.settings
        url = f"{s.base_url}/chat/completions"
        body: dict[str, Any] = {"model": s.model, "messages": messages, "temperature": s.temperature}
        if s.max_tokens is not None:
            body["max_tokens"] = s.max_tokens
        if self.structured:
            body["response_format"] = SCORE_FORMAT
        try:
            raw = await client.chat.completions.with_raw_response.create(**body)
        except openai.APIStatusError as err:
            text = err.response.text
            if not _retried(err.status_code):
                if self.structured and err.status_code in (400, 422) and "response_format" in text:
                    self.structured = False  # the server has no structured output: plain requests from now on
                    self.stats["requests"] += 1
                    logger.info(f"llm: {url} refuses response_format; asking for the score as plain text.")
                    return await self._request(client, messages)
                raise LLMRequestError(_fatal_message(url, s, err.status_code, text)) from None
            return self._failed(f"HTTP {err.status_code}")
        except openai.APITimeoutError:
            return self._failed(f"no answer within {s.timeout_s:g}s")
        except openai.APIConnectionError as err:
            return self._failed(f"{type(err).__name__}: {err}")
        taken = int(getattr(raw, "retries_taken", 0))
        self.stats["requests"] += 1 + taken
        self.stats["retries"] += taken
        return self._parse(raw.parse())

    def _failed(self, reason: str) -> _Outcome:
        """A pair whose every attempt failed (the client retried it ``max_retries`` times): unscored."""
        s = self.settings
        self.stats["requests"] += s.max_retries + 1
        self.stats["retries"] += s.max_retries
        self.stats["failed"] += 1
        logger.warning(f"llm: a pair failed after {s.max_retries + 1} attempt(s) ({reason}); it stays unscored.")
        return _Outcome(None)

    def _parse(self, response: Any) -> _Outcome:
        try:
            reply = response.choices[0].message.content
            if not isinstance(reply, str):
                raise TypeError(f"content is {reply!r}")
            return _Outcome(parse_score(reply), reply)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
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

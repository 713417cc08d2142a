"""label: teacher-scored graded pairs for CoSENT / CosineSimilarityLoss, from a scorer or from a CSV.

    uv run inv label                                                   # candidates scored by subject overlap
    uv run inv label --overrides "label.scorer=llm label.llm.model=gpt-4o-mini"        # key from $OPENAI_API_KEY
    uv run inv label --overrides "label.source=csv label.csv.path=scored_pairs.csv"
    uv run inv train --overrides "train.pairs_from=label loss=cosent"

The stage writes ``graded`` pairs (``sentence1, sentence2, score``, score in [0, 1]) to ``paths.labels_dir`` (the
train stage reads them with ``train.pairs_from=label``; the pairs stage's ``paths.pairs_dir`` is left alone), in the
layout the pairs stage uses: ``train.parquet``, ``eval.parquet``, their
``*_meta.parquet`` twins and ``manifest.json``. Two sources (``label.source``):

- ``papers``: candidate pairs are drawn from the processed train and eval splits (half from the same primary subject
  by default, the rest at random) and scored by the scorer named in ``label.scorer`` (see :data:`SCORERS`):
  ``subject_overlap`` (Jaccard overlap of the papers' subject lists, local and instant), ``cross_encoder`` (a
  sentence-transformers ``CrossEncoder``) or ``llm`` (a chat model behind an OpenAI-compatible HTTP API, asked to
  rate the relatedness of the two papers from 0 to 1; see :class:`LLMScorer`);
- ``csv``: pairs a teacher already scored, e.g. in a labelling notebook: a CSV file with the header
  ``sentence1,sentence2,score`` (see :func:`read_scored_csv`), split into train and eval at random (seeded).

A CSV with bad rows fails as a whole, with every bad row's line number in one error; the previous pairs stay as
they were, as after any failed run (the folder is replaced in one rename).
"""

from __future__ import annotations

import asyncio
import csv
import email.utils
import hashlib
import json
import math
import os
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import hydra
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from loguru import logger
from omegaconf import DictConfig
from tqdm import tqdm

from arxiv_embeddings.config import CONFIG_DIR, ConfigError, check_missing, choose, require, require_in, to_plain
from arxiv_embeddings.data import TEXT_FIELDS, paper_text_array
from arxiv_embeddings.io import artifact_path, atomic_dir, file_sha256, is_remote, read_parquet, write_json
from arxiv_embeddings.pairs import COLUMNS, MANIFEST, PAIR_SPLITS, SAMPLING, SubjectIndex, jaccard, write_pairs
from arxiv_embeddings.stage import StageSpec

PAIR_TYPE = "graded"
CSV_HEADER: tuple[str, ...] = COLUMNS[PAIR_TYPE]  # sentence1, sentence2, score
SOURCES = ("papers", "csv")
PAPER_COLUMNS = ["arxiv_id", "title", "abstract", "primary_subject", "subjects"]


class CsvPairsError(ConfigError):
    """The CSV named by ``label.csv.path`` is not a valid file of scored pairs; the message lists the bad rows."""


class LLMRequestError(ConfigError):
    """The LLM endpoint refused a request in a way retrying cannot fix (bad key, model or URL)."""


class ScoringError(RuntimeError):
    """Too many pairs could not be scored."""


# ------------------------------------------------------------------------------------------------ CSV import
def _csv_row_problems(row: list[str]) -> list[str]:
    problems = []
    if len(row) < len(CSV_HEADER):
        return [f"missing field(s): {len(row)} of {len(CSV_HEADER)} ({', '.join(CSV_HEADER)})"]
    if len(row) > len(CSV_HEADER):
        return [f"{len(row)} fields, expected {len(CSV_HEADER)} (quote texts that contain commas)"]
    for name, value in zip(CSV_HEADER[:2], row[:2], strict=True):
        if not value.strip():
            problems.append(f"empty {name}")
    raw = row[2].strip()
    try:
        score = float(raw)
    except ValueError:
        problems.append(f"score {raw!r} is not a number")
    else:
        if not math.isfinite(score):
            problems.append(f"score {raw!r} is not a finite number")
        elif not 0.0 <= score <= 1.0:
            problems.append(f"score {raw} is outside [0, 1] (rescale the teacher's scale to it, e.g. divide 0-5 by 5)")
    return problems


def read_scored_csv(path: str | Path, max_errors_shown: int = 20) -> pa.Table:
    """Read and check a CSV of teacher-scored pairs: the header ``sentence1,sentence2,score``, then one pair per
    record (texts may hold commas and newlines inside double quotes; blank lines are skipped).

    Returns a table ``sentence1, sentence2, score`` (float32) plus ``line``, the line each record starts on. Every
    bad record (a missing or extra field, an empty text, a score that is not a number in [0, 1]) is collected; if
    there is any, :class:`CsvPairsError` lists their line numbers (the first ``max_errors_shown``) and the count.
    """
    path = Path(path)
    errors: list[str] = []
    s1: list[str] = []
    s2: list[str] = []
    scores: list[float] = []
    lines: list[int] = []
    records = 0
    with open(path, newline="", encoding="utf-8-sig") as fh:  # utf-8-sig: a byte-order mark is not part of the header
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
            if header is None:
                raise CsvPairsError(f"{path} is empty; expected the header line {','.join(CSV_HEADER)}.")
            if [h.strip().lower() for h in header] != list(CSV_HEADER):
                raise CsvPairsError(
                    f"{path}, line 1: the header is {','.join(header)!r}; expected {','.join(CSV_HEADER)!r} "
                    "(sentence1 and sentence2 the two texts, score their relatedness in [0, 1])."
                )
            start = reader.line_num + 1
            for row in reader:
                line, start = start, reader.line_num + 1
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # a blank line
                records += 1
                problems = _csv_row_problems(row)
                if problems:
                    span = f"lines {line}-{reader.line_num}" if reader.line_num > line else f"line {line}"
                    errors.append(f"{span}: {'; '.join(problems)}")
                    continue
                s1.append(row[0])
                s2.append(row[1])
                scores.append(float(row[2]))
                lines.append(line)
        except csv.Error as err:
            errors.append(f"line {reader.line_num}: {err} (the rest of the file was not read)")
        except UnicodeDecodeError as err:
            errors.append(f"after line {reader.line_num}: not UTF-8 text ({err.reason}); save the file as UTF-8")
    if errors:
        shown = "\n".join(f"  {e}" for e in errors[:max_errors_shown])
        more = f"\n  ... and {len(errors) - max_errors_shown} more" if len(errors) > max_errors_shown else ""
        raise CsvPairsError(
            f"{path}: {len(errors)} bad row(s) of {records}; nothing was written:\n{shown}{more}\n"
            f"Fix them and run again (header {','.join(CSV_HEADER)}; a score is a number in [0, 1])."
        )
    if not scores:
        raise CsvPairsError(f"{path} has a header but no pairs; add rows of {','.join(CSV_HEADER)}.")
    return pa.table(
        {
            "sentence1": pa.array(s1, pa.string()),
            "sentence2": pa.array(s2, pa.string()),
            "score": pa.array(scores, pa.float32()),
            "line": pa.array(lines, pa.int64()),
        }
    )


def _csv_splits(cfg: DictConfig) -> tuple[dict[str, tuple[pa.Table, pa.Table]], dict[str, Any]]:
    c = cfg.label.csv
    path = Path(str(c.path))
    table = read_scored_csv(path, int(c.max_errors_shown))
    n = table.num_rows
    n_eval = min(round(n * float(c.eval_fraction)), n - 1)
    perm = np.random.default_rng(int(cfg.seed)).permutation(n)
    rows = {"train": np.sort(perm[n_eval:]), "eval": np.sort(perm[:n_eval])}
    splits = {}
    for split, idx in rows.items():
        if len(idx) == 0:
            continue
        part = table.take(pa.array(idx))
        # The CSV says nothing of the papers' subjects: an empty subject puts every pair in one group, so the
        # subject batch sampler makes plain shuffled batches (CoSENT and cosine losses use no in-batch negatives).
        empty = pa.array([""] * len(idx), pa.string())
        meta = pa.table({"line": part.column("line"), "a_subject": empty, "b_subject": empty})
        splits[split] = (part.select(list(CSV_HEADER)), meta)
    return splits, {"source": "csv", "csv": str(path), "csv_sha256": file_sha256(path)}


# ------------------------------------------------------------------------------------------ candidate pairs
@dataclass
class Candidates:
    """Pairs of papers to score: rows ``left[k]`` and ``right[k]`` of ``papers`` (``arxiv_id, title, abstract,
    primary_subject, subjects``), and the text of a paper in the pairs written (``title | abstract |
    title_abstract``)."""

    papers: pa.Table
    left: np.ndarray
    right: np.ndarray
    text: str = "title_abstract"

    def __len__(self) -> int:
        return len(self.left)

    def text_values(self) -> pa.Array:
        values = pc.cast(paper_text_array(self.papers, self.text), pa.large_string())
        return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values

    def texts(self) -> tuple[list[str], list[str]]:
        """The two texts of every pair, as Python strings."""
        values = self.text_values()
        return values.take(pa.array(self.left)).to_pylist(), values.take(pa.array(self.right)).to_pylist()

    def column(self, name: str, side: str) -> list[Any]:
        rows = self.left if side == "a" else self.right
        return self.papers.column(name).take(pa.array(rows)).to_pylist()


def sample_candidates(
    papers: pa.Table, n: int, rng: np.random.Generator, same_subject_fraction: float, sampling: str, text: str
) -> Candidates:
    """``n`` pairs of two different papers: ``same_subject_fraction`` of them of one primary subject (subjects
    drawn per ``sampling``, as in the pairs stage), the rest at random, in shuffled order."""
    total = papers.num_rows
    if total < 2:
        raise ConfigError(f"Candidate pairs need at least 2 papers in the split; it has {total}.")
    n_same = round(n * same_subject_fraction)
    if n_same:
        sa, sb = SubjectIndex.from_table(papers).same_subject(n_same, rng, sampling)
    else:
        sa = sb = np.empty(0, np.int64)
    ra = rng.integers(0, total, n - n_same)
    rb = (ra + 1 + rng.integers(0, total - 1, n - n_same)) % total  # a different paper
    perm = rng.permutation(n)
    return Candidates(papers, np.r_[sa, ra][perm], np.r_[sb, rb][perm], text)


# -------------------------------------------------------------------------------------------------- scorers
class Scorer(Protocol):
    """Scores candidate pairs: one float in [0, 1] per pair, NaN for a pair it could not score."""

    stats: dict[str, int]

    @property
    def description(self) -> str: ...

    def score(self, candidates: Candidates) -> np.ndarray: ...


class SubjectOverlapScorer:
    """Jaccard overlap of the two papers' ``subjects`` lists (what ``pairs=graded`` uses), vectorized."""

    description = "subject_overlap"

    def __init__(self, cfg: DictConfig) -> None:
        self.stats: dict[str, int] = {}

    def score(self, candidates: Candidates) -> np.ndarray:
        return jaccard(candidates.papers.column("subjects"), candidates.left, candidates.right)


class CrossEncoderScorer:
    """A sentence-transformers ``CrossEncoder`` reading both texts at once. A one-label model's logit goes through
    a sigmoid, so scores are in [0, 1] for STS-style models (whose own activation is a sigmoid) and for
    ranking models (which return raw logits) alike."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg.label.cross_encoder
        self.description = f"cross_encoder ({self.cfg.model})"
        self.stats: dict[str, int] = {}

    def _load(self) -> Any:
        from sentence_transformers import CrossEncoder

        from arxiv_embeddings.backends.loading import default_device

        name = str(self.cfg.model)
        max_length = int(self.cfg.max_length) if self.cfg.max_length else None
        device = str(self.cfg.device) if self.cfg.device else default_device()
        try:
            model = CrossEncoder(name, device=device, max_length=max_length)
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"label.cross_encoder.model={name!r} could not be loaded ({str(err).splitlines()[0]}). Give a "
                "CrossEncoder folder, or a Hub name such as cross-encoder/stsb-roberta-base on a machine that can "
                "reach the Hugging Face Hub (or has it in its cache)."
            ) from None
        if model.num_labels != 1:
            raise ConfigError(
                f"label.cross_encoder.model={name!r} has {model.num_labels} output labels; a scorer needs a model with "
                "one relevance score (num_labels=1), such as an STS or ranking cross-encoder."
            )
        return model

    def score(self, candidates: Candidates) -> np.ndarray:
        import torch

        model = self._load()
        left, right = candidates.texts()
        scores = model.predict(
            list(zip(left, right, strict=True)),
            batch_size=int(self.cfg.batch_size),
            show_progress_bar=True,
            activation_fn=torch.nn.Sigmoid(),
            convert_to_numpy=True,
        )
        return np.asarray(scores, dtype=np.float32).reshape(-1)


# ------------------------------------------------------------------------------------------------ LLM scorer
PROMPT_VERSION = "relatedness-v1"
SYSTEM_PROMPT = "You are an expert reviewer of scientific papers. You judge how closely two papers are related."
USER_PROMPT = """Rate how related the research topics of these two arXiv papers are, from 0 to 1:
0 = unrelated fields, 0.5 = the same broad field but different problems, 1 = the same specific topic.
Answer with the number only.

Paper A
{paper_a}

Paper B
{paper_b}"""
RETRY_STATUSES = frozenset({408, 429})  # and every 5xx
_NUMBER = r"(-?\d+(?:\.\d+)?|-?\.\d+)"
_SCORE = re.compile(_NUMBER + r"\s*(?:(%)|/\s*" + _NUMBER + r")?")
_LABELLED = re.compile(r"(?:score|rating|relatedness)\W{0,3}\s*" + _NUMBER + r"\s*(?:(%)|/\s*" + _NUMBER + r")?", re.I)
_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)


def paper_prompt_text(title: str, abstract: str) -> str:
    """How one paper appears in the prompt (and in the cache key)."""
    return f"Title: {' '.join(title.split())}\nAbstract: {' '.join(abstract.split())}"


def build_messages(paper_a: str, paper_b: str) -> list[dict[str, str]]:
    """The chat messages asking for the relatedness of two papers (:data:`PROMPT_VERSION`)."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": USER_PROMPT.format(paper_a=paper_a, paper_b=paper_b)},
    ]


def cache_key(model: str, paper_a: str, paper_b: str) -> str:
    """sha256 of the prompt version, the model and the two papers' prompt texts."""
    return hashlib.sha256(json.dumps([PROMPT_VERSION, model, paper_a, paper_b]).encode()).hexdigest()


def _scaled(number: str, percent: str | None, scale: str | None) -> float:
    value = float(number)
    if percent:
        return value / 100
    if scale:
        denominator = float(scale)
        if denominator <= 0:
            raise ValueError(f"a score out of {scale}")
        return value / denominator
    return value


def parse_score(reply: str) -> float:
    """The relatedness score in a model's reply, in [0, 1]: a bare number (``0.7``), a labelled one (``Score:
    0.7``, ``{"score": 0.7}``), a fraction (``7/10``) or a percentage (``70%``), after any ``<think>`` block.
    Raises ValueError for a reply with no such number, an ambiguous one, or a value outside [0, 1]."""
    text = _THINK.sub("", reply).strip().strip("`*\"' ")
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            for key in ("score", "relatedness", "rating"):
                if isinstance(obj.get(key), int | float) and not isinstance(obj.get(key), bool):
                    return _in_unit_range(float(obj[key]), reply)
    labelled = _LABELLED.search(text)
    first = _SCORE.match(text)
    if labelled:
        value = _scaled(*labelled.groups())
    elif first:  # the reply starts with the number
        value = _scaled(*first.groups())
    else:
        found = _SCORE.findall(text)
        if len(found) != 1:
            what = "no number" if not found else f"{len(found)} numbers and none labelled as the score"
            raise ValueError(f"{what} in the reply {reply[:200]!r}")
        value = _scaled(*found[0])
    return _in_unit_range(value, reply)


def _in_unit_range(value: float, reply: str) -> float:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"the score {value} in the reply {reply[:200]!r} is outside [0, 1]")
    return value


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


class ScoreCache:
    """Append-only JSONL of scores received (``{"key", "score", "model", "reply"}`` per line), flushed after each
    one, so the scores of a run that crashes are kept. A line that does not parse (the torn last line of a crashed
    write) is ignored; the next record starts on a fresh line."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.scores: dict[str, float] = {}
        self.ignored_lines = 0
        self._fh: Any = None
        if self.path.exists():
            with open(self.path, "rb") as fh:
                for raw in fh:
                    try:
                        record = json.loads(raw)
                        score = float(record["score"])
                        key = str(record["key"])
                    except (ValueError, KeyError, TypeError):
                        self.ignored_lines += 1
                        continue
                    self.scores[key] = score
        if self.ignored_lines:
            logger.warning(f"{self.path}: {self.ignored_lines} unreadable line(s) ignored (a crash mid-write).")

    def __contains__(self, key: str) -> bool:
        return key in self.scores

    def __len__(self) -> int:
        return len(self.scores)

    def add(self, key: str, score: float, **extra: Any) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a+b")  # noqa: SIM115 - kept open for the run, closed by close()
            if self._fh.tell() > 0:
                self._fh.seek(-1, os.SEEK_END)
                if self._fh.read(1) != b"\n":
                    self._fh.write(b"\n")  # end a torn last line, so it stays one ignored line
        self._fh.write((json.dumps({"key": key, "score": score, **extra}) + "\n").encode())
        self._fh.flush()
        self.scores[key] = score

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


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


def _llm_scorer(cfg: DictConfig) -> LLMScorer:
    return LLMScorer(LLMSettings.from_config(cfg.label.llm))


SCORERS: dict[str, Callable[[DictConfig], Scorer]] = {
    "subject_overlap": SubjectOverlapScorer,
    "cross_encoder": CrossEncoderScorer,
    "llm": _llm_scorer,
}


def build_scorer(cfg: DictConfig) -> Scorer:
    """The scorer named by ``label.scorer`` (see :data:`SCORERS`)."""
    return choose("label.scorer", str(cfg.label.scorer), SCORERS)(cfg)


def _paper_splits(cfg: DictConfig) -> tuple[dict[str, tuple[pa.Table, pa.Table]], dict[str, Any]]:
    from arxiv_embeddings.layout import split_path

    lab, cand = cfg.label, cfg.label.candidates
    scorer = build_scorer(cfg)
    splits: dict[str, tuple[pa.Table, pa.Table]] = {}
    stats: dict[str, Any] = {}
    for i, (split, key) in enumerate(PAIR_SPLITS.items()):
        n = int(cand[key])
        if n <= 0:
            continue
        papers = read_parquet(split_path(cfg, split), columns=PAPER_COLUMNS)
        rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), i]))
        candidates = sample_candidates(
            papers, n, rng, float(cand.same_subject_fraction), str(cand.sampling), str(lab.text)
        )
        scores = np.asarray(scorer.score(candidates), dtype=np.float32)
        failed = np.isnan(scores)
        limit = float(lab.llm.max_failed_fraction) if lab.scorer == "llm" else 0.0
        if failed.mean() > limit:
            raise ScoringError(
                f"{int(failed.sum()):,} of {n:,} {split} pairs could not be scored by {scorer.description} (more "
                f"than label.llm.max_failed_fraction={limit:g}); see the warnings above. Scores received are kept in "
                "the cache, so a re-run requests only the missing pairs."
            )
        if failed.any():
            logger.warning(f"{split}: {int(failed.sum()):,} unscored pair(s) left out.")
        keep = ~failed
        left, right = candidates.left[keep], candidates.right[keep]
        values = candidates.text_values()
        table = pa.table(
            {
                "sentence1": pa.DictionaryArray.from_arrays(pa.array(left.astype(np.int32)), values),
                "sentence2": pa.DictionaryArray.from_arrays(pa.array(right.astype(np.int32)), values),
                "score": pa.array(scores[keep], pa.float32()),
            }
        )
        ids, subjects = papers.column("arxiv_id"), papers.column("primary_subject")
        meta = pa.table(
            {
                "a_id": pc.take(ids, pa.array(left)),
                "a_subject": pc.take(subjects, pa.array(left)),
                "b_id": pc.take(ids, pa.array(right)),
                "b_subject": pc.take(subjects, pa.array(right)),
            }
        )
        splits[split] = (table, meta)
        stats[split] = {k: v for k, v in scorer.stats.items() if v}
        logger.info(f"{split}: {table.num_rows:,} pairs scored by {scorer.description}, mean {np.nanmean(scores):.3f}.")
    return splits, {"source": "papers", "scorer": scorer.description, "scorer_stats": stats}


# --------------------------------------------------------------------------------------------- the stage
def validate(cfg: DictConfig) -> None:
    check_missing(cfg)
    lab = cfg.label
    require_in("label.source", lab.source, SOURCES)
    require_in("label.text", lab.text, TEXT_FIELDS)
    if lab.source == "csv":
        require(
            lab.csv.path is not None, "label.csv.path", "set it to the CSV of scored pairs, e.g. label.csv.path=x.csv."
        )
        require(
            0 <= float(lab.csv.eval_fraction) < 1,
            "label.csv.eval_fraction",
            f"got {lab.csv.eval_fraction}; must be in [0, 1).",
        )
        if not Path(str(lab.csv.path)).is_file():
            raise FileNotFoundError(f"label.csv.path={lab.csv.path}: no such file.")
        return
    cand = lab.candidates
    require(int(cand.num_train) > 0, "label.candidates.num_train", f"got {cand.num_train}; must be positive.")
    require(int(cand.num_eval) >= 0, "label.candidates.num_eval", f"got {cand.num_eval}; must be >= 0.")
    require(
        0 <= float(cand.same_subject_fraction) <= 1,
        "label.candidates.same_subject_fraction",
        f"got {cand.same_subject_fraction}; must be in [0, 1].",
    )
    require_in("label.candidates.sampling", cand.sampling, SAMPLING)
    choose("label.scorer", str(lab.scorer), SCORERS)
    if lab.scorer == "cross_encoder":
        require(
            lab.cross_encoder.model is not None,
            "label.cross_encoder.model",
            "set it to a CrossEncoder folder or Hub name, e.g. label.cross_encoder.model=cross-encoder/stsb-roberta-base.",
        )
    if lab.scorer == "llm":
        _validate_llm(lab.llm)


def _validate_llm(c: DictConfig) -> None:
    require(
        str(c.base_url).startswith(("http://", "https://")),
        "label.llm.base_url",
        f"got {c.base_url!r}; give the API's base URL, e.g. https://api.openai.com/v1.",
    )
    if c.api_key_env and not os.environ.get(str(c.api_key_env)):
        raise ConfigError(
            f"label.llm.api_key_env: the environment variable {c.api_key_env} is not set. Export the API key in it, "
            "or set label.llm.api_key_env=null for a server that needs no key."
        )
    require(int(c.concurrency) >= 1, "label.llm.concurrency", f"got {c.concurrency}; must be >= 1.")
    require(int(c.max_retries) >= 0, "label.llm.max_retries", f"got {c.max_retries}; must be >= 0.")
    require(float(c.timeout_s) > 0, "label.llm.timeout_s", f"got {c.timeout_s}; must be > 0.")
    require(
        0 <= float(c.max_failed_fraction) < 1,
        "label.llm.max_failed_fraction",
        f"got {c.max_failed_fraction}; must be in [0, 1).",
    )
    require(
        not is_remote(str(c.cache)),
        "label.llm.cache",
        f"{c.cache} is in a bucket; the cache is appended to after every score, so it must be a local file.",
    )


def _write(cfg: DictConfig, splits: dict[str, tuple[pa.Table, pa.Table]], info: dict[str, Any]) -> Path:
    out_dir = artifact_path(cfg.paths.labels_dir)
    files: dict[str, dict[str, Any]] = {}
    with atomic_dir(out_dir) as tmp:
        for split, (table, meta) in splits.items():
            write_pairs(meta, tmp / f"{split}_meta.parquet")
            files[split] = {
                "file": f"{split}.parquet",
                "meta": f"{split}_meta.parquet",
                "rows": table.num_rows,
                "sha256": file_sha256(write_pairs(table, tmp / f"{split}.parquet")),
            }
        manifest = {
            "stage": "label",
            "type": PAIR_TYPE,
            "columns": list(CSV_HEADER),
            # The train stage reads config.text: the kind of paper text its evaluators use.
            "config": to_plain(cfg.label),
            "seed": cfg.seed,
            **info,
            "files": files,
        }
        write_json(tmp / MANIFEST, manifest)
    return out_dir


def run(cfg: DictConfig) -> dict[str, Any]:
    """Score candidate pairs (or import a CSV of scored pairs) and write them as graded pairs; returns the output
    folder, the pair counts and, for a scorer, its statistics."""
    validate(cfg)
    started = time.perf_counter()
    splits, info = _csv_splits(cfg) if cfg.label.source == "csv" else _paper_splits(cfg)
    out_dir = _write(cfg, splits, info)
    counts = {split: table.num_rows for split, (table, _) in splits.items()}
    scores = np.concatenate([table.column("score").to_numpy() for table, _ in splits.values()])
    origin = f"from {info['csv']}" if info["source"] == "csv" else f"scored by {info['scorer']}"
    totals: dict[str, int] = {}
    for split_stats in info.get("scorer_stats", {}).values():
        for k, v in split_stats.items():
            totals[k] = totals.get(k, 0) + v
    calls = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in totals.items())
    logger.success(
        f"label: {', '.join(f'{k} {v:,}' for k, v in counts.items())} graded pairs {origin} "
        f"(score mean {scores.mean():.3f}, {np.mean(scores >= 0.5):.0%} >= 0.5{'; ' + calls if calls else ''}) "
        f"written to {out_dir} in {time.perf_counter() - started:.1f}s."
    )
    return {"dir": out_dir, "type": PAIR_TYPE, "counts": counts, **info}


def _inputs(cfg: DictConfig) -> list[Path]:
    if cfg.label.source == "csv":
        return [Path(str(cfg.label.csv.path))]
    return [artifact_path(cfg.paths.processed_dir) / f"{s}.parquet" for s in PAIR_SPLITS]


SPEC = StageSpec(
    name="label",
    run=run,
    inputs=_inputs,
    outputs=lambda cfg: sorted(
        (p for p in artifact_path(cfg.paths.labels_dir).glob("*") if not p.name.startswith(".")), key=str
    ),
    stamp_dir=lambda cfg: artifact_path(cfg.paths.labels_dir),
    validate=validate,
    config_keys=("label", "seed"),
)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="label")
def main(cfg: DictConfig) -> None:
    from arxiv_embeddings.stage import cli_main

    cli_main(SPEC, cfg)


if __name__ == "__main__":
    main()

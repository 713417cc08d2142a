"""label: CSV import of teacher-scored pairs, the scorers (the LLM one against a local OpenAI-compatible server with
rate limits, errors and timeouts), its resumable cache, and training on the pairs written."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers.http_client import send_json
from helpers.train import FAST

from arxiv_embeddings import pairs
from arxiv_embeddings.config import ConfigError, compose
from arxiv_embeddings.io import read_json, tree_sha256
from arxiv_embeddings.label import stage as label_stage
from arxiv_embeddings.label.cache import ScoreCache
from arxiv_embeddings.label.csv_import import CsvPairsError, read_scored_csv
from arxiv_embeddings.label.llm import LLMRequestError, LLMScorer
from arxiv_embeddings.label.prompts import paper_prompt_text, parse_score
from arxiv_embeddings.label.scorers import build_scorer
from arxiv_embeddings.runner import execute
from arxiv_embeddings.train import stage as train_stage

REPO = Path(__file__).resolve().parents[2]


def _cfg(root: Path, *overrides: str):
    return compose("label", [f"paths.root_dir={root}", *overrides])


def _write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _pairs(root: Path, split: str) -> pa.Table:
    return pq.read_table(root / "data" / "labelled-pairs" / f"{split}.parquet")


# ------------------------------------------------------------------------------------------------ CSV import
GOOD_CSV = (
    "sentence1,sentence2,score\n"
    "Black holes in dwarf galaxies,Dark matter halos of dwarf galaxies,0.8\n"
    '"Graph neural networks, a survey","Message passing on graphs",0.9\n'
    '"A title\nwith its abstract on a second line","Quantum error correction with ""surface"" codes",0.05\n'
    "Élasticité non linéaire,Nonlinear elasticity,1\n"
    "\n"
    "Protein folding,Stock market volatility,0\n"
    "Lattice QCD at finite density,Sign problem in lattice QCD,.75\n"
    "Robot grasping,Dexterous manipulation,0.6\n"
    "Topic models,Latent Dirichlet allocation,0.7\n"
)
GOOD_LINES = [2, 3, 4, 6, 8, 9, 10, 11]  # the line each record starts on (record 3 spans lines 4-5; 7 is blank)


def test_good_csv_round_trips_into_graded_pairs(tmp_path: Path) -> None:
    import csv

    path = _write_csv(tmp_path / "scored.csv", GOOD_CSV)
    cfg = _cfg(tmp_path, "label.source=csv", f"label.csv.path={path}", "label.csv.eval_fraction=0.25")
    result = execute(label_stage.SPEC, cfg)
    assert result is not None and result["counts"] == {"train": 6, "eval": 2}

    with open(path, newline="", encoding="utf-8") as fh:
        expected = {(r["sentence1"], r["sentence2"], float(np.float32(r["score"]))) for r in csv.DictReader(fh)}
    rows, lines = set(), []
    for split in ("train", "eval"):
        table = _pairs(tmp_path, split)
        assert table.column_names == ["sentence1", "sentence2", "score"]
        assert table.schema.field("score").type == pa.float32()
        rows |= set(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))
        meta = pq.read_table(tmp_path / "data" / "labelled-pairs" / f"{split}_meta.parquet")
        assert meta.num_rows == table.num_rows
        lines += meta.column("line").to_pylist()
    assert rows == expected and len(expected) == 8
    assert sorted(lines) == GOOD_LINES

    manifest = read_json(tmp_path / "data" / "labelled-pairs" / "manifest.json")
    assert manifest["type"] == "graded" and manifest["source"] == "csv"
    assert manifest["columns"] == ["sentence1", "sentence2", "score"]
    assert manifest["config"]["text"] == "title_abstract"  # what the train stage reads
    assert manifest["csv_sha256"] == tree_sha256(path)
    assert execute(label_stage.SPEC, cfg) is None  # unchanged file and config: skipped


def test_bad_csv_lists_every_bad_row_and_writes_nothing(tmp_path: Path) -> None:
    good = _write_csv(tmp_path / "good.csv", GOOD_CSV)
    label_stage.run(_cfg(tmp_path, "label.source=csv", f"label.csv.path={good}"))
    pairs_dir = tmp_path / "data" / "labelled-pairs"
    before = {p.name: p.read_bytes() for p in pairs_dir.iterdir()}

    bad = _write_csv(
        tmp_path / "bad.csv",
        "sentence1,sentence2,score\n"
        "a paper,another paper,0.5\n"  # 2 good
        "only two fields,0.5\n"  # 3 missing field
        "a paper,another paper,0.3\n"  # 4 good
        "a paper,another paper,abc\n"  # 5 not a number
        "a paper,another paper,1.5\n"  # 6 out of range
        "a paper,another paper,-0.1\n"  # 7 out of range
        "a paper,   ,0.5\n"  # 8 empty sentence2
        "a, paper,another paper,0.5\n"  # 9 extra field
        '"a paper\nover two lines",another,0.4\n'  # 10-11 good
        "a paper,another paper,nan\n"  # 12 not finite
        ",,\n",  # 13 empty texts and score
    )
    with pytest.raises(CsvPairsError) as err:
        label_stage.run(_cfg(tmp_path, "label.source=csv", f"label.csv.path={bad}"))
    message = str(err.value)
    assert "8 bad row(s) of 11; nothing was written" in message
    for line in (3, 5, 6, 7, 8, 9, 12, 13):
        assert re.search(rf"^  line {line}: ", message, re.M), (line, message)
    for line in (2, 4, 10, 11):
        assert not re.search(rf"^  lines? {line}\b", message, re.M), (line, message)
    assert "missing field" in message and "'abc' is not a number" in message and "outside [0, 1]" in message
    assert "empty sentence2" in message and "4 fields" in message and "'nan' is not a finite number" in message

    # The previous pairs are untouched and no temporary folder is left behind.
    assert {p.name: p.read_bytes() for p in pairs_dir.iterdir()} == before
    assert sorted(p.name for p in pairs_dir.parent.iterdir()) == ["labelled-pairs"]


def test_csv_header_and_error_cap(tmp_path: Path) -> None:
    wrong = _write_csv(tmp_path / "wrong.csv", "text_a,text_b,label\na,b,1\n")
    with pytest.raises(CsvPairsError, match=r"line 1: the header is 'text_a,text_b,label'"):
        read_scored_csv(wrong)
    with pytest.raises(CsvPairsError, match="is empty"):
        read_scored_csv(_write_csv(tmp_path / "empty.csv", ""))
    with pytest.raises(CsvPairsError, match="no pairs"):
        read_scored_csv(_write_csv(tmp_path / "header.csv", "sentence1,sentence2,score\n"))
    many = _write_csv(tmp_path / "many.csv", "sentence1,sentence2,score\n" + "a,b,2\n" * 25 + "a,b,1\n")
    with pytest.raises(CsvPairsError) as err:
        read_scored_csv(many, max_errors_shown=20)
    message = str(err.value)
    assert "25 bad row(s) of 26" in message and "... and 5 more" in message
    assert message.count("is outside [0, 1]") == 20 and "line 21:" in message and "line 22:" not in message


@pytest.mark.slow
def test_label_cli_exits_nonzero_on_a_bad_csv(tmp_path: Path) -> None:
    bad = _write_csv(tmp_path / "bad.csv", "sentence1,sentence2,score\na,b,x\n")
    csv_overrides = ["label.source=csv", f"label.csv.path={bad}"]
    proc = subprocess.run(
        [sys.executable, "-m", "arxiv_embeddings.label", f"paths.root_dir={tmp_path}", *csv_overrides],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "line 2: score 'x' is not a number" in proc.stderr
    assert not (tmp_path / "data" / "labelled-pairs").exists()


# ----------------------------------------------------------------------------------------- config and parsing
def test_train_reads_the_label_stage_pairs_only_when_told(tmp_path: Path) -> None:
    cfg = compose("train", [f"paths.root_dir={tmp_path}", "train.pairs_from=label"])
    with pytest.raises(FileNotFoundError, match=r"labelled-pairs/train.parquet; run 'uv run inv label' first"):
        train_stage.run(cfg)
    with pytest.raises(ConfigError, match=r"train.pairs_from"):
        train_stage.validate(compose("train", [f"paths.root_dir={tmp_path}", "train.pairs_from=teacher"]))


def test_unknown_scorer_and_missing_settings_are_config_errors(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match="cross_encoder, llm, subject_overlap"):
        label_stage.validate(_cfg(tmp_path, "label.scorer=gpt"))
    with pytest.raises(ConfigError, match=r"label\.cross_encoder\.model"):
        label_stage.validate(_cfg(tmp_path, "label.scorer=cross_encoder"))
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(ConfigError, match="NO_SUCH_KEY_VAR is not set"):
        label_stage.validate(_cfg(tmp_path, "label.scorer=llm", "label.llm.api_key_env=NO_SUCH_KEY_VAR"))
    with pytest.raises(ConfigError, match=r"label\.csv\.path"):
        label_stage.validate(_cfg(tmp_path, "label.source=csv"))
    with pytest.raises(FileNotFoundError, match=r"missing\.csv"):
        label_stage.validate(_cfg(tmp_path, "label.source=csv", f"label.csv.path={tmp_path / 'missing.csv'}"))


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("0.7", 0.7),
        (" 1 ", 1.0),
        (".25", 0.25),
        ("Score: 0.35", 0.35),
        ("**0.9**", 0.9),
        ('{"score": 0.4}', 0.4),
        ("8/10", 0.8),
        ("70%", 0.7),
        ("0.6\n\nBoth papers study the same problem.", 0.6),
        ("On a scale from 0 to 1, relatedness: 0.55", 0.55),
        ("<think>Is 0.2 right? Maybe 1.</think>0.3", 0.3),
        ("I would say they are related at about 0.45.", 0.45),
    ],
)
def test_parse_score_reads_the_number_in_a_reply(reply: str, score: float) -> None:
    assert parse_score(reply) == pytest.approx(score)


@pytest.mark.parametrize("reply", ["", "related", "7", "1.2", "-0.5", "between 0.2 and 0.4", "0/0"])
def test_parse_score_rejects_replies_without_a_usable_score(reply: str) -> None:
    with pytest.raises(ValueError):
        parse_score(reply)


# ---------------------------------------------------------------------------------- a local OpenAI-compatible API
def pair_score(text_a: str, text_b: str) -> float:
    """The fake server's score of a pair: 'Paper i' vs 'Paper j' -> ((7i + 3j) % 11) / 10, else a hash of the two."""
    a, b = re.match(r"Paper (\d+)$", text_a), re.match(r"Paper (\d+)$", text_b)
    if a and b:
        return ((7 * int(a.group(1)) + 3 * int(b.group(1))) % 11) / 10
    return int(hashlib.sha256(f"{text_a}|{text_b}".encode()).hexdigest(), 16) % 101 / 100


class FakeLLM:
    """An OpenAI-compatible POST /v1/chat/completions on a free local port, in a thread.

    It scores the two papers of the prompt with :func:`pair_score`, in one of four reply formats. ``plan`` maps the
    title of paper A to the answers of its first attempts: ``429`` (with ``Retry-After: 1``), ``500``, ``503``,
    ``timeout`` (answers after 1 s), ``garbage`` (a 200 without a number); later attempts are answered. After
    ``fail_after`` answered pairs, every request gets a 401. Every request is logged.
    """

    def __init__(self) -> None:
        self.plan: dict[str, list[str]] = {}
        self.fail_after: int | None = None
        self.refuse_response_format = False  # answer 400 to a request that asks for structured output
        self.log: list[dict[str, Any]] = []
        self.attempts: dict[str, int] = {}  # prompt -> attempts so far, across runs
        self.answered = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                fake.handle(self, json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # type: ignore[method-assign]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        prompt = body["messages"][-1]["content"]
        titles = re.findall(r"^Title: (.*)$", prompt, re.M)
        if len(titles) != 2:
            return send_json(h, 400, {"error": {"message": "expected two papers in the prompt"}})
        with self.lock:
            self.log.append(
                {
                    "title": titles[0],
                    "prompt": prompt,
                    "time": time.monotonic(),
                    "auth": h.headers.get("Authorization"),
                    "structured": "response_format" in body,
                }
            )
            if self.refuse_response_format and "response_format" in body:
                return send_json(h, 400, {"error": {"message": "response_format is not supported by this server"}})
            attempt = self.attempts[prompt] = self.attempts.get(prompt, -1) + 1
            plan = self.plan.get(titles[0], [])
            action = plan[attempt] if attempt < len(plan) else "answer"
            if action == "answer" and self.fail_after is not None and self.answered >= self.fail_after:
                action = "401"
            if action == "answer":
                self.answered += 1
        if h.path != "/v1/chat/completions":
            return send_json(h, 404, {"error": {"message": "not found"}})
        if action == "timeout":
            time.sleep(1.0)  # the client has given up by then: not counted as in flight
            return send_json(h, 200, {"choices": [{"message": {"content": "0.5"}}]})
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(0.05)  # answers take a moment, so concurrent requests overlap
            self.answer(h, action, titles)
        finally:
            with self.lock:
                self.in_flight -= 1

    def answer(self, h: BaseHTTPRequestHandler, action: str, titles: list[str]) -> None:
        if action == "429":
            return send_json(h, 429, {"error": {"message": "rate limited"}}, {"Retry-After": "1"})
        if action in ("500", "503", "401"):
            return send_json(h, int(action), {"error": {"message": action}})
        score = pair_score(*titles)
        content = "I cannot judge these." if action == "garbage" else self.format(titles[0], score)
        send_json(h, 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})

    @staticmethod
    def format(title: str, score: float) -> str:
        style = sum(map(ord, title)) % 4
        return [f"{score}", f"Score: {score}", json.dumps({"score": score}), f"{score * 10:g}/10"][style]

    def requests_for(self, title: str) -> list[dict[str, Any]]:
        return [r for r in self.log if r["title"] == title]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    server = FakeLLM()
    yield server
    server.close()


def _llm_overrides(server: FakeLLM, cache: Path, *extra: str) -> list[str]:
    """The scorer pointed at the fake server; ``extra`` (key=value) replace these."""
    values = {
        "label.scorer": "llm",
        "label.llm.base_url": server.url,
        "label.llm.model": "fake-judge",
        "label.llm.api_key_env": "null",
        "label.llm.cache": str(cache),
        "label.llm.timeout_s": "0.4",
    }
    values |= dict(e.split("=", 1) for e in extra)
    return [f"{k}={v}" for k, v in values.items()]


def _papers(ids: Iterable[int]) -> list[str]:
    """Papers as the prompt shows them, titled 'Paper <i>'."""
    return [paper_prompt_text(f"Paper {i}", f"The abstract of paper {i}.") for i in ids]


def _scorer(tmp_path: Path, server: FakeLLM, *extra: str) -> LLMScorer:
    cfg = _cfg(tmp_path, *_llm_overrides(server, tmp_path / "cache.jsonl", *extra))
    label_stage.validate(cfg)
    scorer = build_scorer(cfg)
    assert isinstance(scorer, LLMScorer)
    return scorer


def test_llm_scorer_retries_rate_limits_errors_and_timeouts(tmp_path: Path, fake_llm: FakeLLM, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_LLM_KEY", "sk-test")
    fake_llm.plan = {
        "Paper 0": ["429"],
        "Paper 1": ["500", "503"],
        "Paper 2": ["timeout"],
        "Paper 3": ["garbage"],
        "Paper 4": ["500"] * 4,  # every attempt of the first run
    }
    scorer = _scorer(
        tmp_path, fake_llm, "label.llm.api_key_env=FAKE_LLM_KEY", "label.llm.concurrency=3", "label.llm.max_retries=3"
    )
    scores = scorer.score_texts(_papers(range(8)), _papers(range(10, 18)))

    for i in (0, 1, 2, 5, 6, 7):
        assert scores[i] == pytest.approx(pair_score(f"Paper {i}", f"Paper {i + 10}"), abs=1e-6), i
    assert np.isnan(scores[3]) and np.isnan(scores[4])  # no number in the reply; 500 on every attempt
    attempts = {f"Paper {i}": len(fake_llm.requests_for(f"Paper {i}")) for i in range(8)}
    assert attempts == {"Paper 0": 2, "Paper 1": 3, "Paper 2": 2, "Paper 3": 1, "Paper 4": 4} | {
        f"Paper {i}": 1 for i in (5, 6, 7)
    }
    first, second = fake_llm.requests_for("Paper 0")
    assert second["time"] - first["time"] >= 0.95  # waited what Retry-After asked, not the client's 0.5 s backoff
    assert scorer.stats == {
        "pairs": 8,
        "cached": 0,
        "requests": 15,
        "retries": 7,
        "failed": 1,
        "bad_replies": 1,
    }
    assert 1 < fake_llm.max_in_flight <= 3
    assert {r["auth"] for r in fake_llm.log} == {"Bearer sk-test"}

    # Scored pairs are cached; a second run requests only the two unscored ones.
    cache_lines = (tmp_path / "cache.jsonl").read_text().splitlines()
    assert len(cache_lines) == 6
    fake_llm.log.clear()
    again = scorer.score_texts(_papers(range(8)), _papers(range(10, 18)))
    assert sorted(r["title"] for r in fake_llm.log) == ["Paper 3", "Paper 4"]  # both answered this time
    assert not np.isnan(again).any() and scorer.stats["cached"] == 6


def test_llm_scorer_asks_for_structured_output_and_falls_back_to_plain_text(tmp_path: Path, fake_llm: FakeLLM) -> None:
    scorer = _scorer(tmp_path, fake_llm, "label.llm.concurrency=1")
    first = scorer.score_texts(_papers(range(3)), _papers(range(10, 13)))
    assert all(r["structured"] for r in fake_llm.log) and not np.isnan(first).any()
    fake_llm.log.clear()
    fake_llm.refuse_response_format = True
    plain = _scorer(tmp_path, fake_llm, "label.llm.concurrency=1", f"label.llm.cache={tmp_path / 'other.jsonl'}")
    scores = plain.score_texts(_papers(range(3)), _papers(range(10, 13)))
    for i in range(3):
        assert scores[i] == pytest.approx(pair_score(f"Paper {i}", f"Paper {i + 10}"), abs=1e-6)
    # one refused request, then plain requests only
    assert [r["structured"] for r in fake_llm.log] == [True, False, False, False]


def test_llm_scorer_stops_on_a_status_retrying_cannot_fix(tmp_path: Path, fake_llm: FakeLLM) -> None:
    fake_llm.fail_after = 0
    scorer = _scorer(tmp_path, fake_llm, "label.llm.concurrency=2")
    with pytest.raises(LLMRequestError, match=r"HTTP 401.*api_key_env"):
        scorer.score_texts(_papers(range(20)), _papers(range(1, 21)))
    assert 1 <= len(fake_llm.log) <= 2  # not retried, and no new request after the first answer
    with pytest.raises(LLMRequestError, match=r"HTTP 404.*base_url"):
        _scorer(tmp_path, fake_llm, f"label.llm.base_url={fake_llm.url}/wrong").score_texts(_papers([1]), _papers([2]))


def _scored_pairs(root: Path, processed: Path) -> dict[str, list[tuple[str, str, float]]]:
    titles = {}
    for split in ("train", "eval"):
        papers = pq.read_table(processed / f"{split}.parquet", columns=["arxiv_id", "title"])
        titles |= dict(zip(*(papers.column(c).to_pylist() for c in ("arxiv_id", "title")), strict=True))
    out = {}
    for split in ("train", "eval"):
        meta = pq.read_table(root / "data" / "labelled-pairs" / f"{split}_meta.parquet")
        scores = _pairs(root, split).column("score").to_pylist()
        out[split] = [
            (titles[x], titles[y], s)
            for x, y, s in zip(meta.column("a_id").to_pylist(), meta.column("b_id").to_pylist(), scores, strict=True)
        ]
    return out


def test_label_stage_with_llm_resumes_after_a_crash(tmp_path: Path, processed_root: Path, fake_llm: FakeLLM) -> None:
    processed = processed_root / "data" / "processed"
    cache = tmp_path / "cache.jsonl"
    overrides = [
        f"paths.processed_dir={processed}",
        "label.candidates.num_train=12",
        "label.candidates.num_eval=4",
        *_llm_overrides(fake_llm, cache, "label.llm.concurrency=1"),
    ]
    # A crash after 7 answers (the server starts refusing the key): nothing is written, 7 scores are cached.
    fake_llm.fail_after = 7
    with pytest.raises(LLMRequestError):
        label_stage.run(_cfg(tmp_path, *overrides))
    assert not (tmp_path / "data" / "labelled-pairs").exists()
    assert len(cache.read_text().splitlines()) == 7
    # ... and a crash in the middle of writing the 8th score leaves a torn last line.
    with open(cache, "a") as fh:
        fh.write('{"key": "0123abc", "sco')
    first_prompts = [r["prompt"] for r in fake_llm.log if r["prompt"]]
    fake_llm.log.clear()
    fake_llm.fail_after = None

    result = label_stage.run(_cfg(tmp_path, *overrides))
    assert result["counts"] == {"train": 12, "eval": 4}
    prompts = [r["prompt"] for r in fake_llm.log]
    distinct = len(set(first_prompts[:7]) | set(prompts))
    assert len(prompts) == distinct - 7  # only the pairs missing from the cache were requested
    assert not set(prompts) & set(first_prompts[:7])
    assert result["scorer_stats"]["train"]["cached"] == 7

    for split_pairs in _scored_pairs(tmp_path, processed).values():
        for title_a, title_b, score in split_pairs:
            expected = pair_score(" ".join(title_a.split()), " ".join(title_b.split()))
            assert score == pytest.approx(expected, abs=1e-6)
    lines = cache.read_text().splitlines()
    assert len(lines) == 8 + len(prompts)  # 7 + the torn line + the new scores, each on its own line
    assert ScoreCache(cache).ignored_lines == 1

    # A third run requests nothing and writes the same pairs.
    before = (tmp_path / "data" / "labelled-pairs" / "train.parquet").read_bytes()
    fake_llm.log.clear()
    label_stage.run(_cfg(tmp_path, *overrides))
    assert fake_llm.log == []
    assert (tmp_path / "data" / "labelled-pairs" / "train.parquet").read_bytes() == before


# ------------------------------------------------------------------------------------------- local scorers
def test_subject_overlap_scores_are_the_jaccard_of_the_subject_lists(tmp_path: Path, processed_root: Path) -> None:
    processed = processed_root / "data" / "processed"
    result = label_stage.run(
        _cfg(tmp_path, f"paths.processed_dir={processed}", "label.candidates.num_train=200", "label.text=title")
    )
    assert result["counts"] == {"train": 200, "eval": 200}
    papers = pq.read_table(processed / "train.parquet", columns=["arxiv_id", "title", "subjects"]).to_pylist()
    by_id = {p["arxiv_id"]: p for p in papers}
    meta = pq.read_table(tmp_path / "data" / "labelled-pairs" / "train_meta.parquet").to_pylist()
    table = _pairs(tmp_path, "train").to_pylist()
    same = 0
    for m, row in zip(meta, table, strict=True):
        a, b = set(by_id[m["a_id"]]["subjects"]), set(by_id[m["b_id"]]["subjects"])
        assert m["a_id"] != m["b_id"]
        assert row["score"] == pytest.approx(len(a & b) / len(a | b))
        assert (row["sentence1"], row["sentence2"]) == (by_id[m["a_id"]]["title"], by_id[m["b_id"]]["title"])
        same += m["a_subject"] == m["b_subject"]
    assert same >= 100  # same_subject_fraction=0.5, plus random pairs that happen to share it
    assert read_json(tmp_path / "data" / "labelled-pairs" / "manifest.json")["scorer"] == "subject_overlap"


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A tiny randomly initialised BERT cross-encoder (one output label) with MiniLM's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    out = tmp_path_factory.mktemp("cross") / "tiny-cross"
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=1,
    )
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_cross_encoder_scorer_on_a_tiny_model(tmp_path: Path, processed_root: Path, tiny_cross_encoder: Path) -> None:
    processed = processed_root / "data" / "processed"
    overrides = [
        f"paths.processed_dir={processed}",
        "label.scorer=cross_encoder",
        "label.cross_encoder.device=cpu",
        "label.cross_encoder.max_length=64",
        "label.candidates.num_train=24",
        "label.candidates.num_eval=0",
    ]
    label_stage.run(_cfg(tmp_path, *overrides, f"label.cross_encoder.model={tiny_cross_encoder}"))
    scores = np.array(_pairs(tmp_path, "train").column("score").to_pylist())
    assert len(scores) == 24 and ((scores > 0) & (scores < 1)).all() and scores.std() > 0
    assert not (tmp_path / "data" / "labelled-pairs" / "eval.parquet").exists()
    with pytest.raises(ConfigError, match="could not be loaded"):
        label_stage.run(_cfg(tmp_path, *overrides, f"label.cross_encoder.model={tmp_path / 'no-such-model'}"))


# ------------------------------------------------------------------------------------------------- training
@pytest.mark.slow
def test_tiny_model_trains_with_cosent_on_imported_pairs(
    tmp_path: Path, processed_root: Path, tiny_model_dir: Path
) -> None:
    import csv

    shutil.copytree(processed_root / "data" / "processed", tmp_path / "data" / "processed")
    papers = pq.read_table(tmp_path / "data" / "processed" / "train.parquet").to_pylist()
    rng = np.random.default_rng(0)
    path = tmp_path / "teacher.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sentence1", "sentence2", "score"])
        for i, j in rng.integers(0, len(papers), (40, 2)):
            a, b = papers[i], papers[j]
            overlap = len(set(a["subjects"]) & set(b["subjects"])) / len(set(a["subjects"]) | set(b["subjects"]))
            writer.writerow([f"{a['title']}\n{a['abstract']}", f"{b['title']}\n{b['abstract']}", round(overlap, 3)])
    label_stage.run(_cfg(tmp_path, "label.source=csv", f"label.csv.path={path}", "label.csv.eval_fraction=0.2"))

    overrides = [
        f"paths.root_dir={tmp_path}",
        f"model.name={tiny_model_dir}",
        "run_name=teacher",
        "train.pairs_from=label",
        "loss=cosent",
        *FAST,
    ]
    # The pairs stage, as `inv pipeline` runs it, writes its own folder and leaves the teacher's pairs alone.
    teacher = {p.name: p.read_bytes() for p in (tmp_path / "data" / "labelled-pairs").iterdir()}
    pairs.run(compose("pairs", [f"paths.root_dir={tmp_path}", "pairs.num_train=32", "pairs.num_eval=8"]))
    assert {p.name: p.read_bytes() for p in (tmp_path / "data" / "labelled-pairs").iterdir()} == teacher
    assert read_json(tmp_path / "data" / "pairs" / "manifest.json")["type"] == "anchor_positive"
    result = train_stage.run(compose("train", overrides))
    summary = read_json(Path(result["model"]) / "train_summary.json")
    assert summary["pair_type"] == "graded" and summary["global_step"] == 3
    assert str(tmp_path / "data" / "labelled-pairs" / "train.parquet") in map(
        str, train_stage.SPEC.inputs(compose("train", overrides))
    )
    assert np.isfinite(summary["train"]["train_loss"])

"""The teacher-score cache: one JSON line per scored pair, keyed by the prompt version, model and both texts, so an
interrupted labelling run resumes where it stopped and a rerun pays only for new pairs."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from loguru import logger

from arxiv_embeddings.label.prompts import PROMPT_VERSION


def cache_key(model: str, paper_a: str, paper_b: str) -> str:
    """sha256 of the prompt version, the model and the two papers' prompt texts."""
    return hashlib.sha256(json.dumps([PROMPT_VERSION, model, paper_a, paper_b]).encode()).hexdigest()


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

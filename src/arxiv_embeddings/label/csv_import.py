"""Importing pairs scored elsewhere: a CSV of ``arxiv_id_1, arxiv_id_2, score`` checked row by row (every problem
named with its line), joined to the processed papers and sent to the split both papers are in."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from omegaconf import DictConfig

from arxiv_embeddings.config import ConfigError
from arxiv_embeddings.io import file_sha256
from arxiv_embeddings.pair_format import COLUMNS

PAIR_TYPE = "graded"
CSV_HEADER: tuple[str, ...] = COLUMNS[PAIR_TYPE]  # sentence1, sentence2, score
SOURCES = ("papers", "csv")
PAPER_COLUMNS = ["arxiv_id", "title", "abstract", "primary_subject", "subjects"]


class CsvPairsError(ConfigError):
    """The CSV named by ``label.csv.path`` is not a valid file of scored pairs; the message lists the bad rows."""


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


def csv_splits(cfg: DictConfig) -> tuple[dict[str, tuple[pa.Table, pa.Table]], dict[str, Any]]:
    """The pairs of ``label.csv.path`` split into train and eval at random (``label.csv.eval_fraction``, seeded),
    each as (pairs, meta) tables, and what the manifest records of the source."""
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

"""The paper schema and a paper's texts, which every stage shares: the columns of a normalized paper, the embedded
sample, each paper's text for a model, stable hashes of ids, and seeded row samples.

Normalized schema: ``arxiv_id`` (version suffix stripped), ``title``, ``abstract`` (whitespace collapsed),
``primary_subject`` (bare code such as ``cs.LG``) and ``subjects`` (list of bare codes, primary first). Reading raw
sources into it is :mod:`arxiv_embeddings.sources`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from arxiv_embeddings.config import PACKAGE_DIR, ConfigError
from arxiv_embeddings.texts import TEXT_FIELDS, TITLE_ABSTRACT_SEPARATOR

if TYPE_CHECKING:
    import pandas as pd

#: The papers shipped in the package, the offline default source.
SAMPLE_PATH = PACKAGE_DIR / "resources" / "arxiv_sample.parquet"
TEXT_COLUMNS = ("arxiv_id", "title", "abstract")
NORMALIZED_COLUMNS = ("arxiv_id", "title", "abstract", "primary_subject", "subjects")
_HASH_CHUNK = 200_000
# Bytes of text hashed per step: bounds the temporary memory whatever the size of the column.
_TEXT_BLOCK = 2 << 20


# ----------------------------------------------------------------------------------------------- hashing
def hash_strings(arr: pa.ChunkedArray | pa.Array, key: str = "arxiv-embeddings") -> np.ndarray:
    """Stable 64-bit hash of each string (SipHash-2-4 over UTF-8 bytes, via pandas), chunked to bound memory.

    The same string and key always give the same value, on any machine and in any order of rows, which is
    what makes hash-based splits and seeded choices stable when papers are added.
    """
    import hashlib

    import pandas as pd

    hash_key = hashlib.md5(key.encode()).hexdigest()[:16]
    # As bytes objects: pandas hashes a str through its UTF-8 encoding, so bytes give the same values without the
    # decode and re-encode.
    arr = pc.cast(arr, pa.large_binary())
    out = np.empty(len(arr), dtype=np.uint64)
    step = _HASH_CHUNK if not arr.nbytes else max(1, min(_HASH_CHUNK, len(arr) * _TEXT_BLOCK // arr.nbytes))
    for start in range(0, len(arr), step):
        chunk = arr.slice(start, step).to_numpy(zero_copy_only=False)
        out[start : start + len(chunk)] = pd.util.hash_array(
            np.asarray(chunk, dtype=object), hash_key=hash_key, categorize=False
        )
    return out


def unit_interval(hashes: np.ndarray) -> np.ndarray:
    """Map 64-bit hashes to floats uniform in [0, 1)."""
    return (hashes >> np.uint64(11)).astype(np.float64) / float(1 << 53)


# ------------------------------------------------------------------------------------------------- text


def paper_text_array(table: pa.Table, text: str) -> pa.ChunkedArray:
    """The text of each paper as an Arrow column: its title, its abstract, or both (title, newline, abstract)."""
    if text == "title":
        return table.column("title")
    if text == "abstract":
        return table.column("abstract")
    if text == "title_abstract":
        title, abstract = (pc.cast(table.column(c), pa.large_string()) for c in ("title", "abstract"))
        return pc.binary_join_element_wise(title, abstract, pa.scalar(TITLE_ABSTRACT_SEPARATOR, pa.large_string()))
    raise ConfigError(f"text={text!r} is not known; valid values: {', '.join(TEXT_FIELDS)}.")


def paper_text(table: pa.Table | pd.DataFrame, text: str) -> list[str]:
    """The text of each paper (see :func:`paper_text_array`) as a list of Python strings, ready to encode; ``table``
    is an Arrow table or a pandas frame."""
    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table[["title", "abstract"]], preserve_index=False)
    return paper_text_array(table, text).to_pylist()


# ------------------------------------------------------------------------------------------------ sampling
#: Seeded random choices of rows, one stream per purpose, so that one choice never shifts another.
SAMPLE_STREAMS = {"test": 0, "train": 1, "tfidf_fit": 2, "plot": 3, "calibration": 4}


def sample_rows(n: int, cap: int | None, seed: int, stream: str) -> np.ndarray:
    """Sorted positions of a seeded random choice of ``cap`` of ``n`` rows (all rows when ``cap`` is None or >= n).

    ``stream`` names what the choice is for (a key of :data:`SAMPLE_STREAMS`).
    """
    if cap is None or cap >= n:
        return np.arange(n)
    rng = np.random.default_rng([int(seed), SAMPLE_STREAMS[stream]])
    return np.sort(rng.choice(n, size=int(cap), replace=False))

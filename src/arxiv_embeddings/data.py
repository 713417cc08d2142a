"""Loading papers from the configured source and normalizing them to one schema, vectorized with Arrow.

Normalized schema: ``arxiv_id`` (version suffix stripped), ``title``, ``abstract`` (whitespace collapsed),
``primary_subject`` (bare code such as ``cs.LG``) and ``subjects`` (list of bare codes, primary first).
Both the Hugging Face ``nick007x/arxiv-papers`` schema (``"Name (code)"`` labels, ``subjects`` as one
``"; "``-joined string) and the normalized schema are accepted.
"""

from __future__ import annotations

import glob
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from loguru import logger
from omegaconf import DictConfig

from arxiv_embeddings.config import PACKAGE_DIR, ConfigError, choose

SAMPLE_PATH = PACKAGE_DIR / "resources" / "arxiv_sample.parquet"
TEXT_COLUMNS = ("arxiv_id", "title", "abstract")
NORMALIZED_COLUMNS = ("arxiv_id", "title", "abstract", "primary_subject", "subjects")
# A bare arXiv category code: archive, optionally ".Subject" (cs.LG, math-ph, astro-ph.GA, q-fin.EC).
CODE_PATTERN = r"^[a-z][a-z\-]*(\.[A-Za-z][A-Za-z\-]*)?$"
_HASH_CHUNK = 200_000


# --------------------------------------------------------------------------------------------------- loading
def _read_files(path: str, fmt: str) -> pa.Table:
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    paths = sorted(glob.glob(path)) if any(ch in path for ch in "*?[") else [path]
    if not paths or not all(Path(p).exists() for p in paths):
        raise FileNotFoundError(f"Input file not found: {path}. Check data.path (a file or a glob of files).")
    tables = []
    for p in paths:
        kind = fmt
        if kind == "auto":
            name = p.lower()
            kind = next((k for k, ends in _EXTENSIONS.items() if name.endswith(ends)), "")
            if not kind:
                raise ConfigError(
                    f"data.format=auto cannot tell the format of {p}; name it .parquet, .jsonl(.gz) or .csv, "
                    "or set data.format to parquet, jsonl or csv."
                )
        if kind == "parquet":
            tables.append(pq.read_table(p))
        elif kind == "jsonl":
            with pa.input_stream(p, compression="detect") as stream:
                tables.append(pajson.read_json(stream))
        elif kind == "csv":
            opts = pacsv.ReadOptions(block_size=64 << 20)
            tables.append(pacsv.read_csv(p, read_options=opts, parse_options=pacsv.ParseOptions(newlines_in_values=True)))
        else:
            raise ConfigError(f"data.format={kind!r} is not known; valid values: auto, csv, jsonl, parquet.")
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]


_EXTENSIONS = {"parquet": (".parquet", ".pq"), "jsonl": (".jsonl", ".jsonl.gz", ".json", ".json.gz"), "csv": (".csv", ".csv.gz")}


def _load_sample(data: DictConfig) -> pa.Table:
    return _read_files(str(data.path or SAMPLE_PATH), "parquet")


def _load_files(data: DictConfig) -> pa.Table:
    return _read_files(str(data.path), str(data.get("format", "auto")))


def _load_hf(data: DictConfig) -> pa.Table:
    import datasets

    logger.info(f"Loading the Hugging Face dataset {data.name} (split {data.split}); the first download is large.")
    ds = datasets.load_dataset(data.name, split=data.split, revision=data.get("revision"), cache_dir=data.get("cache_dir"))
    return ds.data.table  # memory-mapped Arrow table: no copy into RAM


LOADERS: dict[str, Callable[[DictConfig], pa.Table]] = {"sample": _load_sample, "files": _load_files, "hf": _load_hf}


def load_raw(data: DictConfig) -> pa.Table:
    """Load the configured source as an Arrow table with ``data.columns`` renames applied."""
    loader = choose("data.source", str(data.source), LOADERS)
    table = loader(data)
    renames = dict(data.get("columns") or {})
    unknown = [c for c in renames if c not in table.column_names]
    if unknown:
        raise ConfigError(
            f"data.columns renames column(s) {unknown} that the input does not have; its columns are: "
            f"{', '.join(table.column_names)}."
        )
    if renames:
        table = table.rename_columns([renames.get(c, c) for c in table.column_names])
    missing = [c for c in TEXT_COLUMNS if c not in table.column_names]
    if "primary_subject" not in table.column_names and "subjects" not in table.column_names:
        missing.append("primary_subject (or subjects)")
    if missing:
        raise ConfigError(
            f"Input is missing column(s) {', '.join(missing)}; it has: {', '.join(table.column_names)}. "
            "Map yours with data.columns, e.g. data.columns={paper_id:arxiv_id}."
        )
    return table


# --------------------------------------------------------------------------------------------- normalizing
def collapse_whitespace(arr: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray:
    arr = pc.cast(arr, pa.large_string())
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(arr, r"\s+", " "))


def normalize_ids(arr: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray:
    """Strip whitespace, an ``arXiv:`` prefix and the version suffix: ``arXiv:2401.01234v3`` -> ``2401.01234``."""
    arr = pc.utf8_trim_whitespace(pc.cast(arr, pa.large_string()))
    arr = pc.replace_substring_regex(arr, r"^(?i:arxiv:)", "")
    return pc.replace_substring_regex(arr, r"v\d+$", "")


def to_code(arr: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray:
    """``"Machine Learning (cs.LG)"`` -> ``"cs.LG"``; bare codes pass through unchanged."""
    arr = pc.utf8_trim_whitespace(pc.cast(arr, pa.large_string()))
    return pc.replace_substring_regex(arr, r"^.*\(([^()]*)\)$", r"\1")


def is_code(arr: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray:
    return pc.fill_null(pc.match_substring_regex(arr, CODE_PATTERN), False)


def _label_lists(arr: pa.ChunkedArray | pa.Array) -> pa.ListArray:
    """A ``subjects`` column (list of labels, or one ``;``-joined string) as lists of trimmed labels."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        arr = pc.split_pattern(pc.fill_null(arr, ""), ";")
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        raise ConfigError(f"Column 'subjects' has type {arr.type}; expected a list of strings or a '; '-joined string.")
    return pc.fill_null(arr, pa.scalar([], type=arr.type))


def _first_label(labels: pa.ListArray) -> pa.Array:
    """First entry of each list ("" for an empty list), as a bare code when it is a "Name (code)" label."""
    parents = pc.list_parent_indices(labels).to_numpy()
    rows, first = np.unique(parents, return_index=True)
    out = np.full(len(labels), "", dtype=object)
    out[rows] = pc.list_flatten(labels).take(pa.array(first)).to_numpy(zero_copy_only=False)
    return to_code(pa.array(out, type=pa.large_string()))


def _subject_codes_lists(labels: pa.ListArray) -> pa.ListArray:
    """Lists of labels -> lists of valid bare codes (invalid entries dropped)."""
    codes = to_code(pc.list_flatten(labels))
    parents = pc.list_parent_indices(labels).to_numpy()
    keep = is_code(codes).to_numpy(zero_copy_only=False)
    return _lists_from(parents[keep], codes.filter(pa.array(keep)), len(labels))


def _lists_from(parents: np.ndarray, values: pa.Array, n_rows: int) -> pa.ListArray:
    """Build a list array from values sorted by their parent row."""
    offsets = np.zeros(n_rows + 1, dtype=np.int32)
    np.cumsum(np.bincount(parents, minlength=n_rows), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pc.cast(values, pa.string()))


def primary_first(primary: pa.Array, subjects: pa.ListArray) -> pa.ListArray:
    """Make ``subjects`` start with ``primary`` and hold it once (rows keep their other codes in order)."""
    n = len(primary)
    flat = pc.cast(pc.list_flatten(subjects), pa.large_string())
    parents = pc.list_parent_indices(subjects).to_numpy()
    not_primary = pc.not_equal(flat, pc.take(primary, pa.array(parents))).to_numpy(zero_copy_only=False)
    parents = parents[not_primary]
    values = pa.concat_arrays([pc.cast(primary, pa.large_string()), flat.filter(pa.array(not_primary))])
    all_parents = np.concatenate([np.arange(n), parents])
    order = np.argsort(all_parents, kind="stable")  # primary (listed first) stays ahead within each row
    return _lists_from(all_parents[order], values.take(pa.array(order)), n)


def normalize(raw: pa.Table, keep_columns: list[str] | tuple[str, ...] = ()) -> tuple[pa.Table, int]:
    """Normalize a raw table to the schema above. Returns the table and the number of rows dropped because their
    primary subject is not a valid arXiv code (misaligned scraper rows, empty labels)."""
    missing = [c for c in keep_columns if c not in raw.column_names]
    if missing:
        raise ConfigError(
            f"preprocess.keep_columns names {missing}, which the input does not have; it has: {', '.join(raw.column_names)}."
        )
    labels = _label_lists(raw.column("subjects")) if "subjects" in raw.column_names else None
    subjects = _subject_codes_lists(labels) if labels is not None else None
    if "primary_subject" in raw.column_names:
        primary = to_code(raw.column("primary_subject")).combine_chunks()
    else:  # load_raw guarantees that one of the two columns is there
        primary = _first_label(labels)
    if subjects is None:
        subjects = pa.ListArray.from_arrays(pa.array(np.arange(len(primary) + 1, dtype=np.int32)), pc.cast(primary, pa.string()))
    valid = is_code(primary)
    n_bad = len(primary) - pc.sum(valid).as_py() if len(primary) else 0
    primary = pc.fill_null(primary, "")
    subjects = primary_first(primary, subjects)
    columns = {
        "arxiv_id": normalize_ids(raw.column("arxiv_id")),
        "title": collapse_whitespace(raw.column("title")),
        "abstract": collapse_whitespace(raw.column("abstract")),
        "primary_subject": primary,
        "subjects": subjects,
    }
    for name in keep_columns:
        columns[name] = raw.column(name)
    table = pa.table(columns).filter(valid)
    return table, int(n_bad)


# ----------------------------------------------------------------------------------------------- hashing
def hash_strings(arr: pa.ChunkedArray | pa.Array, key: str = "arxiv-embeddings") -> np.ndarray:
    """Stable 64-bit hash of each string (SipHash-2-4 over UTF-8 bytes, via pandas), chunked to bound memory.

    The same string and key always give the same value, on any machine and in any order of rows, which is
    what makes hash-based splits and seeded choices stable when papers are added.
    """
    import hashlib

    hash_key = hashlib.md5(key.encode()).hexdigest()[:16]
    out = np.empty(len(arr), dtype=np.uint64)
    for start in range(0, len(arr), _HASH_CHUNK):
        chunk = arr.slice(start, _HASH_CHUNK).to_numpy(zero_copy_only=False)
        out[start : start + len(chunk)] = pd.util.hash_array(np.asarray(chunk, dtype=object), hash_key=hash_key, categorize=False)
    return out


def unit_interval(hashes: np.ndarray) -> np.ndarray:
    """Map 64-bit hashes to floats uniform in [0, 1)."""
    return (hashes >> np.uint64(11)).astype(np.float64) / float(1 << 53)


# ------------------------------------------------------------------------------------------------- text
TEXT_FIELDS = ("title", "abstract", "title_abstract")
TITLE_ABSTRACT_SEPARATOR = "\n"


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
    """The text of each paper (see :func:`paper_text_array`) as a list of Python strings, ready to encode."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table[["title", "abstract"]], preserve_index=False)
    return paper_text_array(table, text).to_pylist()

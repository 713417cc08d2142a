"""The raw sources of papers and their normalization to the paper schema (:mod:`arxiv_embeddings.papers`), vectorized
with Arrow: what preprocess and the index's corpus reader use.

Normalized schema: ``arxiv_id`` (version suffix stripped), ``title``, ``abstract`` (whitespace collapsed),
``primary_subject`` (bare code such as ``cs.LG``) and ``subjects`` (list of bare codes, primary first).
Both the Hugging Face ``nick007x/arxiv-papers`` schema (``"Name (code)"`` labels, ``subjects`` as one
``"; "``-joined string) and the normalized schema are accepted.
"""

from __future__ import annotations

import glob
import itertools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from loguru import logger
from omegaconf import DictConfig

from arxiv_embeddings.config import ConfigError, choose
from arxiv_embeddings.papers import NORMALIZED_COLUMNS, SAMPLE_PATH, TEXT_COLUMNS

# A bare arXiv category code: archive, optionally ".Subject" (cs.LG, math-ph, astro-ph.GA, q-fin.EC).
CODE_PATTERN = r"^[a-z][a-z\-]*(\.[A-Za-z][A-Za-z\-]*)?$"
# Bytes of text handled per step by the chunked passes below (whitespace, word counts; hashing in papers.py): bounds their
# temporary memory whatever the size of the column, and keeps NumPy's temporaries under 4 MiB, below which it
# neither asks for huge pages nor takes fresh memory from the kernel for each one (both cost system time).
_TEXT_BLOCK = 2 << 20
# Largest part of a column that collapse_whitespace copies at once (about one row group of abstracts).
_SEGMENT = 128 << 20


# --------------------------------------------------------------------------------------------------- loading
def _select(table: pa.Table, columns: set[str] | None) -> pa.Table:
    return table if columns is None else table.select([c for c in table.column_names if c in columns])


def _read_files(path: str, fmt: str, columns: set[str] | None = None) -> tuple[pa.Table, list[str]]:
    """Read a file or a glob of files; only ``columns`` (those of them the input has) when given. Returns the table
    and every column name the input has."""
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson

    paths = sorted(glob.glob(path)) if any(ch in path for ch in "*?[") else [path]
    if not paths or not all(Path(p).exists() for p in paths):
        raise FileNotFoundError(f"Input file not found: {path}. Check data.path (a file or a glob of files).")
    tables, names = [], []
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
            table, file_names = _read_parquet(p, columns)
        elif kind == "jsonl":
            with pa.input_stream(p, compression="detect") as stream:
                table = pajson.read_json(stream)
            file_names, table = table.column_names, _select(table, columns)
        elif kind == "csv":
            opts = pacsv.ReadOptions(block_size=64 << 20)
            table = pacsv.read_csv(p, read_options=opts, parse_options=pacsv.ParseOptions(newlines_in_values=True))
            file_names, table = table.column_names, _select(table, columns)
        else:
            raise ConfigError(f"data.format={kind!r} is not known; valid values: auto, csv, jsonl, parquet.")
        tables.append(table)
        names += [n for n in file_names if n not in names]
    return (pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]), names


def _read_parquet(path: str, columns: set[str] | None = None) -> tuple[pa.Table, list[str]]:
    """``pq.read_table(path, columns=...)``, one row group at a time for a plain file (a few in parallel): the reader
    then holds a few row groups' pages and buffers next to the table, not the whole file's, and each row group
    becomes a chunk with buffers of its own, which later steps can release one by one. Only ``columns`` are read
    (the others never leave the disk). Returns the table and every column name of the file."""
    import pyarrow.parquet as pq

    if not Path(path).is_file():
        names = pq.ParquetDataset(path).schema.names
        wanted = None if columns is None else [c for c in names if c in columns]
        return pq.read_table(path, columns=wanted), names
    with pq.ParquetFile(path) as f:
        groups = f.num_row_groups
        names = f.schema_arrow.names
    wanted = None if columns is None else [c for c in names if c in columns]
    if groups <= 1:
        return pq.read_table(path, columns=wanted), names

    def read_group(i: int) -> pa.Table:
        # One reader per thread; memory-mapped, so the compressed pages are read in place, not copied first.
        with pq.ParquetFile(path, memory_map=True) as f:
            return f.read_row_group(i, columns=wanted)

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return pa.concat_tables(list(pool.map(read_group, range(groups)))), names


_EXTENSIONS = {
    "parquet": (".parquet", ".pq"),
    "jsonl": (".jsonl", ".jsonl.gz", ".json", ".json.gz"),
    "csv": (".csv", ".csv.gz"),
}


def _load_sample(data: DictConfig, columns: set[str] | None) -> tuple[pa.Table, list[str]]:
    return _read_files(str(data.path or SAMPLE_PATH), "parquet", columns)


def _load_files(data: DictConfig, columns: set[str] | None) -> tuple[pa.Table, list[str]]:
    return _read_files(str(data.path), str(data.get("format", "auto")), columns)


def _load_hf(data: DictConfig, columns: set[str] | None) -> tuple[pa.Table, list[str]]:
    import datasets

    logger.info(f"Loading the Hugging Face dataset {data.name} (split {data.split}); the first download is large.")
    ds = datasets.load_dataset(
        data.name, split=data.split, revision=data.get("revision"), cache_dir=data.get("cache_dir")
    )
    table = ds.data.table  # memory-mapped Arrow table: no copy into RAM
    return _select(table, columns), table.column_names


LOADERS: dict[str, Callable[[DictConfig, set[str] | None], tuple[pa.Table, list[str]]]] = {
    "sample": _load_sample,
    "files": _load_files,
    "hf": _load_hf,
}


def load_raw(data: DictConfig, keep_columns: Sequence[str] | None = ()) -> pa.Table:
    """Load the configured source as an Arrow table with ``data.columns`` renames applied.

    Only the columns the pipeline uses are read: those of :data:`NORMALIZED_COLUMNS` and ``keep_columns`` (by their
    names after the renames); ``keep_columns=None`` reads every column.
    """
    loader = choose("data.source", str(data.source), LOADERS)
    renames = dict(data.get("columns") or {})
    wanted: set[str] | None = None
    if keep_columns is not None:
        targets = {*NORMALIZED_COLUMNS, *keep_columns}
        source_of = {dst: src for src, dst in renames.items()}
        wanted = {source_of.get(name, name) for name in targets} | set(renames)
    table, names = loader(data, wanted)
    unknown = [c for c in renames if c not in names]
    if unknown:
        raise ConfigError(
            f"data.columns renames column(s) {unknown} that the input does not have; its columns are: "
            f"{', '.join(names)}."
        )
    if renames:
        table = table.rename_columns([renames.get(c, c) for c in table.column_names])
    table = split_subjects(table, data.get("subjects_separator"))
    renamed = [renames.get(c, c) for c in names]
    missing = [c for c in TEXT_COLUMNS if c not in table.column_names]
    if "primary_subject" not in table.column_names and "subjects" not in table.column_names:
        missing.append("primary_subject (or subjects)")
    if missing:
        raise ConfigError(
            f"Input is missing column(s) {', '.join(missing)}; it has: {', '.join(renamed)}. "
            "Map yours with data.columns, e.g. data.columns={paper_id:arxiv_id}."
        )
    return table


def split_subjects(table: pa.Table, separator: str | None) -> pa.Table:
    """``table`` with a string ``subjects`` column split into lists by ``separator`` (``data.subjects_separator``):
    ``whitespace`` splits on any run of whitespace (the Kaggle snapshot's ``categories``), another value on that
    literal string; None leaves the column as it is (the Hugging Face schema's "; "-joined labels)."""
    if separator is None or "subjects" not in table.column_names:
        return table
    column = table.column("subjects")
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise ConfigError(
            f"data.subjects_separator={separator!r} splits a string column, but 'subjects' is {column.type}; set "
            "data.subjects_separator=null for a column of lists."
        )
    column = pc.fill_null(column, "")
    split = pc.utf8_split_whitespace if separator == "whitespace" else (lambda a: pc.split_pattern(a, str(separator)))
    return table.set_column(table.column_names.index("subjects"), "subjects", split(column))


# --------------------------------------------------------------------------------------------- normalizing
def collapse_whitespace(arr: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray:
    r"""Collapse each run of whitespace to one space and trim both ends.

    The result is exactly ``utf8_trim_whitespace(replace_substring_regex(arr, r"\s+", " "))``. RE2's ``\s`` is the
    ASCII set ``[\t\n\f\r ]``, bytes that never occur inside a multi-byte UTF-8 character, so the runs are collapsed
    with NumPy over the UTF-8 bytes (several times faster than the regex); the trim is Arrow's own. Rows that cannot
    change (no control character, no double space, printable ASCII at both ends) are found first and kept as they
    are, without a copy: clean text costs one pass over its bytes and shares memory with the input.
    """
    arr = pc.cast(arr, pa.large_string())
    if isinstance(arr, pa.ChunkedArray):
        return _collapse_chunks(list(arr.chunks))
    parts = _collapse_blocks(arr)
    return parts[0] if len(parts) == 1 else pa.concat_arrays(parts)


def _collapse_chunks(chunks: list[pa.Array]) -> pa.ChunkedArray:
    """:func:`collapse_whitespace` of the chunks of a large_string column, emptying ``chunks`` as it goes: when the
    list holds the only reference to a chunk, the chunk is freed once its collapsed copy is made."""
    parts: list[pa.Array] = []
    scratch = _Scratch()
    while chunks:
        parts.extend(_collapse_blocks(chunks.pop(0), scratch))
    return pa.chunked_array(parts, type=pa.large_string())


def _string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (``len(arr) + 1``, into the data) and UTF-8 bytes of a large_string array, zero-copy."""
    buffers = arr.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, dtype=np.uint8)
    return offsets, data


def _row_blocks(offsets: np.ndarray, max_bytes: int | None = None) -> list[tuple[int, int]]:
    """Consecutive row ranges ``[r0, r1)`` holding at most ``max_bytes`` (default ``_TEXT_BLOCK``) of text each
    (at least one row)."""
    max_bytes = max_bytes or _TEXT_BLOCK
    n, blocks, r0 = len(offsets) - 1, [], 0
    while r0 < n:
        r1 = int(np.searchsorted(offsets, offsets[r0] + max_bytes, side="right")) - 1
        r1 = min(max(r1, r0 + 1), n)
        blocks.append((r0, r1))
        r0 = r1
    return blocks


class _Scratch:
    """Work buffers reused from block to block: fresh memory costs page faults, and NumPy's allocator hands the
    memory of freed temporaries back to the kernel."""

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}

    def __call__(self, name: str, n: int, dtype: type = bool) -> np.ndarray:
        buffer = self.buffers.get(name)
        if buffer is None or len(buffer) < n:
            buffer = self.buffers[name] = np.empty(max(n, _TEXT_BLOCK + 64), dtype=dtype)
        return buffer[:n]


def _collapse_blocks(arr: pa.Array, scratch: _Scratch | None = None) -> list[pa.Array]:
    """:func:`collapse_whitespace` of one large_string array, as consecutive parts of at most ``_SEGMENT`` bytes:
    each part is a slice of ``arr`` when none of its rows can change, else a copy with those rows collapsed."""
    scratch = scratch or _Scratch()
    offsets, data = _string_buffers(arr)
    parts = []
    for s0, s1 in _row_blocks(offsets, _SEGMENT):
        part = arr.slice(s0, s1 - s0)
        blocks = _row_blocks(offsets[s0 : s1 + 1])
        flagged = np.concatenate([_may_change(offsets[s0 + r0 : s0 + r1 + 1], data, scratch) for r0, r1 in blocks])
        if flagged.mean() > 0.5:  # most rows change: collapse them all (the others come out as they are)
            part = _collapse(part, scratch)
        elif flagged.any():
            mask = pa.array(flagged)
            part = pc.replace_with_mask(part, mask, _collapse(part.filter(mask), scratch))
        parts.append(part)
    return parts or [arr]


def _collapse(arr: pa.Array, scratch: _Scratch) -> pa.Array:
    r"""Runs of ``[\t\n\f\r ]`` to one space, then Arrow's Unicode trim where a row may need it."""
    arr = _collapse_runs(arr, scratch)
    offsets, data = _string_buffers(arr)
    rows = np.flatnonzero(offsets[1:] > offsets[:-1])
    first, last = data[offsets[rows]], data[offsets[rows + 1] - 1]
    ends = (first < 0x21) | (first > 0x7E) | (last < 0x21) | (last > 0x7E)
    return pc.utf8_trim_whitespace(arr) if ends.any() else arr


def _collapse_runs(arr: pa.Array, scratch: _Scratch) -> pa.Array:
    r"""``replace_substring_regex(arr, r"\s+", " ")`` over the UTF-8 bytes: the whitespace bytes that follow another
    in the same row are dropped and the rest become spaces, written once into one new buffer."""
    offsets, data = _string_buffers(arr)
    lengths = np.diff(offsets)
    out = np.empty(int(offsets[-1] - offsets[0]), dtype=np.uint8)  # collapsing never lengthens a row
    pos = 0
    for r0, r1 in _row_blocks(offsets):
        lo, hi = int(offsets[r0]), int(offsets[r1])
        if hi == lo:
            continue
        b = data[lo:hi]
        n = len(b)
        space = np.equal(b, 0x20, out=scratch("space", n))
        t = np.subtract(b, 0x09, out=scratch("t", n, np.uint8))  # 0..4 for \t \n \v \f \r, large otherwise
        tab_to_cr = np.less_equal(t, 4, out=scratch("hit", n))
        np.logical_and(tab_to_cr, np.not_equal(t, 2, out=scratch("hit2", n)), out=tab_to_cr)  # \v is not \s
        space |= tab_to_cr
        drop = scratch("drop", n // 8 * 8 + 16)  # padded to whole 8-byte words for _PrefixCounts
        drop[0] = False
        drop[n:] = False
        np.logical_and(space[1:], space[:-1], out=drop[1:n])
        start, end = offsets[r0:r1] - lo, offsets[r0 + 1 : r1 + 1] - lo
        drop[start[end > start]] = False  # a run never continues into the next row
        before = _PrefixCounts(drop, scratch)
        lengths[r0:r1] -= before(end) - before(start)
        spaced = np.left_shift(space.view(np.uint8), 5, out=scratch("bytes", n, np.uint8))  # 0x20 on whitespace
        np.maximum(b, spaced, out=spaced)  # whitespace bytes are all <= 0x20: they become spaces, others stay
        kept = spaced[np.logical_not(drop[:n], out=scratch("keep", n))]
        out[pos : pos + len(kept)] = kept
        pos += len(kept)
    new_offsets = np.zeros(len(arr) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    valid = arr.is_valid().to_numpy(zero_copy_only=False) if arr.null_count else None
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if valid is not None else None
    buffers = [bitmap, pa.py_buffer(new_offsets), pa.py_buffer(out[:pos])]
    return pa.Array.from_buffers(pa.large_string(), len(arr), buffers, null_count=arr.null_count)


def _may_change(offsets: np.ndarray, data: np.ndarray, scratch: _Scratch) -> np.ndarray:
    """Rows that collapsing and trimming could change: a byte below 0x20 (tab, newline, ...), two spaces in a row, or
    a first or last byte that is not printable ASCII (a space or a multi-byte character such as U+00A0)."""
    lo, hi = int(offsets[0]), int(offsets[-1])
    b = data[lo:hi]
    n = len(b)
    hit = scratch("may_change", n // 8 * 8 + 16)  # padded to whole 8-byte words for _PrefixCounts
    hit[n:] = False
    np.less(b, 0x20, out=hit[:n])
    if n > 1:
        space = np.equal(b, 0x20, out=scratch("space", n))
        hit[: n - 1] |= np.logical_and(space[:-1], space[1:], out=scratch("hit2", n - 1))
    start, end = offsets[:-1] - lo, offsets[1:] - lo
    before = _PrefixCounts(hit, scratch)
    flagged = before(end) > before(start)
    rows = np.flatnonzero(end > start)
    first, last = b[start[rows]], b[end[rows] - 1]
    flagged[rows] |= (first < 0x21) | (first > 0x7E) | (last < 0x21) | (last > 0x7E)
    return flagged


def word_counts(arr: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray:
    r"""Number of words in each string, exactly what ``count_substring_regex(arr, r"\S+")`` returns (maximal runs
    of non-whitespace; null stays null), counted with NumPy over the UTF-8 bytes."""
    arr = pc.cast(arr, pa.large_string())
    chunks = arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]
    scratch = _Scratch()
    return pa.chunked_array([_word_counts(c, scratch) for c in chunks], type=pa.int64())


def _word_counts(arr: pa.Array, scratch: _Scratch) -> pa.Array:
    offsets, data = _string_buffers(arr)
    counts = np.zeros(len(arr), dtype=np.int64)
    for r0, r1 in _row_blocks(offsets):
        lo, hi = int(offsets[r0]), int(offsets[r1])
        if hi == lo:
            continue
        b = data[lo:hi]
        n = len(b)
        rows = r0 + np.flatnonzero(offsets[r0 + 1 : r1 + 1] > offsets[r0:r1])
        start, end = offsets[rows] - lo, offsets[rows + 1] - lo
        # Without tab, newline, CR or form feed a word starts at a non-space byte that is a row's first or follows
        # a space; rows with any byte below 0x0E (rare) are counted by the regex itself below.
        space = np.equal(b, 0x20, out=scratch("space", n))
        word_start = scratch("word_start", n // 8 * 8 + 16)  # padded to whole 8-byte words
        word_start[0] = False
        word_start[n:] = False
        np.greater(space[:-1], space[1:], out=word_start[1:n])
        before = _PrefixCounts(word_start, scratch)
        counts[rows] = before(end) - before(start + 1) + ~space[start]
        control = np.less(b, 0x0E, out=scratch("hit", n))
        if control.any():
            hit = np.unique(np.searchsorted(offsets, np.flatnonzero(control) + lo, side="right") - 1)
            counts[hit] = pc.count_substring_regex(arr.take(pa.array(hit)), r"\S+").to_numpy(zero_copy_only=False)
    nulls = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else None
    return pa.array(counts, type=pa.int64(), mask=nulls)


class _PrefixCounts:
    """``before(p)``: the number of True values in ``mask[:p]`` for each ``p``, from popcounts of 8-byte words.
    ``mask`` must be padded to a multiple of 8 bytes beyond the last position asked for."""

    def __init__(self, mask: np.ndarray, scratch: _Scratch) -> None:
        self.words = mask.view("<u8")
        n = len(self.words)
        self.cum = scratch("cum", n + 1, np.int64)
        self.cum[0] = 0
        np.cumsum(np.bitwise_count(self.words, out=scratch("popcount", n, np.uint8)), out=self.cum[1:])

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        q, r = positions // 8, (positions % 8).astype(np.uint64)
        low_bytes = (np.uint64(1) << (np.uint64(8) * r)) - np.uint64(1)  # the word's first r bytes (little-endian)
        return self.cum[q] + np.bitwise_count(self.words[q] & low_bytes)


def text_keys(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A cheap 64-bit key of each string, from its length and its first, middle and last 8 bytes: equal strings
    have equal keys, so a string whose key no other string has is unique (the converse needs a real comparison)."""
    arr = pc.cast(arr, pa.large_string())
    chunks = arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]
    keys = [_text_keys(c) for c in chunks]
    return np.concatenate(keys) if keys else np.zeros(0, dtype=np.uint64)


def _text_keys(arr: pa.Array) -> np.ndarray:
    offsets, data = _string_buffers(arr)
    start, length = offsets[:-1], np.diff(offsets)
    key = length.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    if len(data) < 8:
        return key
    short = length < 8  # their 8 bytes would reach into the neighbours: the length alone keys them
    for at in (start, start + length // 2 - 4, start + length - 8):
        at = np.clip(at, 0, len(data) - 8)
        word = np.zeros(len(at), dtype=np.uint64)
        for k in range(8):
            word |= data[at + k].astype(np.uint64) << np.uint64(8 * k)
        word[short] = 0
        key = (key ^ word) * np.uint64(0xBF58476D1CE4E5B9)
    return key


def normalize_ids(arr: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray:
    """Strip whitespace, an ``arXiv:`` prefix and the version suffix: ``arXiv:2401.01234v3`` -> ``2401.01234``."""
    arr = pc.utf8_trim_whitespace(pc.cast(arr, pa.large_string()))
    arr = pc.replace_substring_regex(arr, r"^(?i:arxiv:)", "")
    return pc.replace_substring_regex(arr, r"v\d+$", "")


def _on_distinct(fn: Callable[[pa.Array], pa.Array], arr: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """``fn(arr)`` for an element-wise ``fn``, computed once per distinct value (subject labels repeat millions of
    times but have a few hundred values)."""
    if isinstance(arr, pa.ChunkedArray):
        chunks = [_on_distinct(fn, c) for c in arr.chunks]
        return pa.chunked_array(chunks, type=chunks[0].type) if chunks else fn(arr)
    enc = pc.dictionary_encode(arr)
    return fn(enc.dictionary).take(enc.indices)


def _to_code(arr: pa.Array) -> pa.Array:
    arr = pc.utf8_trim_whitespace(pc.cast(arr, pa.large_string()))
    return pc.replace_substring_regex(arr, r"^.*\(([^()]*)\)$", r"\1")


def to_code(arr: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray:
    """``"Machine Learning (cs.LG)"`` -> ``"cs.LG"``; bare codes pass through unchanged."""
    return _on_distinct(_to_code, pc.cast(arr, pa.large_string()))


def is_code(arr: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray:
    return pc.fill_null(_on_distinct(lambda a: pc.match_substring_regex(a, CODE_PATTERN), arr), False)


def _parse_subjects(arr: pa.ChunkedArray | None, want_first: bool) -> tuple[pa.ListArray | None, pa.Array | None]:
    """A raw ``subjects`` column -> (lists of valid bare codes, the first label of each row as a code when
    ``want_first``). A ``;``-joined string column is parsed once per distinct string (the same few thousand label
    combinations repeat across millions of rows), and the results are spread back by index."""
    if arr is None:
        return None, None
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        enc = pc.dictionary_encode(pc.fill_null(arr, ""))
        labels = _label_lists(enc.dictionary)
        first = _first_label(labels).take(enc.indices) if want_first else None
        return _subject_codes_lists(labels).take(enc.indices), first
    labels = _label_lists(arr)
    return _subject_codes_lists(labels), _first_label(labels) if want_first else None


def _label_lists(arr: pa.ChunkedArray | pa.Array) -> pa.ListArray:
    """A ``subjects`` column (list of labels, or one ``;``-joined string) as lists of trimmed labels."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        arr = _on_distinct(lambda a: pc.split_pattern(a, ";"), pc.fill_null(arr, ""))
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
    table, valid = normalize_columns(dict(zip(raw.column_names, raw.columns, strict=True)), keep_columns)
    if not valid.all():
        table = table.filter(pa.array(valid))
    return table, int((~valid).sum())


def normalize_columns(
    columns: dict[str, pa.ChunkedArray], keep_columns: list[str] | tuple[str, ...] = ()
) -> tuple[pa.Table, np.ndarray]:
    """:func:`normalize` of a raw table given as its ``columns`` by name, without the final filter: returns every row,
    normalized, and the mask of rows whose primary subject is a valid arXiv code.

    ``columns`` is consumed: each raw column is removed from it once its normalized form is built, and the text
    columns are released chunk by chunk, so that when the caller holds no other reference the raw text and the
    normalized text are never both whole in memory. The caller can also fold the filter into later ones instead of
    copying the table.
    """
    names = list(columns)
    clash = [c for c in keep_columns if c in NORMALIZED_COLUMNS]
    if clash:
        raise ConfigError(
            f"preprocess.keep_columns={list(keep_columns)} names {clash}, which the processed splits always hold "
            f"(cleaned: whitespace collapsed, ids without version, subjects as codes); keep_columns is for extra "
            "source columns such as [submission_date, authors]. Remove "
            f"{', '.join(clash)} from it."
        )
    missing = [c for c in keep_columns if c not in names]
    if missing:
        raise ConfigError(
            f"preprocess.keep_columns names {missing}, which the input does not have; it has: {', '.join(names)}."
        )
    kept = {name: columns[name] for name in keep_columns}
    subjects, first = _parse_subjects(columns.pop("subjects", None), want_first="primary_subject" not in columns)
    # Without a primary_subject column the first label is the primary (load_raw guarantees one of the two).
    primary = to_code(columns.pop("primary_subject")).combine_chunks() if "primary_subject" in columns else first
    if primary is None:
        raise ConfigError(f"Input has neither a primary_subject nor a subjects column; it has: {', '.join(names)}.")
    if subjects is None:
        subjects = pa.ListArray.from_arrays(
            pa.array(np.arange(len(primary) + 1, dtype=np.int32)), pc.cast(primary, pa.string())
        )
    valid = is_code(primary).to_numpy(zero_copy_only=False)
    primary = pc.fill_null(primary, "")
    subjects = primary_first(primary, subjects)
    normalized = {"arxiv_id": normalize_ids(columns.pop("arxiv_id"))}
    for name in ("title", "abstract"):
        normalized[name] = _collapse_chunks(list(pc.cast(columns.pop(name), pa.large_string()).chunks))
    normalized.update({"primary_subject": primary, "subjects": subjects, **kept})
    columns.clear()
    return pa.table(normalized), valid


def take_rows(values: pa.ChunkedArray | pa.Array, rows: np.ndarray) -> pa.Array:
    """``values.take(rows)`` as one array, without ``ChunkedArray.take``'s first step, a concatenation of all the
    chunks (a full copy of the column however few rows are taken). See :class:`RowTaker`."""
    return RowTaker(values)(rows)


def _under_2gib(arr: pa.Array, max_bytes: int = 1 << 30) -> list[pa.Array]:
    """A large_string array as zero-copy pieces of at most ``max_bytes`` of text, each with its own offsets (string
    views address their data with int32 offsets, so Arrow will not cast a larger array to string_view)."""
    offsets, _ = _string_buffers(arr)
    if offsets[-1] - offsets[0] <= max_bytes:
        return [arr]
    data = arr.buffers()[2]
    valid = arr.is_valid().to_numpy(zero_copy_only=False) if arr.null_count else None
    pieces = []
    for r0, r1 in _row_blocks(offsets, max_bytes):
        start, end = int(offsets[r0]), int(offsets[r1])
        rebased = pa.py_buffer(np.ascontiguousarray(offsets[r0 : r1 + 1] - start))
        bitmap, nulls = None, 0
        if valid is not None:
            bitmap, nulls = pa.py_buffer(np.packbits(valid[r0:r1], bitorder="little")), int((~valid[r0:r1]).sum())
        buffers = [bitmap, rebased, data.slice(start, end - start)]
        pieces.append(pa.Array.from_buffers(pa.large_string(), r1 - r0, buffers, null_count=nulls))
    return pieces


class RowTaker:
    """``taker(rows)``: ``values.take(rows)`` as one array, for many ``rows`` from the same column.

    A large_string column is gathered as string views into its chunks' own buffers (made once, 16 bytes a row), then
    cast back: each taken string is copied once, and nothing the size of the column is allocated per call. Other
    multi-chunk columns are taken chunk by chunk and put back in order.
    """

    def __init__(self, values: pa.ChunkedArray | pa.Array) -> None:
        if isinstance(values, pa.ChunkedArray) and values.num_chunks == 1:
            values = values.chunk(0)
        self.values = values
        self.type = values.type
        self.views: np.ndarray | None = None
        if isinstance(values, pa.ChunkedArray) and pa.types.is_large_string(values.type):
            self._index_views(values)

    def _index_views(self, values: pa.ChunkedArray) -> None:
        # A string view is 16 bytes: int32 length, then the string itself when it has at most 12 bytes, else a 4-byte
        # prefix, the int32 index of its data buffer and its int32 offset there. Casting a chunk to string_view points
        # the views at the chunk's data without copying it; the buffer indices are renumbered to follow one another.
        views: list[np.ndarray] = []
        valid: list[np.ndarray] = []
        self.data: list[pa.Buffer] = []
        for chunk in (piece for c in values.chunks for piece in _under_2gib(c)):
            v = pc.cast(chunk, pa.string_view())
            buffers = v.buffers()
            v32 = np.frombuffer(buffers[1], dtype="<i4").reshape(-1, 4)[v.offset : v.offset + len(v)].copy()
            if v.null_count:
                v32[v.is_null().to_numpy(zero_copy_only=False)] = 0
            v32[v32[:, 0] > 12, 2] += len(self.data)
            views.append(v32)
            self.data.extend(buffers[2:])
            valid.append(v.is_valid().to_numpy(zero_copy_only=False) if v.null_count else np.ones(len(v), dtype=bool))
        self.views = np.concatenate(views) if views else np.zeros((0, 4), dtype="<i4")
        self.valid = np.concatenate(valid) if valid else np.zeros(0, dtype=bool)

    def __call__(self, rows: np.ndarray) -> pa.Array:
        rows = np.asarray(rows, dtype=np.int64)
        values = self.values
        if isinstance(values, pa.Array):
            return values.take(pa.array(rows))
        if len(rows) == 0 or values.num_chunks == 0:
            return pa.array([], type=self.type)
        if self.views is not None:
            taken = np.ascontiguousarray(self.views[rows])
            ok = self.valid[rows]
            n_null = int(len(rows) - ok.sum())
            bitmap = pa.py_buffer(np.packbits(ok, bitorder="little")) if n_null else None
            buffers = [bitmap, pa.py_buffer(taken), *self.data]
            return pc.cast(pa.Array.from_buffers(pa.string_view(), len(rows), buffers, null_count=n_null), self.type)
        bounds = np.cumsum([0] + [len(c) for c in values.chunks])
        which = np.searchsorted(bounds, rows, side="right") - 1
        order = np.argsort(which, kind="stable")
        edges = np.searchsorted(which[order], np.arange(values.num_chunks + 1))
        pieces = [
            values.chunk(k).take(pa.array(rows[order[lo:hi]] - bounds[k]))
            for k, (lo, hi) in enumerate(itertools.pairwise(edges))
            if hi > lo
        ]
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return pa.concat_arrays(pieces).take(pa.array(inverse))

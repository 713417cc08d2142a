"""File helpers shared by the stages: artifact paths (local or in a bucket), atomic writes, content hashes, JSON.

Artifact paths come from the ``paths`` config group. With ``paths=local`` they are plain :class:`pathlib.Path`
objects and every helper here behaves exactly as a local-only version would. With ``paths=gcs`` they are
``gs://bucket/...`` URLs: :func:`artifact_path` turns them into :class:`upath.UPath` objects backed by gcsfs, which
offer the same pathlib operations (``/``, ``name``, ``parent``, ``with_name``, ``exists``, ``is_file``, ``glob``,
``read_text``, ``open``...), so a stage builds, checks and lists its paths with one code path. What pathlib cannot
do on a bucket goes through the helpers below: :func:`read_parquet`, :func:`parquet_file`, :func:`read_json`,
:func:`write_json`, :func:`atomic_dir`, :func:`publish_dir`, :func:`tree_sha256`, and :func:`local_copy` for code
that reads only local files (a sentence-transformers model folder, an ONNX export).

Atomicity in a bucket. GCS has objects, not folders, and no rename. A single object is written in one upload and
appears only once the upload is complete, so :func:`atomic_write_text` / :func:`write_json` stay all-or-nothing.
:func:`atomic_dir` for a ``gs://`` target yields a local staging folder (under ``$TMPDIR``) that the stage fills
with ordinary local file code; on success the files are uploaded to a temporary prefix beside the target
(``.<name>.tmp-<id>/``), then copied into place object by object on the server side (no second upload; a
``manifest.json`` last), objects of the old version that the new one lacks are deleted, and the temporary prefix
is removed. A failure while the stage runs or while uploading leaves the target exactly as it was. A failure during
the final server-side copies can leave a mix of old and new objects; the stage's stamp is written only after
``atomic_dir`` returns and records the hashes of the outputs, so the next run sees the mismatch and runs the stage
again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from upath import UPath

# pyarrow is imported by the functions that read or write parquet, so that what only needs paths, JSON and atomic
# writes (the ONNX serving path) does not load it.

_CHUNK = 8 * 1024 * 1024
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


# -------------------------------------------------------------------------------------------- artifact paths
def is_remote(path: str | os.PathLike[str] | UPath) -> bool:
    """True for a URL with a protocol other than ``file://`` (``gs://bucket/...``, ``memory://...``)."""
    match = _URL.match(str(path))
    return bool(match) and match.group(1).lower() != "file"  # type: ignore[union-attr]


def _storage_options(protocol: str) -> dict[str, Any]:
    """Options for the file system of ``protocol``.

    With ``STORAGE_EMULATOR_HOST`` set (a local GCS emulator, as in the tests), gs:// uses gcsfs's plain
    GCSFileSystem without credentials: the extended one that gcsfs picks by default also calls the Storage Control
    gRPC API to learn each bucket's layout, which emulators do not serve (each call would retry for 30 s).
    """
    if protocol in ("gs", "gcs") and os.environ.get("STORAGE_EMULATOR_HOST"):
        import fsspec
        from gcsfs.core import GCSFileSystem

        for name in ("gs", "gcs"):
            fsspec.register_implementation(name, GCSFileSystem, clobber=True)
        return {"token": "anon"}
    return {}


def artifact_path(path: str | os.PathLike[str] | UPath) -> Path:
    """The path of an artifact: a :class:`pathlib.Path` for a local path (unchanged behaviour), a
    :class:`upath.UPath` for a URL such as ``gs://bucket/prefix/data/processed``.

    Typed as ``Path`` because a UPath offers the pathlib operations the stages use; calls outside pathlib
    (``open()``, ``os.replace``, pyarrow's readers) must go through this module's helpers.
    """
    if isinstance(path, Path):
        return path
    text = str(path)
    if not is_remote(text):
        return Path(text[len("file://") :] if text.startswith("file://") else text)
    from upath import UPath

    if isinstance(path, UPath):
        return cast(Path, path)
    protocol = _URL.match(text).group(1).lower()  # type: ignore[union-attr]
    return cast(Path, UPath(text, **_storage_options(protocol)))


def _remote(path: str | os.PathLike[str] | UPath) -> UPath:
    return cast("UPath", artifact_path(path))


def exists(path: str | os.PathLike[str] | UPath) -> bool:
    """Whether a file or folder (a non-empty prefix in a bucket) exists."""
    return artifact_path(path).exists()


def read_parquet(path: str | os.PathLike[str] | UPath, columns: list[str] | None = None) -> pa.Table:
    """``pq.read_table(path, columns=columns)``, for a local path or a bucket URL."""
    import pyarrow.parquet as pq

    if not is_remote(path):
        return pq.read_table(path, columns=columns)
    remote = _remote(path)
    return pq.read_table(remote.path, columns=columns, filesystem=remote.fs)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_sha256(path: str | Path) -> str:
    """Return the sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") if not is_remote(path) else _remote(path).open("rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _object_hash(fs: Any, info: dict[str, Any]) -> str:
    """Content hash of an object from its metadata (GCS keeps an MD5 of every object uploaded in one piece, a
    CRC32C of all), so checking a stage's inputs and outputs in a bucket downloads nothing. Streams the bytes
    where the store keeps neither."""
    if info.get("md5Hash"):
        return f"md5:{info['md5Hash']}"
    if info.get("crc32c"):
        return f"crc32c:{info['crc32c']}:{info.get('size')}"
    digest = hashlib.sha256()
    with fs.open(info["name"], "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _remote_tree_sha256(path: UPath) -> str:
    fs, root = path.fs, path.path.rstrip("/")
    if fs.isfile(root):
        return _object_hash(fs, fs.info(root))
    return _listing_sha256(fs, root, fs.find(root, detail=True))


def _listing_sha256(fs: Any, root: str, listing: dict[str, dict[str, Any]]) -> str:
    """:func:`tree_sha256` of a bucket folder from its listing (``fs.find(root, detail=True)``)."""
    digest = hashlib.sha256()
    for name, info in sorted(listing.items()):
        digest.update(name[len(root) :].lstrip("/").encode())
        digest.update(_object_hash(fs, info).encode())
    return digest.hexdigest()


def tree_sha256(path: str | Path) -> str:
    """Hash a file, or every file below a folder (names and bytes), in a stable order.

    In a bucket the bytes are represented by each object's stored checksum (see :func:`_object_hash`), so a hash
    is stable for unchanged objects but differs from the hash of the same bytes on local disk.
    """
    if is_remote(path):
        return _remote_tree_sha256(_remote(path))
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(child.relative_to(path)).encode())
        digest.update(file_sha256(child).encode())
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder that replaces ``target`` only if the block succeeds.

    The temporary folder lives beside ``target`` (same file system, so the final rename is atomic).
    On an exception it is removed and ``target`` is left exactly as it was. For a bucket URL the folder is a local
    staging folder, published as described in the module docstring.
    """
    if is_remote(target):
        with _atomic_remote_dir(_remote(target)) as local:
            yield local
        return
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    backup = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        os.replace(target, backup)
    os.replace(tmp, target)
    shutil.rmtree(backup, ignore_errors=True)


@contextlib.contextmanager
def _atomic_remote_dir(target: UPath) -> Iterator[Path]:
    local = Path(tempfile.mkdtemp(prefix=f"{target.name}.staging-"))
    try:
        yield local
        _publish_remote(local, target)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def _publish_remote(local: Path, target: UPath) -> None:
    """Replace the bucket folder ``target`` with the files of the local folder ``local`` (module docstring)."""
    fs, root = target.fs, target.path.rstrip("/")
    files = sorted((p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()), key=_publish_order)
    staging = f"{root.rsplit('/', 1)[0]}/.{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        if files:
            fs.put([str(local / f) for f in files], [f"{staging}/{f}" for f in files])
            # Into place with server-side copies (concurrent), manifests in a last batch.
            last = [f for f in files if _publish_order(f)[0]]
            for batch in ([f for f in files if f not in last], last):
                if batch:
                    fs.copy([f"{staging}/{f}" for f in batch], [f"{root}/{f}" for f in batch])
        new = set(files)
        old = [n for n in (fs.find(root) if fs.exists(root) else []) if n[len(root) :].lstrip("/") not in new]
        if old:
            fs.rm(old)
    finally:
        with contextlib.suppress(FileNotFoundError):
            fs.rm(staging, recursive=True)
        fs.invalidate_cache(root)


def publish_dir(source: str | Path, target: str | Path) -> Path:
    """Replace the folder ``target`` (local, or in a bucket) with a copy of the local folder ``source``, all at once
    as :func:`atomic_dir` does; ``source`` is left as it is. Returns ``target`` as an artifact path."""
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"Nothing to publish: {source} is not a folder.")
    if is_remote(target):
        remote = _remote(target)
        _publish_remote(source, remote)
        return cast(Path, remote)
    with atomic_dir(target) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
    return Path(target)


_HASH_DIR = re.compile(r"^[0-9a-f]{16}$")


def local_copy(path: str | os.PathLike[str] | UPath, cache_dir: str | os.PathLike[str]) -> Path:
    """A folder on local disk with the files of the folder ``path``, for code that reads only local files (a
    sentence-transformers model, an ONNX export).

    A local ``path`` is returned as it is. A bucket folder is downloaded once per content into
    ``<cache_dir>/<bucket-and-path>/<content hash>/``: the hash is :func:`tree_sha256`'s, taken from one listing of
    the objects' stored checksums, so finding a copy up to date downloads nothing. The download goes to a temporary
    folder renamed into place, so a copy is complete or absent; copies of older versions of the same folder are
    removed. Raises :class:`FileNotFoundError` when there is nothing at ``path``.
    """
    if not is_remote(path):
        return artifact_path(path)
    if is_remote(cache_dir):
        raise ValueError(f"The cache folder for copies of bucket files must be on local disk, got {cache_dir}.")
    remote = _remote(path)
    fs, root = remote.fs, remote.path.rstrip("/")
    listing = fs.find(root, detail=True)
    if not listing:
        raise FileNotFoundError(f"Nothing at {remote}.")
    digest = _listing_sha256(fs, root, listing)[:16]
    parent = Path(cache_dir).expanduser() / re.sub(r"[^A-Za-z0-9._-]+", "--", f"{remote.protocol}/{root}")
    target = parent / digest
    if target.is_dir():
        return target
    _download(fs, root, sorted(listing), target)
    for old in parent.iterdir():
        if old.is_dir() and old != target and _HASH_DIR.match(old.name):
            shutil.rmtree(old, ignore_errors=True)
    return target


def _download(fs: Any, root: str, names: list[str], target: Path) -> None:
    """Download the objects ``names`` below ``root`` into a temporary folder renamed to ``target`` (which must not
    exist; if another process creates it meanwhile, its copy is kept)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.download-", dir=target.parent))
    try:
        fs.get(names, [str(tmp / n[len(root) :].lstrip("/")) for n in names])
        try:
            os.replace(tmp, target)
        except OSError:  # another process put the same folder there first
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download_dir(source: str | os.PathLike[str] | UPath, target: str | Path) -> Path:
    """Copy the bucket folder ``source`` to the new local folder ``target``, complete or not at all. Raises
    :class:`FileExistsError` when ``target`` exists, :class:`FileNotFoundError` when there is nothing at ``source``."""
    target = Path(target)
    if target.exists():
        raise FileExistsError(f"Not downloading {source} over the existing {target}.")
    remote = _remote(source)
    fs, root = remote.fs, remote.path.rstrip("/")
    names = sorted(fs.find(root))
    if not names:
        raise FileNotFoundError(f"Nothing at {remote}.")
    _download(fs, root, names, target)
    return target


def remove_tree(path: str | os.PathLike[str] | UPath) -> None:
    """Delete a file or a folder with everything below it, local or in a bucket; nothing there is not an error."""
    if not is_remote(path):
        local = artifact_path(path)
        if local.is_dir():
            shutil.rmtree(local)
        else:
            local.unlink(missing_ok=True)
        return
    remote = _remote(path)
    with contextlib.suppress(FileNotFoundError):
        remote.fs.rm(remote.path.rstrip("/"), recursive=True)
    remote.fs.invalidate_cache(remote.path.rstrip("/"))


@contextlib.contextmanager
def parquet_file(path: str | os.PathLike[str] | UPath) -> Iterator[pq.ParquetFile]:
    """``pq.ParquetFile`` of a local path or a bucket URL (read in row groups or batches, not all at once)."""
    import pyarrow.parquet as pq

    if not is_remote(path):
        with pq.ParquetFile(path) as f:
            yield f
        return
    with _remote(path).open("rb") as fh, pq.ParquetFile(fh) as f:
        yield f


def _publish_order(name: str) -> tuple[bool, str]:
    return (name.rsplit("/", 1)[-1] == "manifest.json", name)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text to ``path`` through a temporary file and a rename (in a bucket: one upload, atomic by itself)."""
    if is_remote(path):
        remote = artifact_path(path)
        remote.write_text(text, encoding="utf-8")
        return remote
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    if is_remote(path):
        return json.loads(artifact_path(path).read_text(encoding="utf-8"))
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


PARQUET_COMPRESSION = "zstd"
PARQUET_ROW_GROUP_SIZE = 65_536


def write_parquet(table: pa.Table, path: str | Path) -> Path:
    """Write a table as zstd parquet without the pandas index metadata (same rows, same bytes)."""
    import pyarrow.parquet as pq

    path = Path(path)
    table = table.replace_schema_metadata(None)
    pq.write_table(table, path, compression=PARQUET_COMPRESSION, row_group_size=PARQUET_ROW_GROUP_SIZE)
    return path


def write_parquet_row_groups(row_groups: Iterable[pa.Table], schema: pa.Schema, path: str | Path) -> Path:
    """:func:`write_parquet` of a table given one row group at a time (``PARQUET_ROW_GROUP_SIZE`` rows each, the
    last one shorter): the same bytes, with only one row group in memory instead of the whole table."""
    import pyarrow.parquet as pq

    path = Path(path)
    with pq.ParquetWriter(path, schema.remove_metadata(), compression=PARQUET_COMPRESSION) as writer:
        for table in row_groups:
            writer.write_table(table.replace_schema_metadata(None), row_group_size=PARQUET_ROW_GROUP_SIZE)
    return path

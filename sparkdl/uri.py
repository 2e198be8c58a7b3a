"""Locations, the one module for them: table paths normalized to URIs, catalog names told apart, and files and
folders (tables, caches, data files) reached from Python through pyarrow filesystems.

Local paths become absolute `file:///...` URIs. Data-file locations handed to Spark are *not* percent-encoded:
Spark (Hadoop `Path`) and pyarrow take the literal file name, so `p=a b/part-0.parquet` stays as it is on disk.
"""
from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlparse

from sparkdl.errors import TableError

# `name`, `db.name` or `catalog.db.name`, optionally back-quoted parts.
_CATALOG_NAME = re.compile(r"^(`[^`]+`|[A-Za-z_][A-Za-z0-9_]*)(\.(`[^`]+`|[A-Za-z_][A-Za-z0-9_]*)){0,2}$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def normalize_table_uri(table: str | os.PathLike) -> str:
    """The canonical URI of a table location: local paths (plain or `file:`) as absolute `file:///...`.

    Other schemes (`s3://`, `gs://`, `abfss://`, `hdfs://`, ...) are kept as given, minus a trailing slash.

    Raises:
        TableError: `table` is empty or not a string/path.
    """
    if isinstance(table, os.PathLike):
        table = os.fspath(table)
    if not isinstance(table, str) or not table.strip():
        raise TableError(f"table must be a non-empty path, URI or catalog name, got {table!r}")
    table = table.strip()
    if table.startswith("file:"):
        path = unquote(urlparse(table).path) if table.startswith("file://") else table[len("file:"):]
        return Path(path).expanduser().resolve().as_uri()
    if _SCHEME.match(table) and not re.match(r"^[A-Za-z]:[\\/]", table):  # not a Windows drive letter
        return table.rstrip("/")
    return Path(table).expanduser().resolve().as_uri()


def is_catalog_name(table: str) -> bool:
    """True when `table` looks like `[catalog.][db.]name` and is not an existing local path."""
    if not isinstance(table, str) or "/" in table or "\\" in table or _SCHEME.match(table):
        return False
    return bool(_CATALOG_NAME.match(table)) and not Path(table).exists()


def local_path(uri: str) -> str | None:
    """The local filesystem path of a `file:` URI (percent-decoded) or of a plain path (made absolute); None for
    other schemes."""
    if uri.startswith("file:"):
        return unquote(urlparse(uri).path) if uri.startswith("file://") else uri[len("file:"):]
    if not _SCHEME.match(uri) or re.match(r"^[A-Za-z]:[\\/]", uri):
        return os.path.abspath(uri)
    return None


def join_table_path(table_uri: str, relative: str) -> str:
    """The location of a data file: `relative` is the log's path, percent-decoded, or an absolute URI.

    Returns the literal (not percent-encoded) location, the form Spark and pyarrow accept.
    """
    decoded = unquote(relative)
    if _SCHEME.match(decoded) and "://" in decoded or decoded.startswith("file:"):
        if decoded.startswith("file:"):
            return "file://" + unquote(urlparse(relative).path)
        return decoded
    if table_uri.startswith("file:"):
        return "file://" + local_path(table_uri).rstrip("/") + "/" + decoded
    return table_uri.rstrip("/") + "/" + decoded


def filesystem(uri: str):
    """A pyarrow filesystem and the path inside it for `uri` (pyarrow's own, else through fsspec).

    Raises:
        TableError: neither pyarrow nor fsspec can open the location.
    """
    import pyarrow.fs as pafs

    path = local_path(uri)
    if path is not None:
        return _local_filesystem(), path
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # noqa: BLE001 - fall back to fsspec below
        first = exc
    try:
        import fsspec

        fs, fs_path = fsspec.core.url_to_fs(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), fs_path
    except Exception as exc:  # noqa: BLE001
        raise TableError(f"cannot open {uri} from Python (pyarrow: {first}; fsspec: {exc}); the delta-rs backend "
                         f"and the caches need that storage reachable from the driver and workers") from exc


@lru_cache(maxsize=1)
def _local_filesystem():
    import pyarrow.fs as pafs

    return pafs.LocalFileSystem()


def same_file(a: str, b: str) -> bool:
    """Whether two URIs/paths name the same file (scheme-insensitive for local files, percent-decoded)."""
    return normalized(a) == normalized(b)


def normalized(uri: str) -> str:
    """A comparable form of a location: `file:` + the normalized local path, else the decoded URI."""
    path = local_path(uri)
    if path is not None:
        return "file:" + os.path.normpath(unquote(path))
    return unquote(uri).rstrip("/")


def join(url: str, name: str) -> str:
    """`url` + "/" + `name`."""
    return url.rstrip("/") + "/" + name

"""Reaching Parquet files and cache folders by URI from Python (local `file:` paths and pyarrow filesystems)."""
from __future__ import annotations

import os
from functools import lru_cache
from urllib.parse import unquote, urlparse

import pyarrow.fs as pafs


def local_path(uri: str) -> str | None:
    """The local path of a `file:` URI or a plain path; None for other schemes."""
    if uri.startswith("file:"):
        rest = uri[len("file:"):]
        if rest.startswith("//"):
            parsed = urlparse(uri)
            return unquote(parsed.path) if "%" in parsed.path else parsed.path
        return rest
    if "://" not in uri:
        return os.path.abspath(uri)
    return None


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a file or folder URI."""
    path = local_path(uri)
    if path is not None:
        return _local(), path
    return pafs.FileSystem.from_uri(uri)


@lru_cache(maxsize=1)
def _local() -> pafs.LocalFileSystem:
    return pafs.LocalFileSystem()


def same_file(a: str, b: str) -> bool:
    """Whether two URIs/paths name the same file (scheme-insensitive for local files, percent-decoded)."""
    return _norm(a) == _norm(b)


def _norm(uri: str) -> str:
    path = local_path(uri)
    if path is not None:
        return "file:" + os.path.normpath(unquote(path))
    return unquote(uri).rstrip("/")


def join(url: str, name: str) -> str:
    """`url` + "/" + `name`."""
    return url.rstrip("/") + "/" + name

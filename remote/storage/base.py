"""The permanent-storage contract of dits-remote: a flat key -> bytes space, create-only.

The docstrings of :class:`PermanentStorage` ARE the contract; ``tests/remote/
test_storage_contract.py`` checks every backend against them. The server keeps its own LMDB
index of what it stored, so a backend never answers "have chunk X?" per chunk: it only needs
create-only puts, whole and ranged gets, sizes, deletes and listing.

Keys are validated here (:func:`validate_key`) and nowhere else: relative, ``/``-separated,
components of ``[A-Za-z0-9._-]`` that are not ``.`` or ``..``. A key never reaches a file
system or an S3 request unvalidated, so no caller can escape the storage root.

Errors: every failure is a :class:`StorageError` (a ``DitsError`` with the I/O exit code) whose
``transient`` flag tells a retry layer whether trying again may help. Messages name the key,
never a server path or a credential.

This module must not import boto3 (``open_storage`` imports the S3 backend lazily, so a server on
the local backend never pays for it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from dits.errors import EXIT_CORRUPT, EXIT_IO, DitsError, ObjectNotFoundError
from dits.errors import StorageFullError as _DitsStorageFullError

__all__ = [
    "MAX_KEY_LENGTH",
    "PermanentStorage",
    "StorageConflictError",
    "StorageError",
    "StorageFullError",
    "StorageNotFoundError",
    "StorageUnavailableError",
    "open_storage",
    "validate_key",
    "validate_prefix",
]

MAX_KEY_LENGTH = 900
"""Longest key accepted. S3 allows 1,024 bytes per object name; the rest is left for a prefix."""

_MAX_COMPONENT = 255  # NAME_MAX of every common file system
_COMPONENT = re.compile(r"[A-Za-z0-9._-]+")


class StorageError(DitsError):
    """A permanent-storage operation failed; ``transient`` says whether a retry may succeed."""

    exit_code = EXIT_IO


class StorageUnavailableError(StorageError):
    """The backend did not answer usefully (timeouts, 5xx) even after the client's own retries."""

    transient = True


class StorageConflictError(StorageError):
    """The key already holds different bytes. Nothing was overwritten.

    Keys are content hashes the server verified before the put, so two different byte strings
    under one key mean the stored copy is damaged: hence the "corrupt" exit code.
    """

    exit_code = EXIT_CORRUPT


class StorageNotFoundError(StorageError, ObjectNotFoundError):
    """The key does not exist. Also an ``ObjectNotFoundError``, so the server's mapping applies."""

    exit_code = EXIT_CORRUPT


class StorageFullError(StorageError, _DitsStorageFullError):
    """The disk or quota is full; the failed put left nothing visible.

    Also a ``dits.errors.StorageFullError``, so code written for the client's stores catches it.
    """

    exit_code = EXIT_IO


@runtime_checkable
class PermanentStorage(Protocol):
    """Immutable objects under validated keys. Implementations are safe to share across threads.

    Attributes:
        url: where the objects live, ``file:///abs/path`` or ``s3://bucket/prefix``; contains no
            credentials and round-trips through :func:`open_storage` (plus the S3 endpoint).
    """

    url: str

    def put(self, key: str, data: bytes | memoryview) -> bool:
        """Store ``data`` under ``key`` unless the key exists. Never overwrites.

        Durable when it returns: a crash or power loss afterwards keeps the object. A crash
        during the call leaves either the complete object or nothing visible (a local backend
        may leave an unlisted temporary file for :meth:`LocalStorage.sweep_tmp`).

        Returns:
            True if this call created the object; False if the key already held exactly these
            bytes (verified by reading them back). False can also mean that a retried request
            of this very call created it, so callers treat both values as "stored".

        Raises:
            ValueError: the key is invalid (:func:`validate_key`).
            StorageConflictError: the key holds different bytes; they are left unchanged.
            StorageFullError: no space; nothing became visible.
            StorageError: any other failure (``transient`` set for timeouts and 5xx).
        """
        ...

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        """Return ``length`` bytes of the object from offset ``start`` (to the end if None).

        A range reaching past the end is cut short, like a slice: a ``start`` at or past the
        end returns ``b""``. The bytes are not verified here; the caller re-hashes them.

        Raises:
            ValueError: invalid key, or a negative ``start`` or ``length``.
            StorageNotFoundError: the key does not exist.
        """
        ...

    def size(self, key: str) -> int | None:
        """Return the object's length in bytes, or None if the key does not exist."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object. Idempotent: deleting an absent key succeeds.

        Not necessarily durable on return: a crash may resurrect a deleted object, which the
        server's orphan sweep removes again (bytes go only after their index entry).
        """
        ...

    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield every key that starts with ``prefix`` (a plain string prefix), in no set order.

        Keys created or deleted while iterating may or may not appear. Objects that are not
        valid keys (temporary files, foreign objects in a shared bucket) are skipped.

        Raises:
            ValueError: ``prefix`` could not start any valid key (:func:`validate_prefix`).
        """
        ...

    def probe(self) -> None:
        """Check at start-up that the backend is reachable, writable and honours create-only.

        Raises:
            StorageError: with one line saying what is wrong (for S3, e.g. an endpoint that
                ignores ``If-None-Match`` and would silently overwrite objects).
        """
        ...

    def close(self) -> None:
        """Release connections and file handles. The object must not be used afterwards."""
        ...


def validate_key(key: str) -> None:
    """Reject keys that could escape the storage root or that a backend cannot store.

    Raises:
        ValueError: empty, longer than :data:`MAX_KEY_LENGTH`, absolute, with an empty, ``.``
            or ``..`` component, or with characters outside ``[A-Za-z0-9._-]`` and ``/``.
    """
    if not isinstance(key, str) or not key:
        raise ValueError("storage key must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"storage key longer than {MAX_KEY_LENGTH} characters")
    for part in key.split("/"):
        _validate_component(part, key)


def validate_prefix(prefix: str) -> None:
    """Check a :meth:`PermanentStorage.list` prefix: a key, a key plus ``/``, or a key's start.

    Raises:
        ValueError: the prefix could not start any valid key.
    """
    if not isinstance(prefix, str):
        raise ValueError("storage prefix must be a string")
    head, _, tail = prefix.rpartition("/")
    if head or prefix.startswith("/"):
        validate_key(head)
    if tail and not _COMPONENT.fullmatch(tail):
        raise ValueError(f"invalid storage prefix {prefix!r}")


def _validate_component(part: str, key: str) -> None:
    # fullmatch on a str pattern: no NUL, no control characters, no non-ASCII look-alikes.
    if part in ("", ".", "..") or len(part) > _MAX_COMPONENT or not _COMPONENT.fullmatch(part):
        raise ValueError(f"invalid storage key {key!r}")


def open_storage(url: str, *, s3_endpoint: str | None = None) -> PermanentStorage:
    """Open the backend a URL names.

    Args:
        url: ``file:///abs/path`` or a plain path (local folder, created if missing), or
            ``s3://bucket`` / ``s3://bucket/prefix``.
        s3_endpoint: endpoint URL of an S3-compatible service; None means AWS.

    Raises:
        ValueError: unknown scheme, a ``file://`` URL naming another host, or a bad S3 prefix.
    """
    parts = urlsplit(url)
    if parts.scheme == "s3":
        from remote.storage.s3 import S3Storage  # lazy: boto3 takes ~0.3 s to import

        prefix = parts.path.strip("/")
        return S3Storage(parts.netloc, prefix, endpoint_url=s3_endpoint)
    from remote.storage.local import LocalStorage

    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URL names another host: {url!r}")
        return LocalStorage(Path(unquote(parts.path)))
    if parts.scheme == "":
        return LocalStorage(Path(os.path.abspath(url)))
    raise ValueError(f"unsupported storage URL {url!r} (use file:///path or s3://bucket/prefix)")

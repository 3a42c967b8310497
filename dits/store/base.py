"""Storage contracts. The docstrings here ARE the contract; tests/contract checks every backend.

Three small interfaces, each implemented by a dict-backed twin (`memory.py`) and by LMDB
(`lmdb.py`):

* ``BlobStore``: content-addressed values (one instance for chunks, one for objects). Values are
  the plain bytes whose BLAKE3-256 is the key; a backend may compress at rest but always returns
  plain bytes, re-hashed on read.
* ``RefStore``: named refs (``refs/heads/main``) and the symbolic ``HEAD``; updates are
  compare-and-swap only.
* ``IndexStore``: the staging index, path -> IndexEntry.

Errors: missing keys raise ``ObjectNotFoundError``; bytes that do not hash to their id raise
``CorruptObjectError``; a full disk raises ``StorageFullError`` and leaves the store as it was
before the failing call. Every mutating call is atomic: all of its effects become visible, or none.

Durability: ``BlobStore.put_many`` may return before its bytes reach the disk. The reference
points, ``RefStore.update_refs``, ``RefStore.set_head``, ``IndexStore.apply`` and
``IndexStore.replace_all``, are durable when they return, and making them durable flushes every
earlier write to stores sharing their backing storage (for LMDB, the whole environment).
Callers therefore write blobs before anything that references them, so a power loss can lose
only blobs nothing durable points at (for LMDB's caveats see docs/store.md). A crashed or
killed process loses nothing it committed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from dits.core.compression import decode_stored
from dits.core.ids import ObjectId, hash_bytes, short_id
from dits.core.index import IndexEntry
from dits.errors import CorruptObjectError

__all__ = [
    "BlobStats",
    "BlobStore",
    "IndexStore",
    "RefStore",
    "RefUpdate",
    "decode_verified",
    "ref_conflict_message",
]


@dataclass(frozen=True)
class BlobStats:
    """Counts for reports: number of blobs, plain bytes, bytes at rest after compression."""

    count: int
    plain_bytes: int
    stored_bytes: int


@runtime_checkable
class BlobStore(Protocol):
    """Content-addressed store of immutable values keyed by their BLAKE3-256 id."""

    def has_many(self, ids: Iterable[ObjectId]) -> set[ObjectId]:
        """Return the subset of ``ids`` that are present. Never raises for absent ids."""
        ...

    def put_many(self, items: Iterable[tuple[ObjectId, bytes | memoryview]]) -> int:
        """Store every (id, plain bytes) pair in one atomic step; return the bytes written at rest.

        The caller computed the ids; the store trusts them on write (it is the local hot path)
        and verifies on every read. Idempotent: an id already present is skipped and costs
        nothing. Compression at rest is the backend's choice and invisible to readers.
        The batch is never split, so keep it reasonable (about 64 MiB). Not durable by itself:
        see the module docstring.

        Raises:
            StorageFullError: the disk is full; none of the items became visible.
        """
        ...

    def get(self, oid: ObjectId) -> bytes:
        """Return the plain bytes of ``oid``, verified against the id.

        Raises:
            ObjectNotFoundError: ``oid`` is absent.
            CorruptObjectError: the stored bytes do not decode or do not hash to ``oid``.
        """
        ...

    def delete_many(self, ids: Iterable[ObjectId]) -> int:
        """Remove the given ids atomically; absent ids are ignored. Return how many were removed."""
        ...

    def iter_ids(self) -> Iterator[ObjectId]:
        """Yield every id present, in ascending byte order, from one consistent snapshot."""
        ...

    def stats(self) -> BlobStats:
        """Return counts over the whole store."""
        ...


@dataclass(frozen=True)
class RefUpdate:
    """One compare-and-swap: set ``name`` to ``new`` if it currently equals ``expected_old``.

    ``expected_old=None`` means the ref must not exist; ``new=None`` deletes it.
    """

    name: str
    new: ObjectId | None
    expected_old: ObjectId | None


@runtime_checkable
class RefStore(Protocol):
    """Refs (``refs/heads/<branch>``) and the symbolic ``HEAD``."""

    def get_ref(self, name: str) -> ObjectId | None:
        """Return the id a ref points at, or None when it does not exist."""
        ...

    def list_refs(self, prefix: str = "refs/") -> dict[str, ObjectId]:
        """Return every ref whose name starts with ``prefix``, from one consistent snapshot."""
        ...

    def update_refs(self, updates: Iterable[RefUpdate]) -> None:
        """Apply all compare-and-swap updates atomically: all succeed or none is applied.

        Raises:
            ConflictError: some ref's current value differs from its ``expected_old``.
        """
        ...

    def get_head(self) -> str:
        """Return the ref name HEAD points at (for example ``refs/heads/main``)."""
        ...

    def set_head(self, ref_name: str) -> None:
        """Point HEAD at ``ref_name`` (the ref itself need not exist yet: an unborn branch)."""
        ...


@runtime_checkable
class IndexStore(Protocol):
    """The staging index: every tracked path with its stat data and manifest id."""

    def read_all(self) -> dict[str, IndexEntry]:
        """Return a snapshot of every entry, keyed by repository-relative POSIX path."""
        ...

    def get(self, path: str) -> IndexEntry | None:
        """Return one entry or None."""
        ...

    def apply(self, changes: Mapping[str, IndexEntry | None]) -> None:
        """Atomically set (entry) or remove (None) the given paths."""
        ...

    def replace_all(self, entries: Mapping[str, IndexEntry]) -> None:
        """Atomically replace the whole index with ``entries`` (used by checkout)."""
        ...


def decode_verified(kind: str, oid: ObjectId, at_rest: bytes | memoryview, max_size: int) -> bytes:
    """The plain bytes of a stored value, checked against its id (every store's ``get``).

    Raises:
        CorruptObjectError: the value does not decode within ``max_size`` or hashes to
            another id; the message names ``kind`` and the id.
    """
    try:
        plain = decode_stored(at_rest, max_size=max_size)
    except ValueError as exc:
        raise CorruptObjectError(f"{kind} {short_id(oid)} is corrupt: {exc}") from None
    actual = hash_bytes(plain)
    if actual != oid:
        raise CorruptObjectError(
            f"{kind} {short_id(oid)} is corrupt: its bytes hash to {short_id(actual)}"
        )
    return plain


def ref_conflict_message(update: RefUpdate, current: ObjectId | None) -> str:
    """Why a compare-and-swap of ``update`` failed, ``current`` being the ref's value."""
    if update.expected_old is None:
        assert current is not None
        return f"ref {update.name} already exists (at {short_id(current)})"
    if current is None:
        return f"ref {update.name} does not exist (expected {short_id(update.expected_old)})"
    return f"ref {update.name} is at {short_id(current)}, expected {short_id(update.expected_old)}"

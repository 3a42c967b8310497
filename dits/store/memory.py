"""Dict-backed twins of the stores: the fakes every higher-layer test uses.

They pass the same contract suite as the LMDB stores (``tests/contract``), so they are real
implementations, not mocks: values are kept in the at-rest form (``encode_stored``), ``get``
decodes and re-hashes, updates are atomic and thread-safe under one lock per store. They keep
nothing on disk, so durability does not apply. ``MemoryBlobStore.corrupt`` lets tests damage a
stored value.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping

from dits.core.compression import encode_stored, stored_plain_size
from dits.core.ids import ID_LEN, ObjectId, short_id
from dits.core.index import IndexEntry
from dits.errors import ConflictError, ObjectNotFoundError
from dits.store.base import BlobStats, RefUpdate, decode_verified, ref_conflict_message

__all__ = ["MemoryBlobStore", "MemoryIndexStore", "MemoryRefStore"]

DEFAULT_HEAD = "refs/heads/main"
DEFAULT_MAX_VALUE_SIZE = 256 * 1024 * 1024


def _check_id(oid: bytes) -> None:
    if len(oid) != ID_LEN:
        raise ValueError(f"object id must be {ID_LEN} bytes, got {len(oid)}")


class MemoryBlobStore:
    """``BlobStore`` in a dict of at-rest values.

    Args:
        kind: ``"chunk"`` or ``"object"``, used in error messages.
        max_value_size: largest plain value accepted by ``put_many`` and decoded by ``get``.
        compression_level: zstd level for values the compression probe accepts.
    """

    def __init__(
        self,
        kind: str = "chunk",
        *,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
        compression_level: int = 3,
    ) -> None:
        self._kind = kind
        self._max_value_size = max_value_size
        self._level = compression_level
        self._values: dict[ObjectId, bytes] = {}
        self._lock = threading.Lock()

    def has_many(self, ids: Iterable[ObjectId]) -> set[ObjectId]:
        """See ``BlobStore.has_many``."""
        wanted = list(ids)
        with self._lock:
            return {oid for oid in wanted if oid in self._values}

    def put_many(self, items: Iterable[tuple[ObjectId, bytes | memoryview]]) -> int:
        """See ``BlobStore.put_many``.

        Raises:
            ValueError: an id is not 32 bytes or a value exceeds ``max_value_size``.
        """
        batch: dict[ObjectId, bytes | memoryview] = {}
        for oid, value in items:
            _check_id(oid)
            if isinstance(value, memoryview) and (value.format != "B" or value.ndim != 1):
                value = value.cast("B")  # so len() counts bytes
            if len(value) > self._max_value_size:
                raise ValueError(
                    f"{self._kind} {short_id(oid)} has {len(value)} bytes, above the limit of "
                    f"{self._max_value_size}"
                )
            batch.setdefault(oid, value)
        missing = set(batch) - self.has_many(batch)
        encoded = {oid: encode_stored(batch[oid], level=self._level) for oid in missing}
        written = 0
        with self._lock:
            for oid, at_rest in encoded.items():
                if oid not in self._values:
                    self._values[oid] = at_rest
                    written += len(at_rest)
        return written

    def get(self, oid: ObjectId) -> bytes:
        """See ``BlobStore.get``."""
        with self._lock:
            at_rest = self._values.get(oid)
        if at_rest is None:
            raise ObjectNotFoundError(f"{self._kind} {short_id(oid)} not found")
        return decode_verified(self._kind, oid, at_rest, self._max_value_size)

    def delete_many(self, ids: Iterable[ObjectId]) -> int:
        """See ``BlobStore.delete_many``."""
        wanted = set(ids)
        with self._lock:
            removed = [oid for oid in wanted if self._values.pop(oid, None) is not None]
        return len(removed)

    def iter_ids(self) -> Iterator[ObjectId]:
        """See ``BlobStore.iter_ids``."""
        with self._lock:
            snapshot = sorted(self._values)
        yield from snapshot

    def stats(self) -> BlobStats:
        """See ``BlobStore.stats``."""
        with self._lock:
            values = list(self._values.values())
        plain = 0
        for at_rest in values:
            try:
                plain += stored_plain_size(at_rest)
            except ValueError:
                plain += max(len(at_rest) - 1, 0)
        return BlobStats(len(values), plain, sum(len(v) for v in values))

    # -- test hooks --------------------------------------------------------------------------

    def raw(self, oid: ObjectId) -> bytes:
        """Return the at-rest form of ``oid`` (tag byte + payload), for tests.

        Raises:
            ObjectNotFoundError: ``oid`` is absent.
        """
        with self._lock:
            at_rest = self._values.get(oid)
        if at_rest is None:
            raise ObjectNotFoundError(f"{self._kind} {short_id(oid)} not found")
        return at_rest

    def corrupt(self, oid: ObjectId, at_rest: bytes | None = None) -> None:
        """Damage a stored value, for tests: replace its at-rest form or flip its last bit.

        Raises:
            ObjectNotFoundError: ``oid`` is absent.
        """
        with self._lock:
            old = self._values.get(oid)
            if old is None:
                raise ObjectNotFoundError(f"{self._kind} {short_id(oid)} not found")
            if at_rest is None:
                at_rest = old[:-1] + bytes([old[-1] ^ 1])
            self._values[oid] = at_rest


def _check_ref_name(name: str) -> None:
    if not name:
        raise ValueError("ref name is empty")
    name.encode("utf-8")  # the LMDB twin stores names as UTF-8: fail alike


class MemoryRefStore:
    """``RefStore`` in a dict, with HEAD defaulting to ``refs/heads/main``."""

    def __init__(self) -> None:
        self._refs: dict[str, ObjectId] = {}
        self._head = DEFAULT_HEAD
        self._lock = threading.Lock()

    def get_ref(self, name: str) -> ObjectId | None:
        """See ``RefStore.get_ref``."""
        _check_ref_name(name)
        with self._lock:
            return self._refs.get(name)

    def list_refs(self, prefix: str = "refs/") -> dict[str, ObjectId]:
        """See ``RefStore.list_refs``. Names come back in ascending byte order."""
        with self._lock:
            found = [(n, oid) for n, oid in self._refs.items() if n.startswith(prefix)]
        return dict(sorted(found, key=lambda item: item[0].encode("utf-8")))

    def update_refs(self, updates: Iterable[RefUpdate]) -> None:
        """See ``RefStore.update_refs``.

        Raises:
            ConflictError: some ref's current value differs from its ``expected_old``.
            ValueError: a name appears twice, is empty, or an id is not 32 bytes.
        """
        batch = list(updates)
        seen: set[str] = set()
        for update in batch:
            _check_ref_name(update.name)
            if update.name in seen:
                raise ValueError(f"ref {update.name} appears twice in one update")
            seen.add(update.name)
            for oid in (update.new, update.expected_old):
                if oid is not None:
                    _check_id(oid)
        with self._lock:
            for update in batch:
                current = self._refs.get(update.name)
                if current != update.expected_old:
                    raise ConflictError(ref_conflict_message(update, current))
            for update in batch:
                if update.new is None:
                    self._refs.pop(update.name, None)
                else:
                    self._refs[update.name] = update.new

    def get_head(self) -> str:
        """See ``RefStore.get_head``."""
        with self._lock:
            return self._head

    def set_head(self, ref_name: str) -> None:
        """See ``RefStore.set_head``."""
        _check_ref_name(ref_name)
        with self._lock:
            self._head = ref_name


def _check_path(path: str) -> None:
    if not path:
        raise ValueError("index path is empty")
    path.encode("utf-8", "surrogateescape")  # the LMDB twin's key encoding: fail alike


class MemoryIndexStore:
    """``IndexStore`` in a dict."""

    def __init__(self) -> None:
        self._entries: dict[str, IndexEntry] = {}
        self._lock = threading.Lock()

    def read_all(self) -> dict[str, IndexEntry]:
        """See ``IndexStore.read_all``. Paths come back in ascending byte order."""
        with self._lock:
            items = list(self._entries.items())
        return dict(sorted(items, key=lambda item: item[0].encode("utf-8", "surrogateescape")))

    def get(self, path: str) -> IndexEntry | None:
        """See ``IndexStore.get``."""
        _check_path(path)
        with self._lock:
            return self._entries.get(path)

    def apply(self, changes: Mapping[str, IndexEntry | None]) -> None:
        """See ``IndexStore.apply``."""
        batch = list(changes.items())
        for path, _ in batch:
            _check_path(path)
        with self._lock:
            for path, entry in batch:
                if entry is None:
                    self._entries.pop(path, None)
                else:
                    self._entries[path] = entry

    def replace_all(self, entries: Mapping[str, IndexEntry]) -> None:
        """See ``IndexStore.replace_all``."""
        fresh = dict(entries)
        for path in fresh:
            _check_path(path)
        with self._lock:
            self._entries = fresh

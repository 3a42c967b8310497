"""The speculative agent's persistent memory: what the server holds, and files already chunked.

One LMDB environment of its own (``.dits/speculative/cache``), opened through
``LmdbEnvironment`` so it shares its map growth, error translation and one-handle-per-process
rule. The agent writes it; ``dits add``, ``speculative coverage`` and ``speculative sync`` read
and write it from other processes at the same time (LMDB serialises writers across processes;
readers see snapshots). Everything here is a cache: losing it costs re-chunking and asking the
server again, never data, so writes are not fsynced (``durable()`` is never called).

Layout (all integers little-endian). Besides the ``chunks``/``objects``/``refs``/``index``
databases every ``LmdbEnvironment`` creates (unused here) and its ``meta`` ``format`` key:

* ``onserver``: ``scope (16 bytes) | chunk id (32 bytes)`` -> ``expires_at f64``: until when an
  upload is trusted to be on the server (``+inf``: permanently, it was seen visible or
  promoted). The scope (``server_scope``) names the remote repository and the token: the
  server shows speculative chunks only to the token that uploaded them, in the repository they
  went to, so what one remote holds says nothing about another. Marking keeps the later
  expiry, so a short-lived mark never shortens a permanent one. Keys of another length (a
  cache written before scopes existed) match nothing and are pruned.
* ``files``: absolute path (UTF-8, ``surrogateescape``) -> ``version u8 (=1) | size u64 |
  mtime_ns i64 | inode u64 | manifest`` where the manifest is its canonical encoding
  (``dits.core.codec``). A lookup must match all four stat values.
* ``meta``: ``counter:<name>`` -> ``i64`` (persistent counters); ``value:<key>`` -> ``f64``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import blake3
import lmdb

from dits.core.codec import DecodeError, decode_object, encode_object
from dits.core.ids import ID_LEN, ObjectId
from dits.core.objects import Manifest
from dits.errors import CorruptObjectError
from dits.store.lmdb import DB_META, LmdbEnvironment, StoreUnavailableError, iter_prefix

__all__ = ["SCOPE_LEN", "SpeculativeCache", "server_scope"]

DB_ONSERVER: Final = b"onserver"
DB_FILES: Final = b"files"
_EXPIRY: Final = struct.Struct("<d")
_FILE_HEAD: Final = struct.Struct("<BQqQ")  # version, size, mtime_ns, inode
_FILE_VERSION: Final = 1
_COUNTER: Final = struct.Struct("<q")
_VALUE: Final = struct.Struct("<d")
_COUNTER_PREFIX: Final = b"counter:"
_VALUE_PREFIX: Final = b"value:"
SCOPE_LEN: Final = 16


def server_scope(url: str, token: str | None) -> bytes:
    """The ``onserver`` key prefix for one remote repository reached with one token."""
    material = b"dits onserver scope v1\0" + url.encode() + b"\0" + (token or "").encode()
    return blake3.blake3(material).digest(length=SCOPE_LEN)


def _scoped(scope: bytes, ids: Iterable[ObjectId]) -> list[bytes]:
    if len(scope) != SCOPE_LEN:
        raise ValueError(f"a server scope is {SCOPE_LEN} bytes, got {len(scope)}")
    return [scope + oid for oid in _check_ids(ids)]


def _path_key(path: str) -> bytes:
    if not path:
        raise ValueError("path is empty")
    return path.encode("utf-8", "surrogateescape")


def _check_ids(ids: Iterable[ObjectId]) -> list[ObjectId]:
    out = list(ids)
    for oid in out:
        if len(oid) != ID_LEN:
            raise ValueError(f"object id must be {ID_LEN} bytes, got {len(oid)}")
    return out


class SpeculativeCache:
    """The agent's cache at ``path`` (an LMDB environment folder, created if missing).

    Safe for any number of processes and threads; each call is one transaction.

    Args:
        path: the environment folder, e.g. ``.dits/speculative/cache``.
        readonly: open for reading only (the folder must exist); writes then raise
            ``StoreUnavailableError``.
        map_size: starting map size, for tests (``LmdbEnvironment``'s default otherwise).

    Raises:
        StoreUnavailableError: the environment cannot be opened.
    """

    def __init__(self, path: Path, *, readonly: bool = False, map_size: int | None = None) -> None:
        self._env = LmdbEnvironment(path, readonly=readonly, map_size=map_size)
        try:
            self._onserver, self._files = self._open_dbs(readonly)
        except BaseException:
            self._env.close()
            raise
        self._meta = self._env.db(DB_META)

    def _open_dbs(self, readonly: bool) -> tuple[Any, Any]:
        handle = self._env.handle
        if readonly:
            try:
                return (
                    handle.open_db(DB_ONSERVER, create=False),
                    handle.open_db(DB_FILES, create=False),
                )
            except lmdb.NotFoundError:
                raise StoreUnavailableError(
                    f"the speculative cache at {self._env.path} is not initialised",
                    transient=False,
                ) from None

        def body(txn: lmdb.Transaction[memoryview]) -> tuple[Any, Any]:
            return (handle.open_db(DB_ONSERVER, txn=txn), handle.open_db(DB_FILES, txn=txn))

        return self._env.write(body)

    @property
    def path(self) -> Path:
        """The environment folder."""
        return self._env.path

    def close(self) -> None:
        """Release the handle (the environment closes with the process's last handle)."""
        self._env.close()

    def __enter__(self) -> SpeculativeCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the server holds ---------------------------------------------------------------

    def mark_on_server(
        self, scope: bytes, ids: Iterable[ObjectId], expires_at: float | None
    ) -> None:
        """Record that the server of ``scope`` holds ``ids`` until ``expires_at`` (None: for
        good).

        An id already marked keeps the later of its old and new expiry.

        Raises:
            ValueError: an id is not 32 bytes, the scope not ``SCOPE_LEN``, or ``expires_at``
                is NaN.
        """
        wanted = list(dict.fromkeys(_scoped(scope, ids)))
        if not wanted:
            return
        expiry = math.inf if expires_at is None else float(expires_at)
        if math.isnan(expiry):
            raise ValueError("expires_at is NaN")
        db = self._onserver

        def body(txn: lmdb.Transaction[memoryview]) -> None:
            for oid in wanted:
                old = txn.get(oid, db=db)
                if (
                    old is not None
                    and len(old) == _EXPIRY.size
                    and _EXPIRY.unpack(old)[0] >= expiry
                ):
                    continue
                txn.put(oid, _EXPIRY.pack(expiry), db=db)

        self._env.write(body, size_hint=len(wanted) * 64)

    def on_server(self, scope: bytes, ids: Sequence[ObjectId], now: float) -> list[bool]:
        """For each id, whether it is marked on the server of ``scope`` with an expiry after
        ``now``."""
        wanted = _scoped(scope, ids)
        if not wanted:
            return []
        db = self._onserver

        def body(txn: lmdb.Transaction[memoryview]) -> list[bool]:
            out = []
            for oid in wanted:
                raw = txn.get(oid, db=db)
                out.append(
                    raw is not None and len(raw) == _EXPIRY.size and _EXPIRY.unpack(raw)[0] > now
                )
            return out

        return self._env.read(body)

    def forget_on_server(self, scope: bytes, ids: Iterable[ObjectId]) -> None:
        """Drop the marks of ``ids`` (the server of ``scope`` said it no longer has them)."""
        wanted = list(dict.fromkeys(_scoped(scope, ids)))
        if not wanted:
            return
        db = self._onserver

        def body(txn: lmdb.Transaction[memoryview]) -> None:
            for oid in wanted:
                txn.delete(oid, db=db)

        self._env.write(body)

    def prune_expired(self, now: float) -> int:
        """Delete marks that expired at or before ``now``; return how many."""
        db = self._onserver

        def body(txn: lmdb.Transaction[memoryview]) -> int:
            cursor = txn.cursor(db=db)
            dead = [
                bytes(key)
                for key, raw in cursor.iternext(keys=True, values=True)
                if len(raw) != _EXPIRY.size
                or len(key) != SCOPE_LEN + ID_LEN
                or _EXPIRY.unpack(raw)[0] <= now
            ]
            for key in dead:
                txn.delete(key, db=db)
            return len(dead)

        return self._env.write(body)

    # -- files already chunked ---------------------------------------------------------------

    def record_file(
        self, path: str, size: int, mtime_ns: int, inode: int, manifest: Manifest
    ) -> None:
        """Remember that the file at ``path`` with this stat has ``manifest``.

        Raises:
            ValueError: ``path`` is empty or ``size`` differs from the manifest's.
        """
        if size != manifest.size:
            raise ValueError(f"{path}: size {size} but the manifest says {manifest.size}")
        key = _path_key(path)
        value = _FILE_HEAD.pack(_FILE_VERSION, size, mtime_ns, inode) + encode_object(manifest)
        db = self._files

        def body(txn: lmdb.Transaction[memoryview]) -> None:
            txn.put(key, value, db=db)

        self._env.write(body, size_hint=len(value) + len(key))

    def manifest_for(self, path: str, size: int, mtime_ns: int, inode: int) -> Manifest | None:
        """The manifest recorded for ``path`` if size, mtime and inode all match, else None.

        Raises:
            CorruptObjectError: the stored record does not decode.
        """
        key = _path_key(path)
        wanted = (_FILE_VERSION, size, mtime_ns, inode)
        db = self._files

        def body(txn: lmdb.Transaction[memoryview]) -> bytes | None:
            raw = txn.get(key, db=db)
            if raw is None or len(raw) < _FILE_HEAD.size:
                return None
            if _FILE_HEAD.unpack(raw[: _FILE_HEAD.size]) != wanted:
                return None
            return bytes(raw[_FILE_HEAD.size :])

        encoded = self._env.read(body)
        if encoded is None:
            return None
        try:
            manifest = decode_object(encoded)
        except DecodeError as exc:
            raise CorruptObjectError(f"speculative cache entry for {path!r}: {exc}") from None
        if not isinstance(manifest, Manifest) or manifest.size != size:
            raise CorruptObjectError(f"speculative cache entry for {path!r} is not a manifest")
        return manifest

    def forget_file(self, path: str) -> None:
        """Drop what is recorded for ``path`` (absent paths are ignored)."""
        key = _path_key(path)
        db = self._files

        def body(txn: lmdb.Transaction[memoryview]) -> None:
            txn.delete(key, db=db)

        self._env.write(body)

    # -- counters and values -----------------------------------------------------------------

    def add_counters(self, **deltas: int) -> None:
        """Add ``deltas`` to persistent counters (``files_processed=1, bytes_uploaded=n``)."""
        if not deltas:
            return
        meta = self._meta
        items = [(_COUNTER_PREFIX + name.encode("utf-8"), int(d)) for name, d in deltas.items()]

        def body(txn: lmdb.Transaction[memoryview]) -> None:
            for key, delta in items:
                raw = txn.get(key, db=meta)
                old = _COUNTER.unpack(raw)[0] if raw is not None and len(raw) == 8 else 0
                txn.put(key, _COUNTER.pack(old + delta), db=meta)

        self._env.write(body)

    def counters(self) -> dict[str, int]:
        """Every persistent counter by name."""
        return {k: int(v) for k, v in self._prefixed(_COUNTER_PREFIX, _COUNTER).items()}

    def set_value(self, key: str, value: float) -> None:
        """Store one number under ``key`` (the last measured upload rate, ...)."""
        name = _VALUE_PREFIX + key.encode("utf-8")
        packed = _VALUE.pack(float(value))
        meta = self._meta

        def body(txn: lmdb.Transaction[memoryview]) -> None:
            txn.put(name, packed, db=meta)

        self._env.write(body)

    def get_value(self, key: str) -> float | None:
        """The number stored under ``key``, or None."""
        name = _VALUE_PREFIX + key.encode("utf-8")
        meta = self._meta

        def body(txn: lmdb.Transaction[memoryview]) -> float | None:
            raw = txn.get(name, db=meta)
            if raw is None or len(raw) != _VALUE.size:
                return None
            return float(_VALUE.unpack(raw)[0])

        return self._env.read(body)

    def _prefixed(self, prefix: bytes, fmt: struct.Struct) -> dict[str, float]:
        meta = self._meta

        def body(txn: lmdb.Transaction[memoryview]) -> dict[str, float]:
            out: dict[str, float] = {}
            for key_bytes, raw in iter_prefix(txn, meta, prefix):
                if len(raw) == fmt.size:
                    out[key_bytes[len(prefix) :].decode("utf-8")] = fmt.unpack(raw)[0]
            return out

        return self._env.read(body)

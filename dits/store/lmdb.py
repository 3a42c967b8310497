"""The on-disk stores: one LMDB environment holding blobs, refs, the index and metadata.

This module is the only place in dits that imports ``lmdb``. It owns the environment's
options, the map size, the transaction discipline and the translation of LMDB errors into
``DitsError`` subclasses. It does not decide *what* is stored (ids, encodings and compression
come from ``dits.core``) and it does not take the repository lock (``dits.store.lock``).

Theory of operation
-------------------
* **One environment per path per process.** LMDB's locks are POSIX fcntl locks, owned by the
  (process, file) pair: opening the same environment twice in a process and closing one copy
  silently drops the other's locks. ``LmdbEnvironment`` therefore keeps a process-wide
  registry; constructing it again for the same path returns a handle on the already-open
  environment (reference counted; the last ``close()`` closes it). Never use a handle across
  ``fork()``: the child must open its own.
* **Named databases** ``chunks``, ``objects``, ``refs``, ``index`` and ``meta`` live in the one
  environment, so a single write transaction can touch several of them atomically (the blob
  counters in ``meta`` move with the blobs). Layout byte by byte: ``docs/store.md``.
* **Readers never block writers.** Read transactions see an MVCC snapshot; LMDB serialises
  writers with its own inter-process mutex, so writers queue, in any number of processes.
* **Durability.** The environment runs with ``MDB_NOSYNC`` (``sync=False``; ``metasync`` off,
  ``writemap`` off): a commit hands its pages to the kernel and returns (64 MiB transactions of
  256 KiB values: ~1500 MiB/s against 320 MiB/s with a sync per commit; figures and caveats in
  docs/store.md). ``LmdbEnvironment.durable()`` is the explicit ``fdatasync``; the reference points
  call it after committing (``RefStore.update_refs``, ``RefStore.set_head``,
  ``IndexStore.apply``/``replace_all``), which flushes every earlier write too, and blobs are
  always written before anything references them. ``BlobStore.put_many`` may return before its
  bytes reach the disk. ``kill -9`` never loses a committed transaction (the kernel holds the
  pages); a power loss or kernel crash can lose everything committed after the last
  ``durable()`` and, on filesystems that reorder writes, corrupt the environment if it strikes
  while unsynced commits are in flight. ``durable_commits=True`` restores a sync per commit.
* **Map growth.** The map starts at ``max(256 MiB, 2 x data.mdb)``. On ``MDB_MAP_FULL`` the
  transaction is aborted, the map grows (x2, at least twice the batch) and the *whole* batch is
  retried, so a write stays atomic. On ``MDB_MAP_RESIZED`` (another process grew the map past
  ours) the handle adopts the new size with ``set_mapsize(0)`` and retries. ``set_mapsize``
  requires that no transaction of this process is open; an in-process gate lets any number of
  transactions run together and a remap run alone.
* **Batches are atomic and not split.** ``put_many`` is one write transaction; callers keep
  batches near 64 MiB, since a transaction's dirty pages are held in memory until commit.
* **Readers verify.** ``LmdbBlobStore.get`` decodes the at-rest form and re-hashes the plain bytes
  with BLAKE3; a mismatch raises ``CorruptObjectError``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeVar

import lmdb

from dits.core.compression import (
    compress_if_worthwhile,
    stored_plain_size,
    write_raw_stored,
)
from dits.core.ids import ID_LEN, ObjectId, short_id
from dits.core.index import IndexEntry, decode_index_entry, encode_index_entry
from dits.errors import (
    EXIT_IO,
    ConflictError,
    CorruptObjectError,
    DitsError,
    ObjectNotFoundError,
    StorageFullError,
)
from dits.store.base import BlobStats, RefUpdate, decode_verified, ref_conflict_message

__all__ = [
    "DB_CHUNKS",
    "DB_INDEX",
    "DB_META",
    "DB_OBJECTS",
    "DB_REFS",
    "DEFAULT_HEAD",
    "DEFAULT_MAX_VALUE_SIZE",
    "MIN_MAP_SIZE",
    "STORE_FORMAT_VERSION",
    "LmdbBlobStore",
    "LmdbEnvironment",
    "LmdbIndexStore",
    "LmdbRefStore",
    "StoreUnavailableError",
    "add_counters",
    "iter_prefix",
    "read_counters",
    "validated_batch",
]

_T = TypeVar("_T")

DB_CHUNKS: Final = b"chunks"
DB_OBJECTS: Final = b"objects"
DB_REFS: Final = b"refs"
DB_INDEX: Final = b"index"
DB_META: Final = b"meta"
_ALL_DBS: Final = (DB_CHUNKS, DB_OBJECTS, DB_REFS, DB_INDEX, DB_META)

STORE_FORMAT_VERSION: Final = 2  # 2: chunk bytes in pack files, ``chunks`` is their index
"""Version of the layout described in docs/store.md, kept in ``meta`` under ``format``."""

MIB: Final = 1 << 20
MIN_MAP_SIZE: Final = 256 * MIB
DEFAULT_MAX_MAP_SIZE: Final = 1 << 46  # 64 TiB of address space; a bound, not a reservation
DEFAULT_MAX_VALUE_SIZE: Final = 256 * MIB
DEFAULT_HEAD: Final = "refs/heads/main"

_META_FORMAT: Final = b"format"
_META_HEAD: Final = b"HEAD"
_HEAD_PREFIX: Final = b"ref: "
_FORMAT_STRUCT: Final = struct.Struct("<I")
_STATS_STRUCT: Final = struct.Struct("<QQQ")  # count, plain bytes, stored bytes
_MAX_DBS: Final = 8
_MAX_READERS: Final = 126
_MAX_ATTEMPTS: Final = 40  # map doublings + adoptions before giving up on one call
_DISK_FULL_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
_DISK_SLACK: Final = 16 * MIB


class StoreUnavailableError(DitsError):
    """The local store failed for a reason other than a full disk or bad content.

    Transient by default (an LMDB hiccup, too many readers); ``transient=False`` marks the
    permanent cases (unsupported format, closed handle, read-only handle asked to write).
    """

    exit_code = EXIT_IO
    transient = True

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


class _Gate:
    """Any number of transactions at once, or one remap (``set_mapsize``) alone.

    A waiting remap stops new transactions from entering, so it cannot starve. Transactions
    never nest on one thread, and a remap is requested only after the caller has left the gate.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._remapping = False
        self._waiting = 0

    @contextmanager
    def txn(self) -> Iterator[None]:
        with self._cond:
            while self._remapping or self._waiting:
                self._cond.wait()
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                if not self._active:
                    self._cond.notify_all()

    @contextmanager
    def remap(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            try:
                while self._remapping or self._active:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._remapping = True
        try:
            yield
        finally:
            with self._cond:
                self._remapping = False
                self._cond.notify_all()


@dataclass
class _Shared:
    """One open ``lmdb.Environment`` and what every handle on it shares."""

    env: lmdb.Environment
    dbs: dict[bytes, Any]
    readonly: bool
    pid: int
    path: Path
    max_map_size: int
    stale_readers_cleared: int
    refs: int = 1
    grow_count: int = 0
    adopt_count: int = 0
    gate: _Gate = field(default_factory=_Gate)
    flush_hooks: list[Callable[[], None]] = field(default_factory=list)


_registry: dict[str, _Shared] = {}
_registry_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # Another thread may have held the lock at fork time; the parent's entries are skipped by
    # their pid anyway.
    global _registry_lock
    _registry_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _round_up(size: int, unit: int = MIB) -> int:
    return -(-size // unit) * unit


def _error_code(exc: lmdb.Error) -> int | None:
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    if len(exc.args) >= 2 and isinstance(exc.args[1], int):
        return int(exc.args[1])
    return None


class LmdbEnvironment:
    """A handle on the process-wide LMDB environment at ``path`` (``.dits/store/``).

    Args:
        path: the environment directory; created unless ``readonly``.
        readonly: open for reading only; write calls raise ``StoreUnavailableError``.
        map_size: starting map size in bytes, for tests; the default is
            ``max(256 MiB, 2 x data.mdb)``.
        max_map_size: the map never grows past this; a batch that does not fit then raises
            ``StorageFullError``.
        durable_commits: fsync on every commit (LMDB's default) instead of at ``durable()``.

    ``map_size``, ``max_map_size`` and ``durable_commits`` take effect when this call opens the
    environment; a second handle on an environment already open in this process shares the
    first one's settings.

    Raises:
        StoreUnavailableError: the environment cannot be opened, has an unsupported format, or
            is already open read-only in this process and ``readonly`` is False.
    """

    def __init__(
        self,
        path: Path,
        *,
        readonly: bool = False,
        map_size: int | None = None,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
        durable_commits: bool = False,
    ) -> None:
        self._path = Path(path)
        self._readonly = readonly
        self._closed = False
        if not readonly:
            self._path.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self._path)
        with _registry_lock:
            shared = _registry.get(key)
            if shared is not None and shared.pid != os.getpid():
                shared = None  # inherited across fork: never touch the parent's handle
            if shared is None:
                shared = _open_shared(self._path, readonly, map_size, max_map_size, durable_commits)
                _registry[key] = shared
            elif shared.readonly and not readonly:
                raise StoreUnavailableError(
                    f"the store at {self._path} is already open read-only in this process",
                    transient=False,
                )
            else:
                shared.refs += 1
        self._key = key
        self._shared = shared

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Release this handle; the environment closes when its last handle does."""
        if self._closed:
            return
        self._closed = True
        with _registry_lock:
            shared = self._shared
            shared.refs -= 1
            if shared.refs == 0:
                if _registry.get(self._key) is shared:
                    del _registry[self._key]
                if shared.pid == os.getpid():
                    shared.env.close()

    def __enter__(self) -> LmdbEnvironment:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- facts -------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The environment directory."""
        return self._path

    @property
    def readonly(self) -> bool:
        """Whether this handle refuses writes."""
        return self._readonly or self._shared.readonly

    @property
    def map_size(self) -> int:
        """The current map size in bytes (this process's view)."""
        env = self._open()
        with self._shared.gate.txn():
            return int(env.info()["map_size"])

    @property
    def grow_count(self) -> int:
        """How many times this process grew the map after ``MDB_MAP_FULL``."""
        return self._shared.grow_count

    @property
    def adopt_count(self) -> int:
        """How many times this process adopted a map another process grew."""
        return self._shared.adopt_count

    @property
    def stale_readers_cleared(self) -> int:
        """Reader slots of dead processes cleared when the environment was opened."""
        return self._shared.stale_readers_cleared

    @property
    def handle(self) -> lmdb.Environment:
        """The raw ``lmdb.Environment``, for tests and repair tools inside ``dits.store`` only."""
        return self._open()

    def reader_check(self) -> int:
        """Clear reader slots left by dead processes; return how many were cleared."""
        env = self._open()
        try:
            return int(env.reader_check())
        except lmdb.Error as exc:
            raise self._translate(exc, writing=False) from exc

    def durable(self) -> None:
        """Flush every committed transaction to stable storage (``fdatasync``).

        Raises:
            StorageFullError: the flush hit a full disk.
            StoreUnavailableError: any other I/O failure.
        """
        env = self._open()
        if self.readonly:
            return
        # Pack files first: an index entry made durable must never point at bytes that are not.
        for hook in list(self._shared.flush_hooks):
            hook()
        with self._shared.gate.txn():
            try:
                env.sync(True)
            except lmdb.Error as exc:
                raise self._translate(exc, writing=True) from exc

    def add_flush_hook(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` at the start of every ``durable()`` (pack files fsync themselves there)."""
        self._shared.flush_hooks.append(hook)

    def remove_flush_hook(self, hook: Callable[[], None]) -> None:
        """Undo ``add_flush_hook``; unknown hooks are ignored."""
        with contextlib.suppress(ValueError):
            self._shared.flush_hooks.remove(hook)

    # -- transactions (for the stores in this module) ----------------------------------------

    def db(self, name: bytes) -> Any:
        """Return the handle of a named database."""
        self._open()
        return self._shared.dbs[name]

    def read(self, fn: Callable[[lmdb.Transaction[memoryview]], _T]) -> _T:
        """Run ``fn`` in a read transaction with ``buffers=True`` and return its result.

        Values ``fn`` sees are memoryviews into the map, valid only inside ``fn``; copy what
        must outlive it. Adopts a map another process grew, then retries.
        """
        env = self._open()
        for _ in range(_MAX_ATTEMPTS):
            try:
                with self._shared.gate.txn():
                    txn = env.begin(buffers=True)
                    try:
                        return fn(txn)
                    finally:
                        txn.abort()
            except lmdb.MapResizedError:
                self._adopt()
            except lmdb.Error as exc:
                raise self._translate(exc, writing=False) from exc
        raise StoreUnavailableError(f"the store at {self._path} kept changing its map size")

    def write(self, fn: Callable[[lmdb.Transaction[memoryview]], _T], *, size_hint: int = 0) -> _T:
        """Run ``fn`` in one write transaction and commit it; all of ``fn``'s writes or none.

        ``fn`` may run more than once: after ``MDB_MAP_FULL`` the map grows and the whole
        transaction is replayed, so ``fn`` must not have side effects outside ``txn``. An
        exception from ``fn`` aborts the transaction and propagates.

        Args:
            fn: the transaction body.
            size_hint: roughly how many bytes ``fn`` writes, so one growth step suffices.

        Raises:
            StorageFullError: the disk is full or the map cannot grow; nothing was committed.
            StoreUnavailableError: another LMDB failure; nothing was committed.
        """
        env = self._open()
        if self.readonly:
            raise StoreUnavailableError(
                f"the store at {self._path} is open read-only", transient=False
            )
        for _ in range(_MAX_ATTEMPTS):
            seen_map_size = 0
            try:
                with self._shared.gate.txn():
                    seen_map_size = int(env.info()["map_size"])
                    txn = env.begin(write=True, buffers=True)
                    try:
                        result = fn(txn)
                        self._commit(txn)
                    except BaseException:
                        txn.abort()
                        raise
                return result
            except lmdb.MapResizedError:
                self._adopt()
            except lmdb.MapFullError:
                self._grow(seen_map_size, size_hint)
            except lmdb.Error as exc:
                raise self._translate(exc, writing=True, size_hint=size_hint) from exc
        raise StoreUnavailableError(f"the store at {self._path} could not fit one batch")

    def _commit(self, txn: lmdb.Transaction[memoryview]) -> None:
        # A seam for fault-injection tests: they replace it to raise an lmdb error.
        txn.commit()

    # -- internals ---------------------------------------------------------------------------

    def _open(self) -> lmdb.Environment:
        if self._closed:
            raise StoreUnavailableError(f"the store at {self._path} is closed", transient=False)
        return self._shared.env

    def _adopt(self) -> None:
        env = self._open()
        with self._shared.gate.remap():
            try:
                env.set_mapsize(0)
            except lmdb.Error as exc:
                raise self._translate(exc, writing=False) from exc
            self._shared.adopt_count += 1

    def _grow(self, seen_map_size: int, size_hint: int) -> None:
        env = self._open()
        shared = self._shared
        wanted = 0
        with shared.gate.remap():
            try:
                env.set_mapsize(0)  # adopt whatever another process or thread already did
                current = int(env.info()["map_size"])
                if current > seen_map_size:
                    return
                wanted = _round_up(max(2 * current, current + 2 * size_hint + MIB))
                if current >= shared.max_map_size:
                    raise StorageFullError(
                        f"the store at {self._path} reached its size limit of "
                        f"{shared.max_map_size} bytes; a batch needed about {size_hint} more"
                    )
                new_size = min(wanted, shared.max_map_size)
                env.set_mapsize(new_size)
            except lmdb.Error as exc:
                raise StorageFullError(
                    f"cannot grow the store at {self._path} to {wanted} bytes: {exc}"
                ) from exc
            shared.grow_count += 1

    def _translate(self, exc: lmdb.Error, *, writing: bool, size_hint: int = 0) -> DitsError:
        code = _error_code(exc)
        if (
            isinstance(exc, lmdb.DiskError | lmdb.MapFullError)
            or code in _DISK_FULL_ERRNOS
            or (writing and code in (errno.EIO, errno.EFBIG) and self._disk_full(size_hint))
        ):
            # LMDB 0.9 reports a short pwrite() on a full disk as EIO, hence the statvfs check.
            return StorageFullError(f"no space left on device while writing to {self._path}")
        if isinstance(exc, lmdb.CorruptedError | lmdb.PageNotFoundError):
            return CorruptObjectError(f"the store at {self._path} is damaged: {exc}")
        if isinstance(exc, lmdb.ReadersFullError):
            return StoreUnavailableError(
                f"too many processes are reading the store at {self._path}; try again"
            )
        if isinstance(exc, lmdb.PanicError | lmdb.VersionMismatchError | lmdb.InvalidError):
            return StoreUnavailableError(
                f"the store at {self._path} cannot be used: {exc}", transient=False
            )
        return StoreUnavailableError(f"the store at {self._path} failed: {exc}")

    def _disk_full(self, size_hint: int) -> bool:
        try:
            st = os.statvfs(self._path)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < size_hint + _DISK_SLACK


def _keep_large_mallocs_in_heap() -> None:
    """Let glibc reuse LMDB's per-value page buffers instead of mapping fresh memory each time.

    With ``writemap=False`` LMDB mallocs a buffer for every overflow value (every chunk) and
    frees it at commit. glibc serves blocks above 128 KiB with mmap and unmaps them on free, so
    each 256 KiB chunk written faulted in fresh pages: measured here, 2 GiB of puts took 75,600
    page faults and ran at 1.28 GB/s; with these thresholds 8,500 faults and 1.57 GB/s.
    Process-wide and harmless elsewhere; skipped where there is no glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's maximum
        libc.mallopt(m_trim_threshold, 256 << 20)
    except (OSError, AttributeError):
        pass


def _open_shared(
    path: Path,
    readonly: bool,
    map_size: int | None,
    max_map_size: int,
    durable_commits: bool,
) -> _Shared:
    _keep_large_mallocs_in_heap()
    data_file = path / "data.mdb"
    try:
        existing = data_file.stat().st_size
    except FileNotFoundError:
        if readonly:
            raise StoreUnavailableError(f"no store at {path}", transient=False) from None
        existing = 0
    start = map_size if map_size is not None else _round_up(max(MIN_MAP_SIZE, 2 * existing))
    try:
        env = lmdb.open(
            str(path),
            map_size=start,
            subdir=True,
            readonly=readonly,
            create=not readonly,
            max_dbs=_MAX_DBS,
            max_readers=_MAX_READERS,
            sync=durable_commits,
            metasync=durable_commits,
            writemap=False,  # a stray pointer can never scribble on the file
            readahead=True,  # values are 64 KiB-4 MiB runs: cold random get 3x faster with it
            lock=True,
        )
    except lmdb.Error as exc:
        raise StoreUnavailableError(f"cannot open the store at {path}: {exc}") from exc
    try:
        cleared = int(env.reader_check())
        dbs = _open_dbs(env, path, readonly)
    except BaseException:
        env.close()
        raise
    return _Shared(
        env=env,
        dbs=dbs,
        readonly=readonly,
        pid=os.getpid(),
        path=path,
        max_map_size=max(max_map_size, int(env.info()["map_size"])),
        stale_readers_cleared=cleared,
    )


def _open_dbs(env: lmdb.Environment, path: Path, readonly: bool) -> dict[bytes, Any]:
    try:
        if readonly:
            # py-lmdb opens each handle in its own committed read transaction here.
            dbs = {name: env.open_db(name, create=False) for name in _ALL_DBS}
            with env.begin() as txn:
                found = txn.get(_META_FORMAT, db=dbs[DB_META])
        else:
            with env.begin(write=True) as txn:
                dbs = {name: env.open_db(name, txn=txn) for name in _ALL_DBS}
                found = txn.get(_META_FORMAT, db=dbs[DB_META])
                if found is None:
                    txn.put(
                        _META_FORMAT, _FORMAT_STRUCT.pack(STORE_FORMAT_VERSION), db=dbs[DB_META]
                    )
    except lmdb.NotFoundError as exc:
        raise StoreUnavailableError(
            f"the store at {path} is not initialised", transient=False
        ) from exc
    except lmdb.Error as exc:
        raise StoreUnavailableError(f"cannot open the store at {path}: {exc}") from exc
    if found is not None:
        version = _FORMAT_STRUCT.unpack(bytes(found))[0] if len(found) == 4 else -1
        if version != STORE_FORMAT_VERSION:
            raise StoreUnavailableError(
                f"the store at {path} has format {version}; this dits reads format "
                f"{STORE_FORMAT_VERSION}",
                transient=False,
            )
    return dbs


def validated_batch(
    items: Iterable[tuple[ObjectId, bytes | memoryview]], max_value_size: int, kind: str
) -> dict[ObjectId, bytes | memoryview]:
    """The items of a ``put_many`` call, checked and de-duplicated (first value per id wins).

    Raises:
        ValueError: an id is not 32 bytes or a value exceeds ``max_value_size``.
    """
    batch: dict[ObjectId, bytes | memoryview] = {}
    for oid, value in items:
        _check_id(oid)
        if isinstance(value, memoryview) and (value.format != "B" or value.ndim != 1):
            value = value.cast("B")  # so len() counts bytes
        if len(value) > max_value_size:
            raise ValueError(
                f"{kind} {short_id(oid)} has {len(value)} bytes, above the limit of "
                f"{max_value_size}"
            )
        batch.setdefault(oid, value)
    return batch


def iter_prefix(txn: Any, db: Any, prefix: bytes) -> Iterator[tuple[bytes, memoryview]]:
    """(key, value) of every entry of ``db`` whose key starts with ``prefix``, in key order."""
    cursor = txn.cursor(db=db)
    if not cursor.set_range(prefix):
        return
    for key, value in cursor.iternext(keys=True, values=True):
        key_bytes = bytes(key)
        if not key_bytes.startswith(prefix):
            return
        yield key_bytes, value


def _check_id(oid: bytes) -> None:
    if len(oid) != ID_LEN:
        raise ValueError(f"object id must be {ID_LEN} bytes, got {len(oid)}")


class LmdbBlobStore:
    """``BlobStore`` over one named database (``chunks`` or ``objects``).

    Keys are the 32-byte ids; values are ``dits.core.compression`` at-rest forms. The blob
    counters in ``meta`` (``stats:<db>``) change in the same transaction as the blobs.

    Args:
        env: the environment.
        db_name: ``b"chunks"`` or ``b"objects"`` (str accepted).
        max_value_size: largest plain value accepted by ``put_many`` and decoded by ``get``.
        compression_level: zstd level for values the compression probe accepts.
    """

    def __init__(
        self,
        env: LmdbEnvironment,
        db_name: bytes | str = DB_CHUNKS,
        *,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
        compression_level: int = 3,
    ) -> None:
        name = db_name.encode() if isinstance(db_name, str) else bytes(db_name)
        if name not in (DB_CHUNKS, DB_OBJECTS):
            raise ValueError(f"blob database must be chunks or objects, not {name!r}")
        self._env = env
        self._name = name
        self._db = env.db(name)
        self._meta = env.db(DB_META)
        self._stats_key = b"stats:" + name
        self._kind = "chunk" if name == DB_CHUNKS else "object"
        self._max_value_size = max_value_size
        self._level = compression_level

    def has_many(self, ids: Iterable[ObjectId]) -> set[ObjectId]:
        """See ``BlobStore.has_many``."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return set()
        db = self._db

        def body(txn: lmdb.Transaction[memoryview]) -> set[ObjectId]:
            return {oid for oid in wanted if txn.get(oid, db=db) is not None}

        return self._env.read(body)

    def put_many(self, items: Iterable[tuple[ObjectId, bytes | memoryview]]) -> int:
        """See ``BlobStore.put_many``. One write transaction, replayed whole if the map grows.

        Raises:
            ValueError: an id is not 32 bytes or a value exceeds ``max_value_size``.
            StorageFullError: the disk is full; none of the items became visible.
        """
        batch = validated_batch(items, self._max_value_size, self._kind)
        if not batch:
            return 0
        present = self.has_many(batch)
        # Compress outside the write transaction, so LMDB's writer lock is held only for
        # copying. Values that stay RAW are tagged inside it, through one reused buffer.
        plan = [
            (oid, value, compress_if_worthwhile(value, level=self._level))
            for oid, value in batch.items()
            if oid not in present
        ]
        if not plan:
            return 0
        scratch_size = max((len(v) + 1 for _, v, z in plan if z is None), default=0)
        size_hint = sum(len(v) + 1 if z is None else len(z) for _, v, z in plan)
        db, meta, stats_key = self._db, self._meta, self._stats_key

        def body(txn: lmdb.Transaction[memoryview]) -> int:
            scratch = bytearray(scratch_size)
            count = plain = stored = 0
            for oid, value, compressed in plan:
                at_rest = compressed if compressed is not None else write_raw_stored(value, scratch)
                if txn.put(oid, at_rest, db=db, overwrite=False):
                    count += 1
                    plain += len(value)
                    stored += len(at_rest)
            if count:
                add_counters(txn, meta, stats_key, count, plain, stored)
            return stored

        return self._env.write(body, size_hint=size_hint)

    def get(self, oid: ObjectId) -> bytes:
        """See ``BlobStore.get``."""
        db, kind, limit = self._db, self._kind, self._max_value_size

        def body(txn: lmdb.Transaction[memoryview]) -> bytes | None:
            raw = txn.get(oid, db=db)
            return None if raw is None else decode_verified(kind, oid, raw, limit)

        plain = self._env.read(body)
        if plain is None:
            raise ObjectNotFoundError(f"{kind} {short_id(oid)} not found")
        return plain

    def delete_many(self, ids: Iterable[ObjectId]) -> int:
        """See ``BlobStore.delete_many``."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return 0
        db, meta, stats_key = self._db, self._meta, self._stats_key

        def body(txn: lmdb.Transaction[memoryview]) -> int:
            count = plain = stored = 0
            for oid in wanted:
                raw = txn.get(oid, db=db)
                if raw is None:
                    continue
                stored += len(raw)
                plain += _plain_size_or_guess(raw)
                txn.delete(oid, db=db)
                count += 1
            if count:
                add_counters(txn, meta, stats_key, -count, -plain, -stored)
            return count

        return self._env.write(body)

    def iter_ids(self) -> Iterator[ObjectId]:
        """See ``BlobStore.iter_ids``.

        The snapshot is read into one buffer (32 bytes per id) before the first id is yielded,
        so no read transaction stays open while the caller works, and the caller may write.
        """
        db = self._db

        def body(txn: lmdb.Transaction[memoryview]) -> bytearray:
            buf = bytearray()
            for key in txn.cursor(db=db).iternext(keys=True, values=False):
                if len(key) != ID_LEN:
                    raise CorruptObjectError(f"the {self._kind} database has a malformed key")
                buf += key
            return buf

        buf = self._env.read(body)
        for start in range(0, len(buf), ID_LEN):
            yield ObjectId(bytes(buf[start : start + ID_LEN]))

    def stats(self) -> BlobStats:
        """See ``BlobStore.stats``. O(1): counters in ``meta``, checked against LMDB's count."""
        db, meta, stats_key = self._db, self._meta, self._stats_key

        def body(txn: lmdb.Transaction[memoryview]) -> BlobStats:
            entries = int(txn.stat(db)["entries"])
            count, plain, stored = read_counters(txn, meta, stats_key)
            if count == entries:
                return BlobStats(count, plain, stored)
            # Counters disagree (a repair tool wrote the database directly): recount.
            plain = stored = 0
            for raw in txn.cursor(db=db).iternext(keys=False, values=True):
                stored += len(raw)
                plain += _plain_size_or_guess(raw)
            return BlobStats(entries, plain, stored)

        return self._env.read(body)


def _plain_size_or_guess(raw: memoryview) -> int:
    try:
        return stored_plain_size(raw)
    except ValueError:
        return max(len(raw) - 1, 0)  # corrupt header: the best guess keeps counters non-negative


def read_counters(txn: lmdb.Transaction[memoryview], meta: Any, key: bytes) -> tuple[int, int, int]:
    raw = txn.get(key, db=meta)
    if raw is None or len(raw) != _STATS_STRUCT.size:
        return (0, 0, 0)
    count, plain, stored = _STATS_STRUCT.unpack(raw)
    return int(count), int(plain), int(stored)


def add_counters(
    txn: lmdb.Transaction[memoryview], meta: Any, key: bytes, count: int, plain: int, stored: int
) -> None:
    old = read_counters(txn, meta, key)
    new = (max(old[0] + count, 0), max(old[1] + plain, 0), max(old[2] + stored, 0))
    txn.put(key, _STATS_STRUCT.pack(*new), db=meta)


def _ref_key(name: str) -> bytes:
    if not name:
        raise ValueError("ref name is empty")
    return name.encode("utf-8")


class LmdbRefStore:
    """``RefStore``: ``refs`` maps UTF-8 names to 32-byte ids; HEAD lives in ``meta``.

    Every update calls ``LmdbEnvironment.durable()`` after committing.
    """

    def __init__(self, env: LmdbEnvironment) -> None:
        self._env = env
        self._db = env.db(DB_REFS)
        self._meta = env.db(DB_META)

    def get_ref(self, name: str) -> ObjectId | None:
        """See ``RefStore.get_ref``."""
        key = _ref_key(name)
        db = self._db

        def body(txn: lmdb.Transaction[memoryview]) -> ObjectId | None:
            return _ref_value(name, txn.get(key, db=db))

        return self._env.read(body)

    def list_refs(self, prefix: str = "refs/") -> dict[str, ObjectId]:
        """See ``RefStore.list_refs``. Names come back in ascending byte order."""
        start = prefix.encode("utf-8")
        db = self._db

        def body(txn: lmdb.Transaction[memoryview]) -> dict[str, ObjectId]:
            found: dict[str, ObjectId] = {}
            for key_bytes, value in iter_prefix(txn, db, start):
                name = key_bytes.decode("utf-8")
                oid = _ref_value(name, value)
                assert oid is not None
                found[name] = oid
            return found

        return self._env.read(body)

    def update_refs(self, updates: Iterable[RefUpdate]) -> None:
        """See ``RefStore.update_refs``; durable when it returns.

        Raises:
            ConflictError: some ref's current value differs from its ``expected_old``.
            ValueError: a name appears twice, is empty, or an id is not 32 bytes.
        """
        batch = _check_updates(updates)
        if not batch:
            return
        db = self._db

        def body(txn: lmdb.Transaction[memoryview]) -> None:
            for update, key in batch:
                current = _ref_value(update.name, txn.get(key, db=db))
                if current != update.expected_old:
                    raise ConflictError(ref_conflict_message(update, current))
            for update, key in batch:
                if update.new is None:
                    txn.delete(key, db=db)
                else:
                    txn.put(key, update.new, db=db)

        self._env.write(body)
        self._env.durable()

    def get_head(self) -> str:
        """See ``RefStore.get_head``; ``refs/heads/main`` until ``set_head`` is called."""
        meta = self._meta

        def body(txn: lmdb.Transaction[memoryview]) -> str:
            raw = txn.get(_META_HEAD, db=meta)
            if raw is None:
                return DEFAULT_HEAD
            value = bytes(raw)
            if not value.startswith(_HEAD_PREFIX) or len(value) == len(_HEAD_PREFIX):
                raise CorruptObjectError(f"HEAD is corrupt: {value[:80]!r}")
            return value[len(_HEAD_PREFIX) :].decode("utf-8")

        return self._env.read(body)

    def set_head(self, ref_name: str) -> None:
        """See ``RefStore.set_head``; durable when it returns."""
        value = _HEAD_PREFIX + _ref_key(ref_name)
        meta = self._meta

        def body(txn: lmdb.Transaction[memoryview]) -> None:
            txn.put(_META_HEAD, value, db=meta)

        self._env.write(body)
        self._env.durable()


def _ref_value(name: str, raw: memoryview | bytes | None) -> ObjectId | None:
    if raw is None:
        return None
    if len(raw) != ID_LEN:
        raise CorruptObjectError(f"ref {name} is corrupt: {len(raw)}-byte value")
    return ObjectId(bytes(raw))


def _check_updates(updates: Iterable[RefUpdate]) -> list[tuple[RefUpdate, bytes]]:
    batch: list[tuple[RefUpdate, bytes]] = []
    seen: set[str] = set()
    for update in updates:
        if update.name in seen:
            raise ValueError(f"ref {update.name} appears twice in one update")
        seen.add(update.name)
        for oid in (update.new, update.expected_old):
            if oid is not None:
                _check_id(oid)
        batch.append((update, _ref_key(update.name)))
    return batch


def _path_key(path: str) -> bytes:
    if not path:
        raise ValueError("index path is empty")
    # surrogateescape: a path read from a POSIX filesystem round-trips to its original bytes.
    return path.encode("utf-8", "surrogateescape")


class LmdbIndexStore:
    """``IndexStore``: ``index`` maps UTF-8 paths to 69-byte ``encode_index_entry`` values.

    Every change calls ``LmdbEnvironment.durable()`` after committing.
    """

    def __init__(self, env: LmdbEnvironment) -> None:
        self._env = env
        self._db = env.db(DB_INDEX)

    def read_all(self) -> dict[str, IndexEntry]:
        """See ``IndexStore.read_all``. Paths come back in ascending byte order."""
        db = self._db

        def body(txn: lmdb.Transaction[memoryview]) -> dict[str, IndexEntry]:
            entries: dict[str, IndexEntry] = {}
            for key, value in txn.cursor(db=db).iternext(keys=True, values=True):
                path = bytes(key).decode("utf-8", "surrogateescape")
                entries[path] = _decode_entry(path, value)
            return entries

        return self._env.read(body)

    def get(self, path: str) -> IndexEntry | None:
        """See ``IndexStore.get``."""
        key = _path_key(path)
        db = self._db

        def body(txn: lmdb.Transaction[memoryview]) -> IndexEntry | None:
            raw = txn.get(key, db=db)
            return None if raw is None else _decode_entry(path, raw)

        return self._env.read(body)

    def apply(self, changes: Mapping[str, IndexEntry | None]) -> None:
        """See ``IndexStore.apply``; durable when it returns."""
        batch = [
            (_path_key(path), None if entry is None else encode_index_entry(entry))
            for path, entry in changes.items()
        ]
        if not batch:
            return
        db = self._db

        def body(txn: lmdb.Transaction[memoryview]) -> None:
            for key, value in batch:
                if value is None:
                    txn.delete(key, db=db)
                else:
                    txn.put(key, value, db=db)

        self._env.write(body, size_hint=len(batch) * 128)
        self._env.durable()

    def replace_all(self, entries: Mapping[str, IndexEntry]) -> None:
        """See ``IndexStore.replace_all``; durable when it returns."""
        batch = sorted((_path_key(path), encode_index_entry(e)) for path, e in entries.items())
        db = self._db

        def body(txn: lmdb.Transaction[memoryview]) -> None:
            txn.drop(db, delete=False)
            for key, value in batch:
                txn.put(key, value, db=db, append=True)

        self._env.write(body, size_hint=len(batch) * 128)
        self._env.durable()


def _decode_entry(path: str, raw: memoryview | bytes) -> IndexEntry:
    try:
        return decode_index_entry(bytes(raw))
    except ValueError as exc:
        raise CorruptObjectError(f"index entry for {path!r} is corrupt: {exc}") from None

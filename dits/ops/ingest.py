"""The hot path of `dits add`: read files, cut them into chunks, hash, store; build manifests.

Theory of operation
-------------------
A file is read in windows (so memory stays bounded, a 10 GiB file costs the same as a 100 MiB
one). Each window starts at the previous window's last cut: the uncut tail is carried over, so
the Chunker always sees whole chunks. Per window, four stages overlap on separate threads, each
in compiled code that releases the GIL:

    main thread      FastCDC cut points (files read with readv: a reader thread fills buffers)
    chunk hasher     BLAKE3 of every chunk (the chunk ids)
    file hasher      BLAKE3 of the whole file, in order
    store writer     batches chunks into store writes (skips ids already stored)

Files of ``MMAP_MIN`` bytes or more are read through a read-only mapping held under a read
lease (``_LeasedMap``): the windows are views of the mapping, so there is no reader thread and
no copy out of the page cache, and the lease keeps anyone from truncating or rewriting the file
while its pages are touched (a truncated mapping raises SIGBUS in C code). Where the lease or
the mapping is refused (the file is open for writing, is not ours, or the file system cannot)
the file is read with ``readv`` into buffers from a fixed pool. Either way at most
``pool_buffers`` windows are in flight, and a window is let go (its buffer back to the pool, or
its pages dropped from the mapping) only when the file hasher and the writer are done with it.

Files that change while being read (size or mtime differ before and after, or a writer asked
for the lease) are read again, up to ``max_reads`` times, then refused with FileChangedError.
Whatever a failed read stored is just unreferenced chunks that `gc` drops; nothing references
them.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import queue
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from dits.core.chunking import Chunker, ChunkingProfile, choose_profile
from dits.core.ids import ObjectId
from dits.core.objects import ChunkRef, Manifest
from dits.errors import EXIT_IO, DitsError, StorageFullError
from dits.store.base import BlobStore

__all__ = ["FileChangedError", "IngestStats", "Ingestor", "UnreadableFileError"]

WINDOW_SIZE = 16 << 20
SMALL_FILE = 4 << 20  # read whole, hashed inline: thread hand-offs cost more than they save
BATCH_BYTES = 32 << 20
POOL_BUFFERS = 8
MMAP_MIN = 64 << 20  # files from this size are read through a leased mapping (see above)

_MADV_POPULATE_READ = 22  # Linux 5.14; Python 3.11's mmap has no name for it
_PAGE = mmap.PAGESIZE


class FileChangedError(DitsError):
    """A file kept changing while it was being read."""

    exit_code = EXIT_IO


class UnreadableFileError(DitsError):
    """A file could not be opened or read."""

    exit_code = EXIT_IO


@dataclass
class IngestStats:
    """Figures for reports: what was read and what was new to the store."""

    files: int = 0
    bytes_read: int = 0
    chunks: int = 0
    new_chunks: int = 0
    new_bytes: int = 0
    reread_files: list[str] = field(default_factory=list)


class _Writer:
    """Single writer thread: groups chunk batches into LMDB transactions, releases buffers."""

    def __init__(
        self, store: BlobStore | None, stats: IngestStats, batch_bytes: int, max_held: int
    ) -> None:
        self.store = store
        self.max_held = max_held
        self.stats = stats
        self.batch_bytes = batch_bytes
        self.pending: list[tuple[ObjectId, memoryview]] = []
        self.pending_bytes = 0
        self.releases: list[Callable[[], None]] = []
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="dits-writer")
        self.error: BaseException | None = None
        self._last: Future[None] | None = None

    def submit(
        self,
        ids: Future[list[ObjectId]],
        views: list[memoryview],
        release: Callable[[], None] | None,
    ) -> None:
        self._last = self.executor.submit(self._add, ids, views, release)

    def _add(
        self,
        ids_future: Future[list[ObjectId]],
        views: list[memoryview],
        release: Callable[[], None] | None,
    ) -> None:
        if release is not None:
            self.releases.append(release)
        try:
            ids = ids_future.result()
        except BaseException as exc:
            self.error = self.error or exc
        if self.error is None:
            self.pending.extend(zip(ids, views, strict=True))
            self.pending_bytes += sum(len(v) for v in views)
        # Buffers held by the batch come from a small pool: commit before the pool runs dry.
        if self.pending_bytes >= self.batch_bytes or len(self.releases) >= self.max_held:
            self._commit()

    def _commit(self) -> None:
        try:
            if self.pending and self.error is None and self.store is not None:
                unique: dict[ObjectId, memoryview] = {}
                for oid, view in self.pending:
                    unique.setdefault(oid, view)
                present = self.store.has_many(unique)
                new = [(oid, v) for oid, v in unique.items() if oid not in present]
                if new:
                    self.store.put_many(new)
                self.stats.new_chunks += len(new)
                self.stats.new_bytes += sum(len(v) for _, v in new)
        except BaseException as exc:  # surfaced to the main thread by flush()
            self.error = exc
        finally:
            self.pending.clear()
            self.pending_bytes = 0
            for release in self.releases:
                release()
            self.releases.clear()

    def drain(self) -> None:
        """Commit everything submitted so far; a store error stays for ``check``/``flush``."""
        self.executor.submit(self._commit).result()

    def check(self) -> None:
        """Re-raise a store error early, so a full disk stops a long read."""
        if self.error is not None:
            self.flush()

    def flush(self) -> None:
        """Commit everything submitted so far; re-raise a store error in the caller's thread."""
        self.executor.submit(self._commit).result()
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def close(self) -> None:
        self.executor.shutdown(wait=True)


class Ingestor:
    """Turns files into stored chunks and Manifests. Use as a context manager; call `flush`.

    With ``store=None`` nothing is written: the manifests are computed only (status, diff).
    """

    def __init__(
        self,
        store: BlobStore | None,
        *,
        profile_for: Callable[[str, int], ChunkingProfile] = choose_profile,
        window_size: int = WINDOW_SIZE,
        batch_bytes: int = BATCH_BYTES,
        pool_buffers: int = POOL_BUFFERS,
        max_reads: int = 3,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.profile_for = profile_for
        self.window_size = window_size
        self.max_reads = max_reads
        self.on_bytes = on_bytes
        self.stats = IngestStats()
        self._writer = _Writer(store, self.stats, batch_bytes, max(1, pool_buffers // 2))
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="dits-chunk-hash")
        self._file_hasher = ThreadPoolExecutor(1, thread_name_prefix="dits-file-hash")
        self._pool_size = pool_buffers
        self._pool: queue.Queue[bytearray] = queue.Queue()
        self._pool_made = 0
        self._pool_lock = threading.Lock()

    def __enter__(self) -> Ingestor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker threads (pending writes are flushed first)."""
        try:
            self._writer.flush()
        finally:
            self._writer.close()
            self._hasher.shutdown(wait=True)
            self._file_hasher.shutdown(wait=True)

    def flush(self) -> None:
        """Make every chunk ingested so far durable-in-order (committed to the store)."""
        self._writer.flush()

    # -- buffers ------------------------------------------------------------------------
    def _take_buffer(self, size: int, stop: threading.Event | None = None) -> bytearray | None:
        """A buffer from the pool (blocking while all are in flight); None once ``stop`` is set."""
        with self._pool_lock:
            if self._pool.empty() and self._pool_made < self._pool_size:
                self._pool_made += 1
                return bytearray(size)
        while True:
            try:
                buf = self._pool.get(timeout=0.1)
                break
            except queue.Empty:
                if stop is not None and stop.is_set():
                    return None
        if len(buf) < size:
            buf = bytearray(size)
        return buf

    def _give_back(self, buf: bytearray | None) -> Callable[[], None]:
        pending = [2]  # file hasher + writer
        lock = threading.Lock()

        def release() -> None:
            with lock:
                pending[0] -= 1
                done = pending[0] == 0
            if done and buf is not None:
                self._pool.put(buf)

        return release

    # -- files --------------------------------------------------------------------------
    def ingest_file(self, path: Path, name: str, size_hint: int) -> tuple[Manifest, os.stat_result]:
        """Chunk, hash and store one regular file; return its manifest and the stat it matches.

        The returned stat was taken after reading, and equals the one taken before, so an
        index entry built from it describes exactly the bytes in the manifest.

        Raises:
            UnreadableFileError: the file cannot be opened or read.
            FileChangedError: the file changed during every one of ``max_reads`` attempts.
            StorageFullError: the store ran out of space.
        """
        for attempt in range(self.max_reads):
            try:
                result = self._read_once(path, name, size_hint)
            except PermissionError:
                raise UnreadableFileError(f"{name}: permission denied") from None
            except IsADirectoryError:
                raise UnreadableFileError(f"{name}: is a directory") from None
            except FileNotFoundError:
                raise UnreadableFileError(f"{name}: vanished while being added") from None
            except OSError as exc:
                if exc.errno == 28:
                    raise StorageFullError(f"no space left on device while adding {name}") from None
                raise UnreadableFileError(f"{name}: cannot read ({exc.strerror})") from None
            if result is not None:
                if attempt:
                    self.stats.reread_files.append(name)
                return result
        raise FileChangedError(
            f"{name} kept changing while being read ({self.max_reads} attempts); "
            "add it again once it is written completely"
        )

    def _read_once(
        self, path: Path, name: str, size_hint: int
    ) -> tuple[Manifest, os.stat_result] | None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            before = os.fstat(fd)
            profile = self.profile_for(name, before.st_size)
            if before.st_size <= SMALL_FILE:
                return self._read_small(fd, before, profile)
            if before.st_size >= MMAP_MIN:
                mapped = _LeasedMap.open(fd, before)
                if mapped is _CHANGED:
                    return None
                if isinstance(mapped, _LeasedMap):
                    return self._read_mapped(mapped, before, profile)
            chunker = Chunker(profile)
            file_hasher = blake3.blake3()
            id_futures: list[Future[list[ObjectId]]] = []
            sizes: list[int] = []
            hash_done: Future[None] | None = None
            carry = b""
            window_start = 0
            read_total = 0
            # Each buffer keeps `head` bytes free in front, where the previous window's uncut
            # tail is copied, so the reader can fill the rest before that tail is known.
            head = 2 * chunker.lookahead
            reader = _WindowReader(fd, self, head, self.window_size)
            try:
                while True:
                    self._writer.check()
                    buf, filled, eof = reader.next()
                    view = memoryview(buf)
                    n_carry = len(carry)
                    if n_carry > head:  # cannot happen with a well-behaved chunker; stay correct
                        bigger = bytearray(n_carry + filled)
                        bigger[:n_carry] = carry
                        bigger[n_carry:] = view[head : head + filled]
                        self._pool.put(buf)
                        buf, view, start = bigger, memoryview(bigger), 0
                        release = self._give_back(None)
                    else:
                        start = head - n_carry
                        view[start:head] = carry
                        release = self._give_back(buf)
                    read_total += filled
                    window = view[start : head + filled]
                    consumed, chunk_views = self._cut(chunker, window, window_start, eof, sizes)
                    hash_done = self._submit(
                        window, consumed, chunk_views, file_hasher, id_futures, release
                    )
                    carry = bytes(window[consumed:])
                    window_start += consumed
                    if self.on_bytes is not None:
                        self.on_bytes(filled)
                    if eof:
                        break
            finally:
                reader.close()
            if hash_done is not None:
                hash_done.result()
            after = os.fstat(fd)
        finally:
            os.close(fd)
        ids_all = [oid for fut in id_futures for oid in fut.result()]
        return self._finish(profile, before, after, read_total, file_hasher, ids_all, sizes)

    def _read_mapped(
        self, mapped: _LeasedMap, before: os.stat_result, profile: ChunkingProfile
    ) -> tuple[Manifest, os.stat_result] | None:
        """The read loop of ``_read_once`` over a leased mapping: no reader thread, no copy.

        Windows are laid out exactly as the buffered path lays them out (the uncut tail of one
        window, then ``window_size`` new bytes), so the chunker sees the same calls. At most
        ``pool_buffers`` windows are in flight; a window's pages are dropped from the mapping
        once the file hasher and the writer are done with it.
        """
        chunker = Chunker(profile)
        file_hasher = blake3.blake3()
        id_futures: list[Future[list[ObjectId]]] = []
        sizes: list[int] = []
        size = before.st_size
        view = mapped.view
        inflight = threading.Semaphore(self._pool_size)
        window_start = read_end = 0
        broken = False
        try:
            while True:
                self._writer.check()
                if mapped.broken():
                    broken = True  # a writer waits for the lease: let it go, read again
                    break
                inflight.acquire()
                end = min(size, read_end + self.window_size)
                eof = end == size
                mapped.populate(read_end, end)
                window = view[window_start:end]
                consumed, chunk_views = self._cut(chunker, window, window_start, eof, sizes)
                release = mapped.releaser(window_start + consumed, inflight)
                self._submit(window, consumed, chunk_views, file_hasher, id_futures, release)
                del window, chunk_views  # no view of the mapping may outlive it
                window_start += consumed
                if self.on_bytes is not None:
                    self.on_bytes(end - read_end)
                read_end = end
                if eof:
                    break
            after = os.fstat(mapped.fd)
        finally:
            # Nothing may touch the mapping once the lease is gone: wait for every consumer.
            self._file_hasher.submit(_nothing).result()
            self._hasher.submit(_nothing).result()
            self._writer.drain()
            mapped.close()
        if broken:
            return None
        self._writer.check()
        ids_all = [oid for fut in id_futures for oid in fut.result()]
        return self._finish(profile, before, after, read_end, file_hasher, ids_all, sizes)

    def _cut(
        self,
        chunker: Chunker,
        window: memoryview,
        window_start: int,
        eof: bool,
        sizes: list[int],
    ) -> tuple[int, list[memoryview]]:
        """Cut one window (both read paths): (bytes consumed, a view of each chunk)."""
        cut_ends = chunker.cuts(window, window_start, eof)
        # No cut in a window is legal (a container box larger than the window defers its
        # cuts); then everything is carried into the next one.
        starts = [window_start, *cut_ends[:-1]] if cut_ends else []
        chunk_views = [
            window[s - window_start : e - window_start]
            for s, e in zip(starts, cut_ends, strict=True)
        ]
        sizes.extend(len(v) for v in chunk_views)
        return (cut_ends[-1] - window_start) if cut_ends else 0, chunk_views

    def _submit(
        self,
        window: memoryview,
        consumed: int,
        chunk_views: list[memoryview],
        file_hasher: blake3.blake3,
        id_futures: list[Future[list[ObjectId]]],
        release: Callable[[], None],
    ) -> Future[None]:
        """Hand a cut window to the file hasher, the chunk hasher and the writer; ``release``
        runs once the file hasher and the writer are done with it."""
        hashed = self._file_hasher.submit(_update_then, file_hasher, window[:consumed], release)
        ids = self._hasher.submit(_hash_all, chunk_views)
        id_futures.append(ids)
        self._writer.submit(ids, chunk_views, release)
        return hashed

    def _read_small(
        self, fd: int, before: os.stat_result, profile: ChunkingProfile
    ) -> tuple[Manifest, os.stat_result] | None:
        # One byte more than expected tells a file that grew since fstat.
        buf = bytearray(before.st_size + 1)
        view = memoryview(buf)
        filled = 0
        while filled < len(buf):
            got = os.readv(fd, [view[filled:]])
            if got == 0:
                break
            filled += got
        after = os.fstat(fd)
        data = view[:filled]
        cut_ends = Chunker(profile).cuts(data, 0, True)
        starts = [0, *cut_ends[:-1]] if cut_ends else []  # an empty file has no chunks
        chunk_views = [data[s:e] for s, e in zip(starts, cut_ends, strict=True)]
        ids = _hash_all(chunk_views)
        done: Future[list[ObjectId]] = Future()
        done.set_result(ids)
        self._writer.submit(done, chunk_views, None)
        if self.on_bytes is not None:
            self.on_bytes(filled)
        hasher = blake3.blake3(data)
        return self._finish(
            profile, before, after, filled, hasher, ids, [len(v) for v in chunk_views]
        )

    def _finish(
        self,
        profile: ChunkingProfile,
        before: os.stat_result,
        after: os.stat_result,
        read_total: int,
        file_hasher: blake3.blake3,
        ids: list[ObjectId],
        sizes: list[int],
    ) -> tuple[Manifest, os.stat_result] | None:
        if (
            after.st_size != before.st_size
            or after.st_mtime_ns != before.st_mtime_ns
            or read_total != before.st_size
        ):
            return None
        manifest = Manifest(
            profile.name,
            read_total,
            ObjectId(file_hasher.digest()),
            tuple(ChunkRef(i, s) for i, s in zip(ids, sizes, strict=True)),
        )
        self.stats.files += 1
        self.stats.bytes_read += read_total
        self.stats.chunks += len(sizes)
        return manifest, after


class _WindowReader:
    """Reads a file into pool buffers on its own thread, one window ahead of the cutter.

    ``os.readv`` releases the GIL, so reading overlaps cutting and hashing. The queue is
    bounded by the pool: the reader blocks when every buffer is in flight.
    """

    def __init__(self, fd: int, ingestor: Ingestor, head: int, window: int) -> None:
        self._fd = fd
        self._ingestor = ingestor
        self._head = head
        self._window = window
        self._queue: queue.Queue[tuple[bytearray, int, bool] | BaseException] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dits-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        head, window = self._head, self._window
        eof = False
        while not eof and not self._stop.is_set():
            buf = self._ingestor._take_buffer(head + window, self._stop)
            if buf is None:
                return
            filled = 0
            try:
                with memoryview(buf) as view:
                    while filled < window:
                        got = os.readv(self._fd, [view[head + filled : head + window]])
                        if got == 0:
                            eof = True
                            break
                        filled += got
            except BaseException as exc:  # handed to the consumer; the buffer goes home
                self._ingestor._pool.put(buf)
                self._queue.put(exc)
                return
            self._queue.put((buf, filled, eof))

    def next(self) -> tuple[bytearray, int, bool]:
        """The next (buffer, bytes read after the head room, end of file reached)."""
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop reading and give unconsumed buffers back (before the file is closed)."""
        self._stop.set()
        self._thread.join()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if not isinstance(item, BaseException):
                self._ingestor._pool.put(item[0])


class _LeasedMap:
    """A read-only mapping of a whole file, held under a read lease (``fcntl(F_SETLEASE)``).

    A mapped file that another process truncates raises SIGBUS in whatever thread touches a
    page past the new end, and Python cannot recover from that. The lease closes that hole:
    while it is held no one can open the file for writing or truncate it (the kernel makes
    them wait for up to ``/proc/sys/fs/lease-break-time`` seconds, 45 by default) and tells
    the holder. The reader polls for that once per window, stops, waits for every thread that
    still reads the mapping, and lets go; the file then counts as changed and is read again
    (through ``readv``, since the writer now has it open). A file that is open for writing
    already, that this user does not own, or that lives on a file system without leases or
    mmap gets no lease and is read with ``readv`` as before. The lease also means the bytes
    cannot change while they are hashed and stored, so a chunk's id always matches its bytes.

    The lease-break signal is SIGURG (ignored by default) instead of SIGIO, whose default
    action kills the process. A writer in this same process waits like any other (so an
    ``on_bytes`` callback must not open the file it is told about for writing). Pages are
    prefaulted a window at a time with ``MADV_POPULATE_READ``, so a read error is an
    ``OSError`` here rather than SIGBUS in a hashing thread, and dropped with
    ``MADV_DONTNEED`` behind the consumers, so resident
    memory stays at the windows in flight.
    """

    def __init__(self, fd: int, size: int, mm: mmap.mmap) -> None:
        self.fd = fd
        self._mm = mm
        self.view = memoryview(mm)
        self._dropped = 0  # pages below this offset are no longer mapped in
        self._lock = threading.Lock()
        self._populate = True

    @staticmethod
    def open(fd: int, before: os.stat_result) -> _LeasedMap | object | None:
        """The leased mapping; None where mmap or leases are refused; _CHANGED if the file
        changed between ``before`` and taking the lease."""
        try:
            fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        except (OSError, AttributeError):
            return None  # EAGAIN: open for writing; EACCES: not ours; EINVAL: no leases here
        try:
            now = os.fstat(fd)
            if now.st_size != before.st_size or now.st_mtime_ns != before.st_mtime_ns:
                _unlease(fd)
                return _CHANGED
            mm = mmap.mmap(fd, before.st_size, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            _unlease(fd)
            return None
        return _LeasedMap(fd, before.st_size, mm)

    def broken(self) -> bool:
        """Someone waits to write or truncate the file (or the lease is gone)."""
        return bool(fcntl.fcntl(self.fd, fcntl.F_GETLEASE) != fcntl.F_RDLCK)

    def populate(self, start: int, end: int) -> None:
        """Fault ``[start, end)`` in now: an I/O error raises here, not SIGBUS later."""
        if not self._populate or end <= start:
            return
        low = start - start % _PAGE
        try:
            self._mm.madvise(_MADV_POPULATE_READ, low, end - low)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: a kernel before 5.14
                raise OSError(errno.EIO, os.strerror(errno.EIO)) from None
            self._populate = False

    def releaser(self, upto: int, inflight: threading.Semaphore) -> Callable[[], None]:
        """A release for one window: once the file hasher and the writer have both called it,
        the pages below ``upto`` are dropped and another window may start."""
        pending = [2]
        lock = threading.Lock()

        def release() -> None:
            with lock:
                pending[0] -= 1
                done = pending[0] == 0
            if done:
                self._drop_below(upto)
                inflight.release()

        return release

    def _drop_below(self, offset: int) -> None:
        high = offset - offset % _PAGE
        with self._lock:
            low = self._dropped
            if high <= low:
                return
            self._dropped = high
            # Harmless even while another thread reads there: a file page faults back in.
            self._mm.madvise(mmap.MADV_DONTNEED, low, high - low)

    def close(self) -> None:
        """Unmap and give the lease back. Call only when no thread reads the mapping."""
        self.view.release()
        try:
            self._mm.close()
        except BufferError:
            pass  # a view is still referenced (a traceback): unmapped when it is collected
        _unlease(self.fd)


_CHANGED = object()


def _unlease(fd: int) -> None:
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    except OSError:
        pass  # already broken and removed by the kernel


def _nothing() -> None:
    pass


def _hash_all(views: list[memoryview]) -> list[ObjectId]:
    return [ObjectId(blake3.blake3(v).digest()) for v in views]


def _update_then(hasher: blake3.blake3, data: memoryview, release: Callable[[], None]) -> None:
    try:
        hasher.update(data)
    finally:
        release()

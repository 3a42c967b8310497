"""Permanent storage in a local folder: one file per key under the root (the default backend).

Theory of operation (create-only, crash-safe, no locks):

* ``put`` writes the bytes to a temporary file in the key's own folder (unique name, ``O_EXCL``),
  fsyncs it, then ``os.link``\\ s it to the final name. ``link`` fails if the name exists, so it
  is the atomic "create unless present" step and an object is never overwritten, even by
  concurrent writers in other threads or processes. The temporary name is unlinked and the
  folder fsynced, so the new entry is durable when ``put`` returns. New folders are fsynced
  into their parents as they are made.
* When the name exists, the stored bytes are compared with the new ones: equal means
  "already stored" (False), different means :class:`StorageConflictError`. The winner of a race
  linked a complete, fsynced file, so a loser never compares against a partial object.
* A crash leaves at most a temporary file. Its name starts with ``~``, which no key may contain,
  so :meth:`LocalStorage.list` skips it and :meth:`LocalStorage.sweep_tmp` removes it later.
* A full disk raises :class:`StorageFullError` and removes the temporary file.

Limitation: a key cannot also be a folder of other keys (``a`` and ``a/b``); S3 allows that, the
server's key layout never needs it. ``os.link`` needs a file system with hard links (any local
Linux one); :meth:`LocalStorage.probe` says so at start-up when they are missing.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from remote.storage.base import (
    StorageConflictError,
    StorageError,
    StorageFullError,
    StorageNotFoundError,
    validate_key,
    validate_prefix,
)

__all__ = ["LocalStorage"]

TMP_PREFIX = "~tmp."
"""Temporary files start with this; ``~`` is outside the key alphabet, so none is ever a key."""

_COMPARE_PIECE = 1 << 20  # read-back comparison works in 1 MiB pieces, not a second full copy
_PUT_ROUNDS = 3  # an existing key deleted during our comparison: try the create again
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class LocalStorage:
    """Objects as files under a root folder. See the module docstring for the write protocol."""

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True) -> None:
        """Open (and by default create) the storage folder.

        Raises:
            StorageError: the folder is missing and ``create`` is False, or cannot be made.
        """
        self.root = Path(os.path.abspath(root))
        self.url = self.root.as_uri()
        with _os_errors("create the storage folder", ""):
            if create:
                self.root.mkdir(parents=True, exist_ok=True)
            elif not self.root.is_dir():
                raise StorageError("storage folder does not exist")

    def __repr__(self) -> str:
        return f"LocalStorage({self.url!r})"

    # -- writes ----------------------------------------------------------------------------

    def put(self, key: str, data: bytes | memoryview) -> bool:
        """Create-only store; see :meth:`PermanentStorage.put`."""
        validate_key(key)
        view = memoryview(data).cast("B")
        final = self._path(key)
        with _os_errors("store", key):
            for _ in range(_PUT_ROUNDS):
                # Fast path for the common "already stored" case: no temporary write at all.
                if os.path.lexists(final) or not self._create(key, final, view):
                    same = self._matches(key, final, view)
                    if same is not None:
                        return False
                    continue  # deleted between our link attempt and the comparison
                return True
        raise StorageError(f"key {key!r} kept appearing and disappearing during put; retry")

    def _create(self, key: str, final: Path, view: memoryview) -> bool:
        """Write a temporary copy and link it to ``final``; False if ``final`` already exists."""
        folder = self._make_folders(key)
        tmp = self._write_tmp(folder, view)
        try:
            os.link(tmp, final)  # fails with EEXIST instead of replacing: the create-only step
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        _fsync_dir(folder)  # makes both the new link and the unlink of tmp durable
        return True

    def _write_tmp(self, folder: Path, view: memoryview) -> Path:
        tmp = folder / f"{TMP_PREFIX}{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, view)
            os.fsync(fd)  # the bytes must be on disk before a name points at them
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        return tmp

    def _make_folders(self, key: str) -> Path:
        """Create the key's parent folders, each fsynced into its parent; return the last."""
        folder = self.root
        for part in key.split("/")[:-1]:
            child = folder / part
            try:
                os.mkdir(child)
            except FileExistsError:
                pass
            else:
                _fsync_dir(folder)
            folder = child
        return folder

    def _matches(self, key: str, final: Path, view: memoryview) -> bool | None:
        """True if ``final`` holds exactly ``view``; None if it vanished; conflict otherwise."""
        try:
            fd = os.open(final, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise StorageConflictError(f"key {key!r} is a folder of other keys")
            if info.st_size != len(view) or not _same_bytes(fd, view):
                raise StorageConflictError(f"key {key!r} already holds different bytes")
            return True
        finally:
            os.close(fd)

    def delete(self, key: str) -> None:
        """Remove the file; absent is fine. Folders stay (the fan-out folders are reused).

        No folder fsync: a delete resurrected by a crash is an orphan the server sweeps again,
        and fsyncing each of a GC's thousands of deletes would dominate its run time.
        """
        validate_key(key)
        with _os_errors("delete", key):
            try:
                os.unlink(self._path(key))
            except (FileNotFoundError, NotADirectoryError):
                pass

    # -- reads -----------------------------------------------------------------------------

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        """Ranged read with ``os.pread``; see :meth:`PermanentStorage.get`."""
        validate_key(key)
        _check_range(start, length)
        with _os_errors("read", key):
            fd = self._open_object(key)
            try:
                size = os.fstat(fd).st_size
                end = size if length is None else min(size, start + length)
                return _pread_all(fd, start, max(0, end - start))
            finally:
                os.close(fd)

    def _open_object(self, key: str) -> int:
        try:
            fd = os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise StorageNotFoundError(f"no object stored under key {key!r}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StorageNotFoundError(f"no object stored under key {key!r}")
        return fd

    def link_file(self, key: str, source: Path) -> bool:
        """Create ``key`` as a hard link to ``source``, an immutable, durable file.

        The create-only step is the link itself; an existing key must have the same length
        (callers name linked files by a random id, so a clash means a retry of the same link).
        Returns False if the key already existed.

        Raises:
            OSError: EXDEV when ``source`` is on another file system (the caller copies).
        """
        validate_key(key)
        final = self.root / key
        folder = self._make_folders(key)
        try:
            os.link(source, final)
        except FileExistsError:
            if final.stat().st_size != source.stat().st_size:
                raise StorageConflictError(f"key {key!r} holds other bytes") from None
            return False
        _fsync_dir(folder)
        return True

    def size(self, key: str) -> int | None:
        """Return the file's length, or None if absent."""
        validate_key(key)
        with _os_errors("stat", key):
            try:
                info = os.stat(self._path(key))
            except (FileNotFoundError, NotADirectoryError):
                return None
        return info.st_size if stat.S_ISREG(info.st_mode) else None

    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield keys starting with ``prefix``, skipping temporary files. Unordered."""
        validate_prefix(prefix)  # here, not in the generator: bad prefixes fail at the call
        return self._iter_keys(prefix)

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        head, _, tail = prefix.rpartition("/")
        start = self.root / head if head else self.root
        with _os_errors("list", prefix):
            yield from _walk(start, head, tail)

    # -- maintenance -----------------------------------------------------------------------

    def sweep_tmp(self, older_than: float, *, now: float | None = None) -> int:
        """Remove temporary files left by crashed puts; return how many were removed.

        Args:
            older_than: seconds; younger files may belong to a put in progress and are kept.
            now: the current wall-clock time (``time.time()`` if None), injectable for tests.
        """
        cutoff = (time.time() if now is None else now) - older_than
        removed = 0
        with _os_errors("sweep temporary files", ""):
            for path in _tmp_files(self.root):
                try:
                    if path.stat().st_mtime <= cutoff:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    pass  # its put finished (or another sweeper got it) meanwhile
        return removed

    def probe(self) -> None:
        """Check that the folder is writable and that hard links refuse to overwrite.

        Raises:
            StorageError: the folder is not writable or the file system lacks hard links.
        """
        with _os_errors("probe", ""):
            tmp = self._write_tmp(self.root, memoryview(b"dits-remote probe"))
            twin = self.root / f"{TMP_PREFIX}{secrets.token_hex(8)}"
            try:
                os.link(tmp, twin)
                try:
                    os.link(tmp, twin)
                except FileExistsError:
                    return
                raise StorageError("storage folder: os.link replaced an existing file")
            except OSError as err:
                if err.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise StorageError(
                        "storage folder's file system does not support hard links, which "
                        "create-only writes need; use a local Linux file system"
                    ) from None
                raise
            finally:
                for path in (tmp, twin):
                    try:
                        path.unlink()
                    except FileNotFoundError:
                        pass

    def close(self) -> None:
        """Nothing to release: every call opens and closes its own descriptors."""

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))


def _walk(folder: Path, key_prefix: str, name_start: str) -> Iterator[str]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return  # no key has this prefix, or the folder went away while we walked
    for entry in entries:
        if entry.name.startswith("~") or not entry.name.startswith(name_start):
            continue
        key = f"{key_prefix}/{entry.name}" if key_prefix else entry.name
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path), key, "")
        elif entry.is_file(follow_symlinks=False):
            yield key


def _tmp_files(folder: Path) -> Iterator[Path]:
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.name.startswith(TMP_PREFIX) and entry.is_file(follow_symlinks=False):
            yield Path(entry.path)
        elif entry.is_dir(follow_symlinks=False):
            yield from _tmp_files(Path(entry.path))


def _check_range(start: int, length: int | None) -> None:
    if start < 0 or (length is not None and length < 0):
        raise ValueError(f"invalid range: start={start}, length={length}")


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        written = os.write(fd, view)  # may be short (signals, > 2 GiB writes)
        view = view[written:]


def _pread_all(fd: int, offset: int, count: int) -> bytes:
    pieces: list[bytes] = []
    while count > 0:
        piece = os.pread(fd, count, offset)
        if not piece:
            break  # the file is shorter than its fstat said: return what exists
        pieces.append(piece)
        offset += len(piece)
        count -= len(piece)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _same_bytes(fd: int, view: memoryview) -> bool:
    for offset in range(0, len(view), _COMPARE_PIECE):
        expected = view[offset : offset + _COMPARE_PIECE]
        if _pread_all(fd, offset, len(expected)) != expected:
            return False
    return True


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _os_errors(action: str, key: str) -> Iterator[None]:
    """Turn ``OSError`` into a StorageError whose message names the key, never the path."""
    try:
        yield
    except OSError as err:
        what = f"{action} {key!r}" if key else action
        reason = os.strerror(err.errno) if err.errno else type(err).__name__
        if err.errno in _FULL_ERRNOS:
            raise StorageFullError(f"cannot {what}: storage is full ({reason})") from err
        if isinstance(err, NotADirectoryError | IsADirectoryError):
            raise StorageConflictError(f"cannot {what}: a key and a folder collide") from err
        raise StorageError(f"cannot {what}: {reason}") from err

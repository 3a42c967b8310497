"""RepoLock: the single-writer lock of a repository (``.dits/lock``).

Theory of operation: the lock is an exclusive ``flock`` on a lock file. The kernel releases it
when the holder's last descriptor closes, which includes the holder dying by ``kill -9``, so a
crash never leaves a stale lock to clean up by hand. While held, the file contains a JSON
record of the holder (pid, hostname, purpose, start time) that exists only to write a useful
``LockedError`` message; the record is never trusted for the locking decision, and a stale
record left by a dead holder is harmless because the next holder overwrites it.

The lock file is never deleted: removing it would let two processes lock two different inodes
under the same name. ``flock`` works on local filesystems (and on NFS via emulated POSIX locks).

Two ``RepoLock`` objects on the same path exclude each other even within one process (each has
its own open file description). Acquiring twice through the same object is a programming error
and raises ``RuntimeError``. The descriptor is not inherited by ``exec``'d children.

This lock decides who may *write*; it does not replace LMDB's own write mutex, and readers never
take it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from dits.errors import LockedError

__all__ = ["RepoLock", "RepoLockedError", "holder_purpose"]

_POLL_SECONDS = 0.05


class RepoLockedError(LockedError):
    """The repository lock is held by another process (or another RepoLock in this one).

    Attributes:
        pid: the holder's pid, when its record was readable.
        hostname: the holder's host name, when known.
        purpose: what the holder said it was doing ("dits add"), possibly empty.
        since: the holder's start time (seconds since the epoch), when known.
    """

    def __init__(
        self,
        message: str,
        *,
        pid: int | None = None,
        hostname: str | None = None,
        purpose: str = "",
        since: float | None = None,
    ) -> None:
        super().__init__(message)
        self.pid = pid
        self.hostname = hostname
        self.purpose = purpose
        self.since = since


class RepoLock:
    """An exclusive, crash-safe, advisory lock on ``path``.

    Args:
        path: the lock file (created if missing; its directory must exist).
        clock: seconds since the epoch, for the holder record and messages.

    Usage::

        with RepoLock(dits_dir / "lock").acquire(timeout=5, purpose="dits add"):
            ...
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self._path = Path(path)
        self._clock = clock
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        """The lock file."""
        return self._path

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self, timeout: float = 0.0, *, purpose: str = "") -> RepoLock:
        """Take the lock, waiting up to ``timeout`` seconds for a holder to finish.

        Args:
            timeout: seconds to keep retrying; 0 tries once.
            purpose: what the caller is about to do, shown to anyone who finds it locked.

        Returns:
            self, so ``with lock.acquire(...):`` releases on exit.

        Raises:
            RepoLockedError: another holder kept the lock for the whole timeout.
            RuntimeError: this object already holds the lock.
            OSError: the lock file cannot be opened.
        """
        if self._fd is not None:
            raise RuntimeError(f"RepoLock({self._path}) is already held by this object")
        deadline = time.monotonic() + max(timeout, 0.0)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._locked_error()
                time.sleep(min(_POLL_SECONDS, remaining))
            self._write_record(fd, purpose)
        except BaseException:
            os.close(fd)  # closing drops the flock too, if we got it
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Release the lock. Releasing a lock this object does not hold is a no-op."""
        fd = self._fd
        if fd is None:
            return
        self._fd = None
        try:
            os.ftruncate(fd, 0)  # the record describes a holder; there is none now
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RepoLock:
        if self._fd is None:
            self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def _write_record(self, fd: int, purpose: str) -> None:
        record = {
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "purpose": purpose,
            "since": self._clock(),
        }
        data = json.dumps(record, sort_keys=True).encode("utf-8") + b"\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)

    def _locked_error(self) -> RepoLockedError:
        try:
            record = json.loads(self._path.read_bytes())
            pid = int(record["pid"])
            hostname = str(record.get("hostname") or "")
            purpose = str(record.get("purpose") or "")
            since = float(record["since"])
        except (OSError, ValueError, KeyError, TypeError):
            # The holder is between taking the lock and writing its record, or wrote none.
            return RepoLockedError("repository is locked by another process; wait for it to finish")
        where = f" on {hostname}" if hostname and hostname != socket.gethostname() else ""
        details = ", ".join(part for part in (purpose, f"since {self._format(since)}") if part)
        return RepoLockedError(
            f"repository is locked by pid {pid}{where} ({details}); wait for it to finish",
            pid=pid,
            hostname=hostname or None,
            purpose=purpose,
            since=since,
        )

    def _format(self, since: float) -> str:
        then = time.localtime(since)
        today = time.localtime(self._clock())
        if (then.tm_year, then.tm_yday) == (today.tm_year, today.tm_yday):
            return time.strftime("%H:%M:%S", then)
        return time.strftime("%Y-%m-%d %H:%M:%S", then)


def holder_purpose(path: Path) -> str | None:
    """What a live holder of the lock at ``path`` on this host said it is doing, else None.

    A hint for background work that wants to yield to a user's command (the speculative
    agent), never a locking decision: it reads the holder record without touching the
    flock, so it can never make a command that is taking the lock fail. A record left by a
    dead holder (its pid is gone) reads as free; a recycled pid at worst makes the caller
    yield for nothing.
    """
    try:
        record = json.loads(Path(path).read_bytes() or b"null")
        if not isinstance(record, dict):
            return None
        pid = int(record["pid"])
        if record.get("hostname") not in (None, "", socket.gethostname()):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return str(record.get("purpose") or "a dits command")

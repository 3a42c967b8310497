"""The temp-bytes lock: uploads share it; deleting temp bytes takes it alone.

Why it exists. The temporary store keeps one copy of a blob's bytes whoever uploaded it, and
``put_many`` skips an id whose bytes are already there. So an upload of X can rely on bytes
that another temp entry's owner is about to lose: a sweep (or a promotion, or an expiry)
removes the last entry naming X, sees that nothing names X, and deletes the bytes, while the
upload, which skipped writing X, commits its entry a moment later. That entry would name bytes
that are gone, and "have" would answer yes for a chunk the server cannot promote.

The rule that closes the window: an upload holds the lock *shared* from before it writes bytes
until its entries have committed; whoever deletes temp bytes holds it *exclusively* and checks
again, under it, that no entry names them (``ServerIndex.unheld``). Either the upload's entry is
committed before the check (the bytes stay), or the upload starts after the deletion (its
``put_many`` writes the bytes again).

It is ``flock(2)`` on ``temp/bytes.lock``, with a fresh open file description per acquisition,
so it excludes threads of one process and worker processes alike. Exclusive acquisitions wait
only a bounded time: steady uploads may hold the shared lock back to back, and a deletion that
gives up merely leaves bytes nobody names, which the next ``dits-remote gc`` removes
(``orphans_removed``).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["TempBytesLock"]

_POLL = 0.005


class TempBytesLock:
    """Shared for uploads, exclusive (with a deadline) for deleting temp bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def shared(self) -> Iterator[None]:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing the description releases the lock

    @contextmanager
    def exclusive(self, wait: float) -> Iterator[bool]:
        """Yield True once held alone, or False after ``wait`` seconds without it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(_POLL)
            yield True
        finally:
            os.close(fd)

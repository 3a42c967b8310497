"""Staging buffers: reused, in size classes, under one byte bound.

Why a pool. Fresh memory is slow to touch on this kind of machine (~2 GB/s for new large
buffers: every page faults on first write), and a push stages hundreds of thousands of chunks.
A buffer handed back after its chunk went on the wire is handed out again for the next chunk of
the same size class, so steady-state staging touches no new pages.

Why one bound. ``limit`` counts every byte the pool owns: buffers handed out (staged chunks
waiting for the wire, or on it) and free buffers kept for reuse. ``acquire`` makes room by
dropping free buffers of other classes, and when everything is handed out it blocks until a
buffer comes back: that is the backpressure that keeps staging memory under
``[staging] max_buffer_size_mb`` however slow the link is.

Thread-safe: staging threads acquire, the event loop releases.
"""

from __future__ import annotations

import threading

__all__ = ["BufferPool", "PoolClosedError", "size_class"]

MIN_CLASS = 64 << 10
"""The smallest buffer handed out: small chunks share one class instead of fragmenting."""


class PoolClosedError(RuntimeError):
    """The pool was closed (the push ended) while a thread waited for a buffer."""


def size_class(nbytes: int) -> int:
    """The buffer size that holds ``nbytes``: at least ``MIN_CLASS``, in steps of a quarter
    power of two (1, 1.25, 1.5, 1.75 x 2^k), so at most 25 % is wasted (content-defined chunks
    have every size, and a power-of-two step would waste up to half)."""
    if nbytes <= MIN_CLASS:
        return MIN_CLASS
    step = 1 << max((nbytes - 1).bit_length() - 3, 0)
    return -(-nbytes // step) * step


class BufferPool:
    """Reusable bytearrays whose total size never exceeds ``limit`` bytes.

    Raises:
        ValueError: ``limit`` is below ``MIN_CLASS``.
    """

    def __init__(self, limit: int) -> None:
        if limit < MIN_CLASS:
            raise ValueError(f"a staging pool needs at least {MIN_CLASS} bytes, got {limit}")
        self.limit = limit
        self._free: dict[int, list[bytearray]] = {}
        self._held = 0
        self._cached = 0
        self._cond = threading.Condition()
        self._closed = False
        self.peak_bytes = 0
        """The most bytes handed out at once."""
        self.allocations = 0
        """Fresh buffers made (each one's pages are touched once)."""
        self.reuses = 0
        """Buffers handed out again from the free lists."""
        self.waits = 0
        """Times an ``acquire`` had to wait for a buffer to come back (backpressure)."""

    @property
    def held_bytes(self) -> int:
        """Bytes handed out and not yet released."""
        return self._held

    @property
    def owned_bytes(self) -> int:
        """Bytes handed out plus free buffers kept for reuse: what the bound limits."""
        return self._held + self._cached

    def acquire(self, nbytes: int) -> bytearray:
        """A buffer of at least ``nbytes`` (its length is the size class); may block.

        Raises:
            ValueError: ``nbytes`` can never fit under the bound.
            PoolClosedError: the pool was closed while waiting.
        """
        cls = size_class(nbytes)
        if cls > self.limit:
            raise ValueError(f"a {nbytes}-byte buffer cannot fit a {self.limit}-byte pool")
        with self._cond:
            waited = False
            while True:
                if self._closed:
                    raise PoolClosedError("the staging pool is closed")
                free = self._free.get(cls)
                if free:
                    buf = free.pop()
                    self._cached -= cls
                    self.reuses += 1
                    break
                if self._held + self._cached + cls <= self.limit:
                    buf = bytearray(cls)
                    self.allocations += 1
                    break
                if self._cached and self._evict_other(cls):
                    continue
                if not waited:
                    self.waits += 1
                    waited = True
                self._cond.wait()
            self._held += cls
            self.peak_bytes = max(self.peak_bytes, self._held)
            return buf

    def release(self, buf: bytearray) -> None:
        """Give ``buf`` back; it is reused for the next chunk of its size class."""
        cls = len(buf)
        with self._cond:
            self._held -= cls
            if not self._closed:
                self._free.setdefault(cls, []).append(buf)
                self._cached += cls
            self._cond.notify_all()

    def close(self) -> None:
        """Drop the free buffers and fail every waiting ``acquire``."""
        with self._cond:
            self._closed = True
            self._free.clear()
            self._cached = 0
            self._cond.notify_all()

    def _evict_other(self, cls: int) -> bool:
        # Drop one free buffer of another class (the largest first: it frees the most).
        for size in sorted(self._free, reverse=True):
            if size != cls and self._free[size]:
                self._free[size].pop()
                self._cached -= size
                return True
        return False

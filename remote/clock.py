"""The server's clock: the only time TTL, grace and lease decisions use (RELIABILITY.md I5).

Clients never supply a time that the server trusts. The wall clock alone is not good enough
either: NTP steps, a VM resumed from a snapshot or an operator's ``date -s`` can move it by
minutes, and a jump forward would expire speculative chunks early (T22). So ``ServerClock``
reads the wall clock once, at start, and from then on advances only with the monotonic clock:

    now() = max(wall clock at start, last persisted value) + (monotonic() - monotonic at start)

It never runs backwards while the process lives, and ``floor`` (the value the index persisted
last, ``ServerIndex.save_clock``) keeps a restart after a backward wall-clock step from
rewinding it. The readings stay close to unix time, so timestamps in the index mean something
to people. Several worker processes each run their own instance; they agree to within the
difference of their start-up readings, far below any TTL or lease.

``ManualClock`` is the controllable clock tests inject (kopia's faketime, aioquic's ``now``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Clock", "ManualClock", "ServerClock"]


class Clock(Protocol):
    """Anything with ``now() -> float`` (seconds, unix-like epoch, never decreasing)."""

    def now(self) -> float: ...


class ServerClock:
    """Wall time at start (never below ``floor``), advanced by the monotonic clock.

    Args:
        floor: the last time persisted by a previous run; ``now()`` starts no earlier.
        wall: the wall clock (injectable for tests).
        monotonic: the monotonic clock (injectable for tests).
    """

    def __init__(
        self,
        floor: float = 0.0,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._monotonic = monotonic
        self._start = monotonic()
        self._base = max(wall(), floor)

    def now(self) -> float:
        return self._base + (self._monotonic() - self._start)


class ManualClock:
    """A clock that moves only when told to (tests)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a server clock never goes back")
        with self._lock:
            self._now += seconds

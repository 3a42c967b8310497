"""A token bucket that paces uploads: the agent's `speculative.max_bandwidth`, `push --limit-rate`.

Theory of operation
-------------------
The bucket holds up to ``burst`` tokens (bytes) and refills at ``rate`` tokens per second. A
``take(n)`` debits ``n`` at once, which may drive the level below zero, and the caller waits
until the level is back at zero: ``-level / rate`` seconds. Debiting before waiting keeps
concurrent callers in arrival order (a later caller sees the earlier one's debt) without a
queue, and a request larger than ``burst`` simply waits ``(n - burst) / rate`` on a full
bucket instead of never fitting.

Guarantee: the bytes released in any window of ``T`` seconds are at most
``rate * T + max(burst, largest single take)``. Callers that slice their writes (the uploader
sends 64 KiB slices) therefore get ``rate * T + burst``.

``rate == 0`` means unlimited: ``take`` returns at once and nothing is counted. ``set_rate``
settles the level at the old rate first; callers already sleeping keep the wait they were
given (slices are short, so a new rate takes effect within one slice per worker).

``delay_for`` and ``reserve`` take ``now`` explicitly, so the arithmetic is tested on a
simulated clock without sleeping.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    """Smooth token bucket; see the module docstring for the guarantee.

    Args:
        rate: tokens (bytes) per second; 0 = unlimited.
        burst: the most tokens that may accumulate (bytes sent at once after idling).
        clock: monotonic seconds, injectable for tests.

    Raises:
        ValueError: ``rate`` or ``burst`` is negative.
    """

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate < 0 or burst < 0:
            raise ValueError("rate and burst must not be negative")
        self._rate = float(rate)
        self._burst = float(burst)
        self._clock = clock
        self._level = float(burst)
        self._stamp = clock()
        # reserve() may be called from worker threads as well as the event loop.
        self._lock = threading.Lock()

    @property
    def rate(self) -> float:
        """Tokens per second; 0 = unlimited."""
        return self._rate

    @property
    def burst(self) -> float:
        """The bucket's capacity."""
        return self._burst

    def set_rate(self, rate: float) -> None:
        """Change the rate from now on (0 = unlimited).

        Raises:
            ValueError: ``rate`` is negative.
        """
        if rate < 0:
            raise ValueError("rate must not be negative")
        with self._lock:
            now = self._clock()
            self._refill(now)
            if self._rate == 0:
                self._level = self._burst  # leaving "unlimited": start full, like a new bucket
            self._rate = float(rate)

    def level(self, now: float) -> float:
        """Tokens available at ``now`` (negative while callers wait out a debt)."""
        with self._lock:
            self._refill(now)
            return self._level

    def delay_for(self, n: float, now: float) -> float:
        """Seconds a ``take(n)`` issued at ``now`` would wait; changes nothing."""
        with self._lock:
            if self._rate == 0:
                return 0.0
            self._refill(now)
            return max(0.0, (n - self._level) / self._rate)

    def reserve(self, n: float, now: float) -> float:
        """Debit ``n`` tokens at ``now``; return the seconds the caller must wait before sending.

        Raises:
            ValueError: ``n`` is negative.
        """
        if n < 0:
            raise ValueError("cannot take a negative number of tokens")
        with self._lock:
            if self._rate == 0:
                return 0.0
            self._refill(now)
            self._level -= n
            return max(0.0, -self._level / self._rate)

    async def take(self, n: int | float) -> None:
        """Wait until ``n`` bytes may be sent (at once when unlimited)."""
        delay = self.reserve(n, self._clock())
        if delay > 0:
            await asyncio.sleep(delay)

    def _refill(self, now: float) -> None:
        elapsed = now - self._stamp
        if elapsed > 0:
            self._level = min(self._burst, self._level + elapsed * self._rate)
            self._stamp = now

"""TokenBucket: the rate bound on a simulated clock, and real pacing through ``take``."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dits.staging.bucket import TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(
    bucket: TokenBucket, clock: FakeClock, requests: list[tuple[float, int]]
) -> list[tuple[float, int]]:
    """Issue ``(arrival gap, size)`` requests in order; return ``(release time, size)``."""
    released = []
    for gap, size in requests:
        clock.now += gap
        released.append((clock.now + bucket.reserve(size, clock.now), size))
    return released


def max_in_window(released: list[tuple[float, int]], window: float) -> int:
    events = sorted(released)
    best = 0
    for i, (start, _) in enumerate(events):
        total = sum(n for t, n in events[i:] if t <= start + window + 1e-9)
        best = max(best, total)
    return best


@settings(max_examples=200, deadline=None)
@given(
    rate=st.integers(1_000, 10_000_000),
    burst_factor=st.floats(0.01, 2.0),
    requests=st.lists(
        st.tuples(st.floats(0, 0.5), st.integers(1, 1 << 20)), min_size=1, max_size=40
    ),
    window=st.floats(0.0, 3.0),
)
def test_no_window_releases_more_than_rate_times_length_plus_burst(
    rate: int, burst_factor: float, requests: list[tuple[float, int]], window: float
) -> None:
    clock = FakeClock()
    burst = max(1.0, rate * burst_factor)
    bucket = TokenBucket(rate, burst, clock=clock)
    released = simulate(bucket, clock, requests)
    largest = max(n for _, n in requests)
    # Slices no larger than the burst get the exact bound; a larger single take is one unit.
    assert max_in_window(released, window) <= rate * window + max(burst, largest) + 1e-6


@settings(max_examples=100, deadline=None)
@given(
    rate=st.integers(1_000, 1_000_000),
    sizes=st.lists(st.integers(1, 4096), min_size=1, max_size=60),
)
def test_back_to_back_slices_leave_at_the_rate(rate: int, sizes: list[int]) -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate, 4096, clock=clock)
    released = simulate(bucket, clock, [(0.0, n) for n in sizes])
    last = max(t for t, _ in released)
    # Everything beyond the initial burst needed at least (total - burst) / rate seconds.
    assert last >= (sum(sizes) - 4096) / rate - 1e-9
    assert last <= max(0.0, (sum(sizes) - 4096) / rate) + 1e-9


def test_a_take_larger_than_the_burst_waits_in_proportion() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, 100, clock=clock)
    assert bucket.delay_for(1000, 0.0) == pytest.approx(0.9)
    assert bucket.reserve(1000, 0.0) == pytest.approx(0.9)
    # The debt is paid off before anyone else goes.
    assert bucket.reserve(10, 0.0) == pytest.approx(0.91)
    assert bucket.level(0.91) == pytest.approx(0.0)


def test_idle_time_refills_only_up_to_the_burst() -> None:
    bucket = TokenBucket(1000, 500, clock=FakeClock())
    assert bucket.reserve(500, 0.0) == 0.0
    assert bucket.level(100.0) == 500.0
    assert bucket.delay_for(500, 100.0) == 0.0
    assert bucket.delay_for(600, 100.0) == pytest.approx(0.1)


def test_delay_for_changes_nothing() -> None:
    bucket = TokenBucket(1000, 100, clock=FakeClock())
    for _ in range(3):
        assert bucket.delay_for(300, 0.0) == pytest.approx(0.2)
    assert bucket.level(0.0) == 100.0


def test_rate_zero_is_unlimited() -> None:
    bucket = TokenBucket(0, 0, clock=FakeClock())
    assert bucket.reserve(1 << 40, 0.0) == 0.0
    assert bucket.delay_for(1 << 40, 0.0) == 0.0


def test_set_rate_applies_from_now_on() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, 100, clock=clock)
    assert bucket.reserve(1100, 0.0) == pytest.approx(1.0)
    clock.now = 0.5  # half the debt paid at 1000/s
    bucket.set_rate(100)
    assert bucket.level(0.5) == pytest.approx(-500)
    assert bucket.delay_for(0, 0.5) == pytest.approx(5.0)
    bucket.set_rate(0)
    assert bucket.reserve(1 << 30, 0.5) == 0.0
    bucket.set_rate(1000)  # back from unlimited: starts full, debts forgiven
    assert bucket.level(0.5) == 100.0


def test_negative_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        TokenBucket(-1, 0)
    bucket = TokenBucket(1, 1)
    with pytest.raises(ValueError):
        bucket.reserve(-1, 0.0)
    with pytest.raises(ValueError):
        bucket.set_rate(-5)


def test_take_paces_real_slices_to_the_rate() -> None:
    rate = 1 << 20  # 1 MiB/s: 16 slices of 64 KiB per second
    slice_size = 64 << 10
    bucket = TokenBucket(rate, slice_size)

    async def send(total: int) -> float:
        start = time.monotonic()
        sent = 0
        while sent < total:
            await bucket.take(slice_size)
            sent += slice_size
        return time.monotonic() - start

    total = rate + slice_size
    elapsed = asyncio.run(send(total))
    # The first slice is the burst; the other 1 MiB must take about one second.
    average = (total - slice_size) / elapsed
    assert average == pytest.approx(rate, rel=0.10)


def test_concurrent_takers_share_the_rate() -> None:
    rate = 2 << 20
    slice_size = 64 << 10
    bucket = TokenBucket(rate, slice_size)

    async def worker(n: int) -> None:
        for _ in range(n):
            await bucket.take(slice_size)

    async def main() -> float:
        start = time.monotonic()
        await asyncio.gather(*(worker(8) for _ in range(4)))  # 32 slices = 2 MiB
        return time.monotonic() - start

    elapsed = asyncio.run(main())
    expected = (32 * slice_size - slice_size) / rate
    assert elapsed == pytest.approx(expected, rel=0.10)

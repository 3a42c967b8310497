"""The staging buffer pool: size classes, reuse, the byte bound and its backpressure."""

from __future__ import annotations

import threading
import time

import pytest

from dits.staging.pool import MIN_CLASS, BufferPool, PoolClosedError, size_class


def test_size_classes_waste_at_most_a_quarter_above_the_minimum() -> None:
    assert size_class(1) == MIN_CLASS
    assert size_class(MIN_CLASS) == MIN_CLASS
    assert size_class(MIN_CLASS + 1) == MIN_CLASS + MIN_CLASS // 4
    assert size_class(1 << 20) == 1 << 20
    assert size_class((1 << 20) + 1) == (1 << 20) + (1 << 18)
    for n in range(MIN_CLASS, 4 << 20, 4093):
        assert n <= size_class(n) <= n * 1.25 + 1
    assert len({size_class(n) for n in range(MIN_CLASS, 1 << 20, 1000)}) == 17


def test_released_buffers_are_reused_not_reallocated() -> None:
    pool = BufferPool(4 << 20)
    first = pool.acquire(160_000)
    assert len(first) == size_class(160_000)
    pool.release(first)
    again = pool.acquire(150_000)  # same class
    assert again is first
    assert pool.allocations == 1 and pool.reuses == 1


def test_the_bound_counts_free_buffers_and_evicts_other_classes() -> None:
    pool = BufferPool(1 << 20)
    small = [pool.acquire(MIN_CLASS) for _ in range(8)]  # 512 KiB
    for b in small:
        pool.release(b)
    assert pool.owned_bytes == 8 * MIN_CLASS
    big = pool.acquire(1 << 20)  # needs every byte: the free small buffers are dropped
    assert len(big) == 1 << 20 and pool.owned_bytes == 1 << 20
    with pytest.raises(ValueError):
        pool.acquire((1 << 20) + 1)


def test_acquire_blocks_until_a_buffer_comes_back() -> None:
    pool = BufferPool(2 * MIN_CLASS)
    a, b = pool.acquire(10), pool.acquire(10)
    got: list[bytearray] = []
    t = threading.Thread(target=lambda: got.append(pool.acquire(10)))
    t.start()
    time.sleep(0.1)
    assert not got and pool.waits == 1  # held back: the bound is reached
    pool.release(a)
    t.join(5)
    assert got and got[0] is a
    assert pool.peak_bytes == 2 * MIN_CLASS
    pool.release(b)


def test_close_fails_waiting_threads() -> None:
    pool = BufferPool(MIN_CLASS)
    pool.acquire(1)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            pool.acquire(1)
        except PoolClosedError as exc:
            errors.append(exc)

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.05)
    pool.close()
    t.join(5)
    assert len(errors) == 1

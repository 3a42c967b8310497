"""Pack files under the chunk store: crash leftovers, full disk, repack, concurrency, fsync."""

from __future__ import annotations

import errno
import fcntl
import itertools
import multiprocessing
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dits.core.ids import ObjectId, hash_bytes
from dits.errors import CorruptObjectError, StorageFullError
from dits.store.lmdb import LmdbEnvironment
from dits.store.packs import PackBlobStore
from tests.conftest import random_bytes

KIB = 1 << 10


def chunks(count: int, size: int, seed: int) -> list[tuple[ObjectId, bytes]]:
    out = []
    for i in range(count):
        data = random_bytes(size, seed * 1000 + i)
        out.append((hash_bytes(data), data))
    return out


@pytest.fixture
def env(tmp_path: Path) -> Iterator[LmdbEnvironment]:
    with LmdbEnvironment(tmp_path / "store") as handle:
        yield handle


def open_store(
    env: LmdbEnvironment, target: int = 1 << 20, direct: bool | None = None
) -> PackBlobStore:
    return PackBlobStore(env, env.path / "packs", pack_target_size=target, direct_io=direct)


def test_records_go_to_a_pack_file_with_a_header(env: LmdbEnvironment) -> None:
    store = open_store(env)
    items = chunks(3, 10 * KIB, seed=1)
    store.put_many(items)
    where = store.locate(items[1][0])
    raw = where.path.read_bytes()
    assert raw[:8] == b"DITSPACK"
    assert raw[where.record_offset : where.record_offset + 32] == items[1][0]
    assert raw[where.data_offset + 1 : where.data_offset + where.stored_size] == items[1][1]
    assert [store.get(oid) for oid, _ in items] == [data for _, data in items]
    store.close()


def test_bytes_past_the_committed_end_are_cut_by_the_next_append(env: LmdbEnvironment) -> None:
    store = open_store(env)
    first = chunks(2, 8 * KIB, seed=2)
    store.put_many(first)
    where = store.locate(first[0][0])
    committed = store.pack_usage()[where.pack][0]
    assert where.path.stat().st_size >= committed  # direct I/O pads the last block
    with open(where.path, "ab") as fh:  # what a writer killed after its pwritev leaves behind
        fh.write(b"garbage" * 1000)
    store.close()
    store = open_store(env)
    second = chunks(2, 8 * KIB, seed=3)
    store.put_many(second)
    assert store.locate(second[0][0]).record_offset == committed
    for oid, data in first + second:
        assert store.get(oid) == data
    store.close()


@pytest.mark.parametrize("direct", [True, False], ids=["direct-io", "page-cache"])
def test_disk_full_during_the_write_leaves_nothing_visible(
    env: LmdbEnvironment, monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    store = open_store(env, direct=direct)
    kept = chunks(2, 8 * KIB, seed=4)
    store.put_many(kept)
    path = store.locate(kept[0][0]).path
    committed = store.pack_usage()[store.locate(kept[0][0]).pack][0]
    name = "pwrite" if direct else "pwritev"
    real_write = getattr(os, name)

    def full(fd: int, data: Any, offset: int) -> int:
        part = data[:4096] if direct else data[:1]
        real_write(fd, part, offset)  # part of the batch reaches the file first
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, name, full)
    failed = chunks(3, 8 * KIB, seed=5)
    with pytest.raises(StorageFullError, match="no space left on device"):
        store.put_many(failed)
    monkeypatch.setattr(os, name, real_write)
    assert path.stat().st_size == committed
    assert store.has_many([oid for oid, _ in failed]) == set()
    assert store.stats().count == 2
    store.put_many(failed)  # and it works once there is space again
    assert all(store.get(oid) == data for oid, data in kept + failed)
    store.close()


@pytest.mark.parametrize("direct", [True, False], ids=["direct-io", "page-cache"])
def test_failed_index_commit_truncates_the_pack(
    env: LmdbEnvironment, monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    store = open_store(env, direct=direct)
    kept = chunks(1, 8 * KIB, seed=6)
    store.put_many(kept)
    path = store.locate(kept[0][0]).path
    size_before = store.pack_usage()[store.locate(kept[0][0]).pack][0]

    def broken(txn: object) -> None:
        raise StorageFullError("no space left on device while writing the index")

    monkeypatch.setattr(env, "_commit", broken)
    with pytest.raises(StorageFullError):
        store.put_many(chunks(2, 8 * KIB, seed=7))
    assert path.stat().st_size == size_before
    store.close()


def test_corrupt_record_is_named_never_returned(env: LmdbEnvironment) -> None:
    store = open_store(env)
    items = chunks(2, 8 * KIB, seed=8)
    store.put_many(items)
    where = store.locate(items[0][0])
    with open(where.path, "r+b") as fh:
        fh.seek(where.data_offset + 100)
        byte = fh.read(1)
        fh.seek(where.data_offset + 100)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(CorruptObjectError, match="hash to"):
        store.get(items[0][0])
    assert store.get(items[1][0]) == items[1][1]
    with open(where.path, "r+b") as fh:  # a record header that names another chunk
        fh.seek(where.record_offset)
        fh.write(b"\0" * 32)
    with pytest.raises(CorruptObjectError, match="holds another record"):
        store.get(items[0][0])
    store.close()


def test_a_closed_pack_is_never_appended_to_again(env: LmdbEnvironment) -> None:
    store = open_store(env)
    first = chunks(2, 10 * KIB, seed=20)
    store.put_many(first)
    number = store.open_pack()
    assert number is not None
    assert store.close_open_pack() == number
    assert store.open_pack() is None and store.close_open_pack() is None
    closed = store.locate(first[0][0]).path
    size = closed.stat().st_size
    later = chunks(2, 10 * KIB, seed=21)
    store.put_many(later)
    assert store.locate(later[0][0]).pack == number + 1
    # Even once every later pack is gone, the closed one stays closed (a reopened store too).
    store.delete_many([oid for oid, _ in later])
    store.repack()
    store.close()
    store = open_store(env)
    store.put_many(chunks(1, 10 * KIB, seed=22))
    assert closed.stat().st_size == size
    assert [store.get(oid) for oid, _ in first] == [data for _, data in first]
    store.close()


def test_repack_reclaims_dead_packs_and_keeps_live_chunks(env: LmdbEnvironment) -> None:
    store = open_store(env, target=64 * KIB)
    batches = [chunks(4, 20 * KIB, seed=10 + b) for b in range(6)]
    for batch in batches:
        store.put_many(batch)
    packs_dir = env.path / "packs"
    before = sorted(packs_dir.glob("*.pack"))
    assert len(before) >= 4
    size_before = sum(p.stat().st_size for p in before)
    everything = [item for batch in batches for item in batch]
    keep = everything[::5]
    store.delete_many([oid for oid, data in everything if (oid, data) not in keep])
    result = store.repack()
    after = sorted(packs_dir.glob("*.pack"))
    assert result.packs_removed + result.packs_rewritten >= len(before) - 2
    assert sum(p.stat().st_size for p in after) < size_before / 2
    assert result.bytes_freed > 0
    for oid, data in keep:
        assert store.get(oid) == data
    assert store.stats().count == len(keep)
    store.put_many(chunks(2, 20 * KIB, seed=99))  # appends still work after a repack
    store.close()


def test_durable_fsyncs_the_packs_before_the_index(
    env: LmdbEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(env)
    items = chunks(2, 8 * KIB, seed=20)
    store.put_many(items)
    order: list[str] = []
    real_fsync = os.fsync

    def record(fd: int) -> None:
        order.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    real_sync = env.handle.sync
    monkeypatch.setattr(os, "fsync", record)
    env.durable()
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert order and order[0].endswith(".pack")
    assert str(store.locate(items[0][0]).path) in order
    del real_sync
    order.clear()
    monkeypatch.setattr(os, "fsync", record)
    env.durable()  # nothing new was written: no pack to flush
    assert order == []
    store.close()


def test_threads_append_concurrently(env: LmdbEnvironment) -> None:
    store = open_store(env, target=256 * KIB)
    batches = [chunks(8, 16 * KIB, seed=30 + t) for t in range(4)]
    threads = [threading.Thread(target=store.put_many, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for batch in batches:
        for oid, data in batch:
            assert store.get(oid) == data
    assert store.stats().count == 32
    store.close()


def _put_in_child(path: str, seed: int) -> None:
    with LmdbEnvironment(Path(path)) as env:
        store = PackBlobStore(env, Path(path) / "packs", pack_target_size=256 * KIB)
        for b in range(5):
            store.put_many(chunks(4, 16 * KIB, seed=seed * 10 + b))
        env.durable()
        store.close()


def test_processes_append_concurrently(tmp_path: Path) -> None:
    path = tmp_path / "store"
    LmdbEnvironment(path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_put_in_child, args=(str(path), s)) for s in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with LmdbEnvironment(path) as env:
        store = open_store(env)
        for seed in (1, 2):
            for b in range(5):
                for oid, data in chunks(4, 16 * KIB, seed=seed * 10 + b):
                    assert store.get(oid) == data
        assert store.stats().count == 40
        store.close()


def test_direct_io_appends_at_unaligned_offsets_across_the_staging_buffer(
    env: LmdbEnvironment,
) -> None:
    store = open_store(env, target=64 << 20, direct=True)
    small = chunks(3, 1000, seed=30)  # leaves the pack end in the middle of a block
    store.put_many(small)
    big = chunks(3, 5 << 20, seed=31)  # 15 MiB in one batch: more than the 8 MiB buffer
    store.put_many(big)
    store.put_many(chunks(1, 777, seed=32))
    assert store._direct is not None  # the direct path really ran
    for oid, data in small + big:
        assert store.get(oid) == data


def test_a_file_system_without_direct_io_falls_back_to_the_page_cache(
    env: LmdbEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def no_direct(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")  # what such file systems answer
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_direct)
    store = open_store(env)
    items = chunks(3, 10 * KIB, seed=33)
    store.put_many(items)
    store.put_many(chunks(1, 10 * KIB, seed=34))
    assert store._direct is None  # fell back once, for good
    assert [store.get(oid) for oid, _ in items] == [data for _, data in items]
    store.close()


def test_a_file_system_refusing_direct_writes_falls_back_mid_append(
    env: LmdbEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_pwrite = os.pwrite

    def picky(fd: int, data: Any, offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")  # e.g. a 64 KiB alignment rule
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", picky)
    store = open_store(env, direct=True)
    items = chunks(3, 10 * KIB, seed=35)
    store.put_many(items)
    assert store._direct is None  # gave up on direct I/O, kept the data
    store.put_many(chunks(1, 10 * KIB, seed=36))
    assert [store.get(oid) for oid, _ in items] == [data for _, data in items]
    store.close()


def test_read_ahead_asks_the_kernel_once_per_half_range(
    env: LmdbEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(env, target=64 << 20)
    items = chunks(40, 64 * KIB, seed=9)
    store.put_many(items)
    advice: list[tuple[int, int, int]] = []
    real = os.posix_fadvise

    def spy(fd: int, offset: int, length: int, flag: int) -> None:
        advice.append((offset, length, flag))
        real(fd, offset, length, flag)

    monkeypatch.setattr(os, "posix_fadvise", spy)
    ahead = 512 * KIB
    buf = memoryview(bytearray(1 << 20))
    for oid, data in items:
        where = store.locate(oid)
        store.read_ahead(where, ahead)
        size, _, _ = store.read_record_into(oid, buf, where)
        assert bytes(buf[size - len(data) : size]) == data
    assert all(flag == os.POSIX_FADV_WILLNEED for _, _, flag in advice)
    # ~2.6 MiB read in order, 512 KiB asked at a time, again from halfway: about 10 asks
    # that cover every record without asking for any byte twice.
    assert 5 <= len(advice) <= 16
    spans = sorted((o, o + n) for o, n, _ in advice)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    last = store.locate(items[-1][0])
    assert spans[0][0] <= store.locate(items[0][0]).record_offset
    assert spans[-1][1] >= last.record_offset + last.stored_size
    # A jump back re-asks from there.
    advice.clear()
    store.read_ahead(store.locate(items[0][0]), ahead)
    assert len(advice) == 1
    store.close()


def test_read_ahead_of_a_vanished_pack_is_only_a_hint(env: LmdbEnvironment) -> None:
    store = open_store(env)
    items = chunks(2, 10 * KIB, seed=10)
    store.put_many(items)
    where = store.locate(items[0][0])
    where.path.unlink()
    store.read_ahead(where)  # no exception: advice is a hint
    store.close()

"""LMDB specifics the contract suite cannot see: map growth, other processes, errors, durability."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb
import pytest

import dits
from dits.core.ids import ObjectId, hash_bytes
from dits.core.index import EntryKind, IndexEntry
from dits.errors import CorruptObjectError, StorageFullError
from dits.store.base import RefUpdate
from dits.store.lmdb import (
    MIN_MAP_SIZE,
    LmdbBlobStore,
    LmdbEnvironment,
    LmdbIndexStore,
    LmdbRefStore,
    StoreUnavailableError,
)
from tests.conftest import mounted_tmpfs

ROOT = Path(dits.__file__).resolve().parents[1]
MIB = 1 << 20
KIB = 1 << 10


def chunks(count: int, size: int, seed: int) -> list[tuple[ObjectId, bytes]]:
    out = []
    for i in range(count):
        data = (seed * 1_000_003 + i).to_bytes(8, "little") + os.urandom(size - 8)
        out.append((hash_bytes(data), data))
    return out


def run_python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def env(store_path: Path) -> Iterator[LmdbEnvironment]:
    handle = LmdbEnvironment(store_path)
    yield handle
    handle.close()


# -- map size ----------------------------------------------------------------------------------


def test_map_grows_from_a_tiny_start(store_path: Path) -> None:
    with LmdbEnvironment(store_path, map_size=MIB) as env:
        store = LmdbBlobStore(env, b"chunks")
        written: list[tuple[ObjectId, bytes]] = []
        for batch in range(10):  # 20 MiB in 2 MiB batches
            items = chunks(8, 256 * KIB, seed=batch)
            store.put_many(items)
            written += items
        assert env.grow_count >= 3
        assert env.map_size >= 20 * MIB
        assert store.stats().count == 80
        for oid, data in written[::7]:
            assert store.get(oid) == data


def test_one_batch_larger_than_twice_the_map_fits_in_one_growth(store_path: Path) -> None:
    with LmdbEnvironment(store_path, map_size=MIB) as env:
        store = LmdbBlobStore(env, b"objects")
        items = chunks(3, 3 * MIB, seed=1)
        store.put_many(items)
        assert env.grow_count == 1
        assert store.has_many([oid for oid, _ in items]) == {oid for oid, _ in items}


def test_threads_writing_while_the_map_grows(store_path: Path) -> None:
    errors: list[BaseException] = []
    with LmdbEnvironment(store_path, map_size=MIB) as env:
        store = LmdbBlobStore(env, b"chunks")

        def worker(seed: int) -> None:
            try:
                for batch in range(4):
                    items = chunks(4, 128 * KIB, seed=seed * 10 + batch)
                    store.put_many(items)
                    for oid, data in items:
                        assert store.get(oid) == data
                    assert len(list(store.iter_ids())) >= 4
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert store.stats().count == 64
        assert env.grow_count >= 1


GROWER = """
import os, sys
from pathlib import Path
from dits.core.ids import hash_bytes
from dits.store.lmdb import LmdbBlobStore, LmdbEnvironment
env = LmdbEnvironment(Path(sys.argv[1]), map_size=1 << 20)
store = LmdbBlobStore(env, b"chunks")
for batch in range(10):
    items = [(hash_bytes(d), d) for d in (os.urandom(256 * 1024) for _ in range(8))]
    store.put_many(items)
    print(items[0][0].hex(), flush=True)
print("map", env.map_size, "grew", env.grow_count, flush=True)
env.close()
"""


def test_map_grown_by_another_process_is_adopted(store_path: Path) -> None:
    with LmdbEnvironment(store_path, map_size=MIB) as env:
        store = LmdbBlobStore(env, b"chunks")
        mine = chunks(1, 1000, seed=1)
        store.put_many(mine)
        proc = run_python(GROWER, str(store_path))
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        lines = out.split()
        theirs = [ObjectId(bytes.fromhex(h)) for h in lines if len(h) == 64]
        assert len(theirs) == 10
        assert env.map_size == MIB  # nothing noticed yet
        assert store.has_many(theirs) == set(theirs)  # the read adopts the grown map
        assert env.adopt_count == 1
        assert env.map_size > 20 * MIB
        assert store.get(mine[0][0]) == mine[0][1]
        store.put_many(chunks(4, 256 * KIB, seed=2))
        assert store.stats().count == 1 + 80 + 4


def test_reopen_keeps_everything(store_path: Path) -> None:
    items = chunks(5, 10 * KIB, seed=3)
    entry = IndexEntry(EntryKind.FILE, 0o100644, 5, 1, 2, 3, 4, items[0][0])
    with LmdbEnvironment(store_path) as env:
        LmdbBlobStore(env, b"chunks").put_many(items)
        LmdbBlobStore(env, b"objects").put_many(items[:1])
        refs = LmdbRefStore(env)
        refs.update_refs([RefUpdate("refs/heads/dev", items[1][0], None)])
        refs.set_head("refs/heads/dev")
        LmdbIndexStore(env).apply({"clip.mov": entry})
        stats = LmdbBlobStore(env, b"chunks").stats()
    with LmdbEnvironment(store_path) as env:
        store = LmdbBlobStore(env, b"chunks")
        assert store.stats() == stats
        assert all(store.get(oid) == data for oid, data in items)
        assert LmdbBlobStore(env, b"objects").stats().count == 1
        assert LmdbRefStore(env).get_head() == "refs/heads/dev"
        assert LmdbRefStore(env).list_refs() == {"refs/heads/dev": items[1][0]}
        assert LmdbIndexStore(env).read_all() == {"clip.mov": entry}
        assert env.map_size >= MIN_MAP_SIZE


# -- processes and reader slots ------------------------------------------------------------------

READER = """
import sys, time
from pathlib import Path
from dits.store.lmdb import LmdbEnvironment
env = LmdbEnvironment(Path(sys.argv[1]))
txn = env.handle.begin() if sys.argv[2] == "read" else None
print("ready", flush=True)
time.sleep(120)
"""


def start(code: str, *args: str) -> subprocess.Popen[str]:
    proc = run_python(code, *args)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_reader_check_clears_a_killed_reader(env: LmdbEnvironment) -> None:
    reader = start(READER, str(env.path), "read")
    try:
        assert env.handle.info()["num_readers"] >= 1
    finally:
        kill(reader)
    assert env.reader_check() == 1
    assert env.reader_check() == 0


def test_open_clears_reader_slots_of_dead_processes(store_path: Path) -> None:
    LmdbEnvironment(store_path).close()
    # A live process keeps the environment open, so LMDB does not reset the reader table on
    # our open; the slot of the killed reader must be cleared by the check in the constructor.
    idle = start(READER, str(store_path), "idle")
    try:
        kill(start(READER, str(store_path), "read"))
        with LmdbEnvironment(store_path) as env:
            assert env.stale_readers_cleared == 1
            LmdbBlobStore(env, b"chunks").put_many(chunks(2, 1000, seed=4))
    finally:
        kill(idle)


def test_one_environment_per_path_per_process(store_path: Path) -> None:
    first = LmdbEnvironment(store_path)
    second = LmdbEnvironment(store_path / ".." / "store")
    assert first.handle is second.handle
    items = chunks(2, 1000, seed=5)
    LmdbBlobStore(first, b"chunks").put_many(items)
    first.close()
    first.close()  # idempotent
    assert LmdbBlobStore(second, b"chunks").has_many([items[0][0]]) == {items[0][0]}
    with pytest.raises(StoreUnavailableError, match="closed"):
        LmdbBlobStore(first, b"chunks")  # the closed handle refuses work
    second.close()


def test_read_only_handle(store_path: Path) -> None:
    with pytest.raises(StoreUnavailableError, match="no store"):
        LmdbEnvironment(store_path, readonly=True)
    items = chunks(2, 1000, seed=6)
    with LmdbEnvironment(store_path) as env:
        LmdbBlobStore(env, b"chunks").put_many(items)
    with LmdbEnvironment(store_path, readonly=True) as env:
        store = LmdbBlobStore(env, b"chunks")
        assert store.get(items[0][0]) == items[0][1]
        with pytest.raises(StoreUnavailableError, match="read-only") as caught:
            store.put_many(chunks(1, 10, seed=7))
        assert not caught.value.transient
        with pytest.raises(StoreUnavailableError, match="read-only"):
            LmdbEnvironment(store_path)


def test_unsupported_format_is_refused(store_path: Path) -> None:
    with LmdbEnvironment(store_path) as env:
        handle = env.handle
        with handle.begin(write=True) as txn:
            txn.put(b"format", (99).to_bytes(4, "little"), db=handle.open_db(b"meta", txn=txn))
    with pytest.raises(StoreUnavailableError, match="format 99") as caught:
        LmdbEnvironment(store_path)
    assert not caught.value.transient


def test_stats_recount_when_counters_disagree(env: LmdbEnvironment) -> None:
    store = LmdbBlobStore(env, b"chunks")
    store.put_many(chunks(3, 1000, seed=8))
    handle = env.handle
    with handle.begin(write=True) as txn:  # a repair tool writing below the store
        txn.put(b"\x01" * 32, b"\x00" + bytes(500), db=handle.open_db(b"chunks", txn=txn))
    stats = store.stats()
    assert (stats.count, stats.plain_bytes, stats.stored_bytes) == (4, 3500, 3504)


def test_corrupt_ref_and_index_values_raise_corrupt_object(env: LmdbEnvironment) -> None:
    handle = env.handle
    with handle.begin(write=True) as txn:
        txn.put(b"refs/heads/bad", b"short", db=handle.open_db(b"refs", txn=txn))
        txn.put(b"bad.mov", b"\x01" * 10, db=handle.open_db(b"index", txn=txn))
    with pytest.raises(CorruptObjectError, match="refs/heads/bad"):
        LmdbRefStore(env).get_ref("refs/heads/bad")
    with pytest.raises(CorruptObjectError, match=r"bad\.mov"):
        LmdbIndexStore(env).read_all()


def test_non_utf8_paths_round_trip(env: LmdbEnvironment) -> None:
    path = os.fsdecode(b"raw\xffname.mov")
    entry = IndexEntry(EntryKind.FILE, 0o100644, 1, 1, 1, 1, 1, hash_bytes(b"x"))
    index = LmdbIndexStore(env)
    index.apply({path: entry})
    assert index.read_all() == {path: entry}
    raw_keys = [bytes(k) for k in _keys(env, b"index")]
    assert raw_keys == [b"raw\xffname.mov"]


def _keys(env: LmdbEnvironment, name: bytes) -> list[bytes]:
    handle = env.handle
    with handle.begin() as txn:
        cursor = txn.cursor(db=handle.open_db(name, txn=txn, create=False))
        return [bytes(k) for k in cursor.iternext(keys=True, values=False)]


# -- durability rule -------------------------------------------------------------------------------


def test_reference_points_are_durable_and_blob_writes_are_not(
    env: LmdbEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = env.durable

    def counting_durable() -> None:
        calls.append("sync")
        real()

    monkeypatch.setattr(env, "durable", counting_durable)
    blobs = LmdbBlobStore(env, b"chunks")
    refs = LmdbRefStore(env)
    index = LmdbIndexStore(env)
    oid = hash_bytes(b"commit")
    entry = IndexEntry(EntryKind.FILE, 0o100644, 1, 1, 1, 1, 1, oid)

    blobs.put_many([(oid, b"commit")])
    blobs.delete_many([oid])
    assert calls == []
    refs.update_refs([RefUpdate("refs/heads/main", oid, None)])
    assert calls == ["sync"]
    refs.set_head("refs/heads/main")
    index.apply({"a": entry})
    index.replace_all({"b": entry})
    assert calls == ["sync"] * 4


def test_durable_commits_option_syncs_every_commit(store_path: Path) -> None:
    with LmdbEnvironment(store_path, durable_commits=True) as env:
        flags = env.handle.flags()
        assert flags["sync"] and flags["metasync"]
    with LmdbEnvironment(store_path) as env:
        flags = env.handle.flags()
        assert not flags["sync"] and not flags["writemap"] and flags["readahead"]


# -- errors at the boundary ------------------------------------------------------------------------


def failing_commit(error: lmdb.Error) -> Callable[[object], None]:
    def commit(txn: object) -> None:
        raise error

    return commit


@pytest.mark.parametrize(
    ("error", "expected", "transient"),
    [
        (lmdb.DiskError("mdb_txn_commit", errno.ENOSPC), StorageFullError, False),
        (lmdb.Error("mdb_txn_commit", errno.EDQUOT), StorageFullError, False),
        (lmdb.Error("mdb_txn_commit", errno.EIO), StoreUnavailableError, True),
        (lmdb.ReadersFullError("mdb_txn_begin", 0), StoreUnavailableError, True),
        (lmdb.CorruptedError("mdb_txn_commit", 0), CorruptObjectError, False),
        (lmdb.PanicError("mdb_txn_commit", 0), StoreUnavailableError, False),
    ],
)
def test_lmdb_errors_are_translated_and_nothing_is_committed(
    env: LmdbEnvironment,
    monkeypatch: pytest.MonkeyPatch,
    error: lmdb.Error,
    expected: type[Exception],
    transient: bool,
) -> None:
    store = LmdbBlobStore(env, b"chunks")
    before = chunks(2, 1000, seed=9)
    store.put_many(before)
    batch = chunks(3, 1000, seed=10)
    monkeypatch.setattr(env, "_commit", failing_commit(error))
    with pytest.raises(expected) as caught:
        store.put_many(batch)
    assert getattr(caught.value, "transient", False) == transient
    if expected is StorageFullError:
        assert str(caught.value) == f"no space left on device while writing to {env.path}"
    monkeypatch.undo()
    assert store.has_many([oid for oid, _ in batch]) == set()
    assert store.stats().count == 2
    store.put_many(batch)
    assert store.stats().count == 5


def test_map_that_cannot_grow_is_storage_full(store_path: Path) -> None:
    with LmdbEnvironment(store_path, map_size=MIB, max_map_size=4 * MIB) as env:
        store = LmdbBlobStore(env, b"chunks")
        store.put_many(chunks(4, 256 * KIB, seed=11))
        with pytest.raises(StorageFullError, match="size limit"):
            store.put_many(chunks(32, 256 * KIB, seed=12))
        assert store.stats().count == 4
        assert env.map_size == 4 * MIB


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "small-disk", "8m") as mount_point:
        yield mount_point


def test_full_disk_is_storage_full_and_the_store_stays_consistent(small_disk: Path) -> None:
    path = small_disk / "store"
    stored: list[tuple[ObjectId, bytes]] = []
    with LmdbEnvironment(path, map_size=64 * MIB) as env:
        store = LmdbBlobStore(env, b"chunks")
        refs = LmdbRefStore(env)
        with pytest.raises(StorageFullError, match="no space left on device") as caught:
            for batch in range(20):
                items = chunks(2, MIB, seed=100 + batch)
                store.put_many(items)
                stored += items
        assert str(caught.value) == f"no space left on device while writing to {path}"
        assert stored, "the first batch should have fit"
        failed = items
        assert store.has_many([oid for oid, _ in failed]) == set()
        assert store.stats().count == len(stored)
        for oid, data in stored:
            assert store.get(oid) == data
        assert sorted(store.iter_ids()) == sorted(oid for oid, _ in stored)
        # Freeing space: LMDB reuses the freed pages once no snapshot can see them, which is
        # after one more commit; the ref update below is that commit.
        assert store.delete_many([oid for oid, _ in stored[:4]]) == 4
        refs.update_refs([RefUpdate("refs/heads/main", stored[-1][0], None)])
        store.put_many(failed)
        assert all(store.get(oid) == data for oid, data in failed)
    with LmdbEnvironment(path) as env:  # and it reopens
        assert LmdbBlobStore(env, b"chunks").stats().count == len(stored) - 4 + 2

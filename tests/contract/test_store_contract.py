"""One contract suite for every store backend (the docstrings in dits/store/base.py).

Each backend is a small factory class registered in ``BACKENDS``; every test runs once per
backend. To add one (an S3 blob store behind moto, say), write a factory with the same methods
(raising ``pytest.skip`` for the interfaces it does not implement) and register it.
"""

from __future__ import annotations

import os
import random
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from dits.core.compression import TAG_RAW, TAG_ZSTD
from dits.core.ids import ObjectId, hash_bytes
from dits.core.index import EntryKind, IndexEntry
from dits.errors import (
    ConflictError,
    CorruptObjectError,
    LockedError,
    ObjectNotFoundError,
    StorageFullError,
)
from dits.store.base import BlobStore, IndexStore, RefStore, RefUpdate
from dits.store.faulty import FaultyBlobStore
from dits.store.lmdb import LmdbBlobStore, LmdbEnvironment, LmdbIndexStore, LmdbRefStore
from dits.store.memory import MemoryBlobStore, MemoryIndexStore, MemoryRefStore
from dits.store.packs import PackBlobStore

MIB = 1 << 20


class Backend(Protocol):
    """What the suite needs from a backend: the three stores and two corruption helpers."""

    def blob_store(self) -> BlobStore: ...
    def ref_store(self) -> RefStore: ...
    def index_store(self) -> IndexStore: ...
    def raw(self, store: BlobStore, oid: ObjectId) -> bytes: ...
    def overwrite_raw(self, store: BlobStore, oid: ObjectId, at_rest: bytes) -> None: ...
    def close(self) -> None: ...


class MemoryBackend:
    def __init__(self, tmp_path: Path) -> None:
        del tmp_path

    def blob_store(self) -> BlobStore:
        return MemoryBlobStore()

    def ref_store(self) -> RefStore:
        return MemoryRefStore()

    def index_store(self) -> IndexStore:
        return MemoryIndexStore()

    def raw(self, store: BlobStore, oid: ObjectId) -> bytes:
        assert isinstance(store, MemoryBlobStore)
        return store.raw(oid)

    def overwrite_raw(self, store: BlobStore, oid: ObjectId, at_rest: bytes) -> None:
        assert isinstance(store, MemoryBlobStore)
        store.corrupt(oid, at_rest)

    def close(self) -> None:
        pass


class LmdbBackend:
    """LMDB in tmp_path; corruption goes through lmdb directly, below the store."""

    def __init__(self, tmp_path: Path) -> None:
        self.env = LmdbEnvironment(tmp_path / "store")

    def blob_store(self) -> BlobStore:
        return LmdbBlobStore(self.env, b"chunks")

    def ref_store(self) -> RefStore:
        return LmdbRefStore(self.env)

    def index_store(self) -> IndexStore:
        return LmdbIndexStore(self.env)

    def raw(self, store: BlobStore, oid: ObjectId) -> bytes:
        handle = self.env.handle
        with handle.begin() as txn:
            value = txn.get(oid, db=handle.open_db(b"chunks", txn=txn, create=False))
        assert value is not None
        return bytes(value)

    def overwrite_raw(self, store: BlobStore, oid: ObjectId, at_rest: bytes) -> None:
        handle = self.env.handle
        with handle.begin(write=True) as txn:
            txn.put(oid, at_rest, db=handle.open_db(b"chunks", txn=txn, create=False))

    def close(self) -> None:
        self.env.close()


class PackBackend(LmdbBackend):
    """Chunk bytes in pack files, LMDB as their index; corruption rewrites the pack file."""

    def blob_store(self) -> BlobStore:
        self.packs = PackBlobStore(self.env, self.env.path / "packs", pack_target_size=4 * MIB)
        return self.packs

    def raw(self, store: BlobStore, oid: ObjectId) -> bytes:
        where = self.packs.locate(oid)
        with open(where.path, "rb") as fh:
            fh.seek(where.data_offset)
            return fh.read(where.stored_size)

    def overwrite_raw(self, store: BlobStore, oid: ObjectId, at_rest: bytes) -> None:
        # A new record at the end of the pack, and the index pointed at it, below the store.
        where = self.packs.locate(oid)
        with open(where.path, "ab") as fh:
            offset = fh.tell()
            fh.write(oid + struct.pack("<I", len(at_rest)) + at_rest)
        handle = self.env.handle
        with handle.begin(write=True) as txn:
            db = handle.open_db(b"chunks", txn=txn, create=False)
            loc = struct.pack("<IQII", where.pack, offset, len(at_rest), where.plain_size)
            txn.put(oid, loc, db=db)
            meta = handle.open_db(b"meta", txn=txn, create=False)
            key = b"pack:%08d" % where.pack
            _, live = struct.unpack("<QQ", txn.get(key, db=meta))
            txn.put(key, struct.pack("<QQ", offset + 36 + len(at_rest), live), db=meta)

    def close(self) -> None:
        self.packs.close() if hasattr(self, "packs") else None
        super().close()


class FaultyMemoryBackend(MemoryBackend):
    """The fault-injecting wrapper, with no fault armed, must be a faithful BlobStore."""

    def blob_store(self) -> BlobStore:
        return FaultyBlobStore(MemoryBlobStore(), fail_on_put_call=None)

    def raw(self, store: BlobStore, oid: ObjectId) -> bytes:
        assert isinstance(store, FaultyBlobStore)
        return super().raw(store.inner, oid)

    def overwrite_raw(self, store: BlobStore, oid: ObjectId, at_rest: bytes) -> None:
        assert isinstance(store, FaultyBlobStore)
        super().overwrite_raw(store.inner, oid, at_rest)


BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "memory": MemoryBackend,
    "lmdb": LmdbBackend,
    "packs": PackBackend,
    "faulty-memory": FaultyMemoryBackend,
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    made = BACKENDS[request.param](tmp_path)
    yield made
    made.close()


@pytest.fixture
def blobs(backend: Backend) -> BlobStore:
    return backend.blob_store()


@pytest.fixture
def refs(backend: Backend) -> RefStore:
    return backend.ref_store()


@pytest.fixture
def index(backend: Backend) -> IndexStore:
    return backend.index_store()


def blob(data: bytes) -> tuple[ObjectId, bytes]:
    return hash_bytes(data), data


def random_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def text_bytes(size: int) -> bytes:
    line = b"00:01:02:03 cut to B-roll, audio fade 12 frames; proxy render queued\n"
    return (line * (size // len(line) + 1))[:size]


def oid_of(n: int) -> ObjectId:
    return hash_bytes(n.to_bytes(8, "little"))


# -- BlobStore -------------------------------------------------------------------------------


def test_blob_protocol_is_implemented(blobs: BlobStore) -> None:
    assert isinstance(blobs, BlobStore)


@pytest.mark.parametrize("size", [0, 1, 100, 70_000, 3 * MIB])
def test_put_then_get_returns_the_plain_bytes(blobs: BlobStore, size: int) -> None:
    oid, data = blob(random_bytes(size, seed=size))
    written = blobs.put_many([(oid, data)])
    assert written >= 1  # at least the tag byte
    assert blobs.get(oid) == data


def test_put_accepts_memoryviews(blobs: BlobStore) -> None:
    data = text_bytes(50_000)
    oid = hash_bytes(data)
    blobs.put_many([(oid, memoryview(data))])
    assert blobs.get(oid) == data


def test_has_many_returns_the_present_subset(blobs: BlobStore) -> None:
    items = [blob(random_bytes(1000, seed=i)) for i in range(10)]
    blobs.put_many(items[:6])
    ids = [oid for oid, _ in items]
    assert blobs.has_many(ids) == set(ids[:6])
    assert blobs.has_many(ids[6:]) == set()
    assert blobs.has_many([]) == set()
    assert blobs.has_many([ids[0], ids[0], ids[9]]) == {ids[0]}


def test_put_is_idempotent(blobs: BlobStore) -> None:
    items = [blob(random_bytes(5000, seed=i)) for i in range(5)]
    first = blobs.put_many(items)
    before = blobs.stats()
    assert blobs.put_many(items) == 0
    assert blobs.stats() == before
    assert first == before.stored_bytes
    more = [*items, blob(b"new one")]
    assert blobs.put_many(more) == len(b"new one") + 1
    assert blobs.stats().count == 6


def test_duplicate_ids_in_one_batch_are_stored_once(blobs: BlobStore) -> None:
    oid, data = blob(b"twice" * 100)
    blobs.put_many([(oid, data), (oid, data)])
    assert blobs.stats().count == 1
    assert list(blobs.iter_ids()) == [oid]


def test_empty_batch_writes_nothing(blobs: BlobStore) -> None:
    assert blobs.put_many([]) == 0
    assert blobs.stats().count == 0


def test_get_missing_raises_object_not_found(blobs: BlobStore) -> None:
    with pytest.raises(ObjectNotFoundError):
        blobs.get(oid_of(1))


def test_failing_item_source_leaves_nothing_behind(blobs: BlobStore) -> None:
    good = [blob(random_bytes(100, seed=i)) for i in range(3)]

    def items() -> Iterator[tuple[ObjectId, bytes]]:
        yield from good
        raise RuntimeError("reader failed mid-batch")

    with pytest.raises(RuntimeError):
        blobs.put_many(items())
    assert blobs.has_many([oid for oid, _ in good]) == set()
    assert blobs.stats().count == 0


def test_bad_id_length_is_refused(blobs: BlobStore) -> None:
    with pytest.raises(ValueError):
        blobs.put_many([(ObjectId(b"short"), b"x")])


@pytest.mark.parametrize(
    "damage",
    ["flip_payload_bit", "other_content", "unknown_tag", "truncated_frame", "empty"],
)
def test_corrupted_value_raises_corrupt_object(
    backend: Backend, blobs: BlobStore, damage: str
) -> None:
    data = text_bytes(100_000) if damage == "truncated_frame" else random_bytes(4096)
    oid = hash_bytes(data)
    blobs.put_many([(oid, data)])
    at_rest = backend.raw(blobs, oid)
    if damage == "flip_payload_bit":
        bad = at_rest[:100] + bytes([at_rest[100] ^ 0x10]) + at_rest[101:]
    elif damage == "other_content":
        bad = bytes([TAG_RAW]) + b"somebody else's bytes"
    elif damage == "unknown_tag":
        bad = b"\x09" + at_rest[1:]
    elif damage == "truncated_frame":
        assert at_rest[0] == TAG_ZSTD
        bad = at_rest[: len(at_rest) // 2]
    else:
        bad = b""
    backend.overwrite_raw(blobs, oid, bad)
    with pytest.raises(CorruptObjectError, match=oid.hex()[:12]):
        blobs.get(oid)
    assert blobs.has_many([oid]) == {oid}  # present, just bad: fsck's business


def test_delete_many_removes_only_present_ids(blobs: BlobStore) -> None:
    items = [blob(random_bytes(2000, seed=i)) for i in range(4)]
    blobs.put_many(items)
    ids = [oid for oid, _ in items]
    assert blobs.delete_many([ids[0], ids[1], oid_of(99), ids[0]]) == 2
    assert blobs.has_many(ids) == {ids[2], ids[3]}
    with pytest.raises(ObjectNotFoundError):
        blobs.get(ids[0])
    assert blobs.delete_many([]) == 0
    stats = blobs.stats()
    assert stats.count == 2
    assert stats.plain_bytes == 4000
    blobs.put_many(items[:1])  # a deleted id can come back
    assert blobs.get(ids[0]) == items[0][1]


def test_iter_ids_yields_every_id_in_ascending_order(blobs: BlobStore) -> None:
    items = [blob(random_bytes(10, seed=i)) for i in range(50)]
    blobs.put_many(items)
    got = list(blobs.iter_ids())
    assert got == sorted(oid for oid, _ in items)


def test_iter_ids_is_a_snapshot(blobs: BlobStore) -> None:
    blobs.put_many([blob(random_bytes(10, seed=i)) for i in range(5)])
    it = blobs.iter_ids()
    first = next(it)
    blobs.put_many([blob(random_bytes(10, seed=100 + i)) for i in range(5)])
    blobs.delete_many([first])
    assert len([first, *it]) == 5


def test_stats_count_plain_and_stored_bytes(blobs: BlobStore) -> None:
    assert (blobs.stats().count, blobs.stats().plain_bytes, blobs.stats().stored_bytes) == (0, 0, 0)
    items = [blob(random_bytes(1000 * (i + 1), seed=i)) for i in range(3)]
    blobs.put_many(items)
    stats = blobs.stats()
    assert stats.count == 3
    assert stats.plain_bytes == 6000
    assert stats.stored_bytes == 6000 + 3  # random data: raw, one tag byte each


def test_compressible_data_is_smaller_at_rest(backend: Backend, blobs: BlobStore) -> None:
    oid, data = blob(text_bytes(MIB))
    written = blobs.put_many([(oid, data)])
    stats = blobs.stats()
    assert stats.plain_bytes == MIB
    assert stats.stored_bytes == written < MIB // 10
    assert backend.raw(blobs, oid)[0] == TAG_ZSTD
    assert blobs.get(oid) == data


def test_random_data_is_stored_raw(backend: Backend, blobs: BlobStore) -> None:
    oid, data = blob(os.urandom(300_000))
    blobs.put_many([(oid, data)])
    assert backend.raw(blobs, oid) == bytes([TAG_RAW]) + data


def test_concurrent_puts_and_gets(blobs: BlobStore) -> None:
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            items = [blob(random_bytes(3000, seed=seed * 100 + i)) for i in range(20)]
            for start in range(0, 20, 5):
                blobs.put_many(items[start : start + 5])
                for oid, data in items[: start + 5]:
                    assert blobs.get(oid) == data
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert blobs.stats().count == 120


def test_put_counts_bytes_of_wide_memoryviews(blobs: BlobStore) -> None:
    data = random_bytes(4000, seed=77)
    oid = hash_bytes(data)
    blobs.put_many([(oid, memoryview(data).cast("I"))])
    assert blobs.get(oid) == data
    assert blobs.stats().plain_bytes == 4000


def test_faulty_wrapper_fails_the_chosen_put_and_stores_nothing(blobs: BlobStore) -> None:
    faulty = FaultyBlobStore(blobs, fail_on_put_call=2)
    first, second, third = (blob(random_bytes(100, seed=i)) for i in range(3))
    faulty.put_many([first])
    with pytest.raises(StorageFullError, match="no space left on device"):
        faulty.put_many([second])
    assert blobs.has_many([first[0], second[0]]) == {first[0]}
    faulty.put_many([second, third])
    assert faulty.put_calls == 3
    assert faulty.stats().count == 3
    other = FaultyBlobStore(blobs, fail_on_put_call=1, error=LockedError)
    with pytest.raises(LockedError):
        other.put_many([blob(b"x")])


# -- RefStore --------------------------------------------------------------------------------


def test_ref_protocol_is_implemented(refs: RefStore) -> None:
    assert isinstance(refs, RefStore)


def test_missing_ref_is_none(refs: RefStore) -> None:
    assert refs.get_ref("refs/heads/main") is None
    assert refs.list_refs() == {}


def test_create_only_then_compare_and_swap(refs: RefStore) -> None:
    a, b = oid_of(1), oid_of(2)
    refs.update_refs([RefUpdate("refs/heads/main", a, None)])
    assert refs.get_ref("refs/heads/main") == a
    refs.update_refs([RefUpdate("refs/heads/main", b, a)])
    assert refs.get_ref("refs/heads/main") == b


def test_create_only_conflicts_when_the_ref_exists(refs: RefStore) -> None:
    a, b = oid_of(1), oid_of(2)
    refs.update_refs([RefUpdate("refs/heads/main", a, None)])
    with pytest.raises(ConflictError, match="refs/heads/main"):
        refs.update_refs([RefUpdate("refs/heads/main", b, None)])
    assert refs.get_ref("refs/heads/main") == a


def test_stale_expected_value_conflicts_and_changes_nothing(refs: RefStore) -> None:
    a, b, c = oid_of(1), oid_of(2), oid_of(3)
    refs.update_refs([RefUpdate("refs/heads/main", a, None)])
    with pytest.raises(ConflictError):
        refs.update_refs([RefUpdate("refs/heads/main", c, b)])
    with pytest.raises(ConflictError):
        refs.update_refs([RefUpdate("refs/heads/topic", c, b)])  # expected, but absent
    assert refs.list_refs() == {"refs/heads/main": a}


def test_one_bad_update_applies_none(refs: RefStore) -> None:
    a, b, c = oid_of(1), oid_of(2), oid_of(3)
    refs.update_refs([RefUpdate("refs/heads/main", a, None), RefUpdate("refs/heads/dev", a, None)])
    with pytest.raises(ConflictError, match="refs/heads/dev"):
        refs.update_refs(
            [
                RefUpdate("refs/heads/main", b, a),  # would succeed alone
                RefUpdate("refs/tags/v1", b, None),  # would succeed alone
                RefUpdate("refs/heads/dev", b, c),  # stale
            ]
        )
    assert refs.list_refs() == {"refs/heads/dev": a, "refs/heads/main": a}


def test_delete_with_new_none(refs: RefStore) -> None:
    a = oid_of(1)
    refs.update_refs([RefUpdate("refs/heads/topic", a, None)])
    with pytest.raises(ConflictError):
        refs.update_refs([RefUpdate("refs/heads/topic", None, oid_of(2))])
    refs.update_refs([RefUpdate("refs/heads/topic", None, a)])
    assert refs.get_ref("refs/heads/topic") is None
    assert refs.list_refs() == {}


def test_list_refs_filters_by_prefix(refs: RefStore) -> None:
    updates = [
        RefUpdate("refs/heads/main", oid_of(1), None),
        RefUpdate("refs/heads/feature/a", oid_of(2), None),
        RefUpdate("refs/tags/v1.0", oid_of(3), None),
        RefUpdate("refs/remotes/origin/main", oid_of(4), None),
    ]
    refs.update_refs(updates)
    assert refs.list_refs() == {u.name: u.new for u in updates}
    assert refs.list_refs("refs/heads/") == {
        "refs/heads/feature/a": oid_of(2),
        "refs/heads/main": oid_of(1),
    }
    assert refs.list_refs("refs/tags/") == {"refs/tags/v1.0": oid_of(3)}
    assert refs.list_refs("refs/nothing/") == {}
    assert refs.list_refs("") == {u.name: u.new for u in updates}


def test_duplicate_names_in_one_update_are_refused(refs: RefStore) -> None:
    with pytest.raises(ValueError):
        refs.update_refs(
            [RefUpdate("refs/heads/x", oid_of(1), None), RefUpdate("refs/heads/x", oid_of(2), None)]
        )
    assert refs.list_refs() == {}


def test_empty_update_is_a_no_op(refs: RefStore) -> None:
    refs.update_refs([])
    assert refs.list_refs() == {}


def test_head_defaults_to_main_and_can_move(refs: RefStore) -> None:
    assert refs.get_head() == "refs/heads/main"
    refs.set_head("refs/heads/unborn-branch")
    assert refs.get_head() == "refs/heads/unborn-branch"
    assert refs.get_ref("refs/heads/unborn-branch") is None


# -- IndexStore ------------------------------------------------------------------------------


def entry(n: int, size: int = 1000) -> IndexEntry:
    return IndexEntry(
        EntryKind.FILE, 0o100644, size, 10**18 + n, 10**18 + n, 1000 + n, 42, oid_of(n)
    )


def test_index_protocol_is_implemented(index: IndexStore) -> None:
    assert isinstance(index, IndexStore)


def test_index_starts_empty(index: IndexStore) -> None:
    assert index.read_all() == {}
    assert index.get("a.mov") is None


def test_apply_sets_and_removes(index: IndexStore) -> None:
    index.apply({"a.mov": entry(1), "dir/b.mov": entry(2), "café/é.wav": entry(3)})
    assert index.get("a.mov") == entry(1)
    assert index.get("café/é.wav") == entry(3)
    index.apply({"a.mov": None, "dir/b.mov": entry(4), "never-there": None})
    assert index.read_all() == {"dir/b.mov": entry(4), "café/é.wav": entry(3)}


def test_symlink_entries_round_trip(index: IndexStore) -> None:
    link = IndexEntry(EntryKind.SYMLINK, 0o120777, 9, -5, 0, 0, 0, oid_of(7))
    index.apply({"link": link})
    assert index.get("link") == link


def test_replace_all_replaces_everything(index: IndexStore) -> None:
    index.apply({"old1": entry(1), "old2": entry(2)})
    index.replace_all({"new": entry(3), "old2": entry(4)})
    assert index.read_all() == {"new": entry(3), "old2": entry(4)}
    index.replace_all({})
    assert index.read_all() == {}


def test_read_all_is_a_snapshot(index: IndexStore) -> None:
    index.apply({"a": entry(1)})
    snapshot = index.read_all()
    index.apply({"a": None, "b": entry(2)})
    assert snapshot == {"a": entry(1)}
    snapshot["c"] = entry(3)
    assert index.get("c") is None


def test_many_entries(index: IndexStore) -> None:
    entries = {f"shoot/day{n // 100}/clip{n:05}.mov": entry(n) for n in range(2000)}
    index.replace_all(entries)
    assert index.read_all() == entries
    assert index.get("shoot/day7/clip00777.mov") == entry(777)

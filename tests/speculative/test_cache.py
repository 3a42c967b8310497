"""SpeculativeCache: expiry, file records, counters, reopening, and several processes at once."""

from __future__ import annotations

import math
import multiprocessing
from pathlib import Path

import pytest

from dits.core.ids import ObjectId, hash_bytes
from dits.core.objects import ChunkRef, Manifest
from dits.errors import CorruptObjectError
from dits.store.lmdb import StoreUnavailableError
from dits.store.speculative import SpeculativeCache, server_scope

SCOPE = server_scope("dits://127.0.0.1:4433/project", "token-a")


def oid(n: int) -> ObjectId:
    return hash_bytes(n.to_bytes(8, "little"))


def manifest(*sizes: int) -> Manifest:
    chunks = tuple(ChunkRef(oid(1000 + i), s) for i, s in enumerate(sizes))
    return Manifest("media-v1", sum(sizes), oid(99), chunks)


@pytest.fixture
def cache(tmp_path: Path):  # type: ignore[no-untyped-def]
    c = SpeculativeCache(tmp_path / "speculative" / "cache")
    yield c
    c.close()


def test_marks_expire_and_permanent_marks_do_not(cache: SpeculativeCache) -> None:
    cache.mark_on_server(SCOPE, [oid(1), oid(2)], expires_at=100.0)
    cache.mark_on_server(SCOPE, [oid(3)], expires_at=None)
    assert cache.on_server(SCOPE, [oid(1), oid(2), oid(3), oid(4)], now=50.0) == [
        True,
        True,
        True,
        False,
    ]
    assert cache.on_server(SCOPE, [oid(1), oid(3)], now=100.0) == [False, True]
    assert cache.on_server(SCOPE, [oid(3)], now=1e300) == [True]
    assert cache.on_server(SCOPE, [], now=0.0) == []


def test_a_mark_keeps_the_later_expiry(cache: SpeculativeCache) -> None:
    cache.mark_on_server(SCOPE, [oid(1)], None)
    cache.mark_on_server(SCOPE, [oid(1)], 10.0)  # a fresh upload never shortens "for good"
    cache.mark_on_server(SCOPE, [oid(2)], 10.0)
    cache.mark_on_server(SCOPE, [oid(2)], 20.0)
    cache.mark_on_server(SCOPE, [oid(2)], 15.0)
    assert cache.on_server(SCOPE, [oid(1), oid(2)], now=19.0) == [True, True]
    assert cache.on_server(SCOPE, [oid(2)], now=20.0) == [False]


def test_forget_and_prune(cache: SpeculativeCache) -> None:
    cache.mark_on_server(SCOPE, [oid(1), oid(2)], 10.0)
    cache.mark_on_server(SCOPE, [oid(3)], None)
    cache.forget_on_server(SCOPE, [oid(2), oid(7)])
    assert cache.on_server(SCOPE, [oid(1), oid(2)], 0.0) == [True, False]
    assert cache.prune_expired(10.0) == 1
    assert cache.on_server(SCOPE, [oid(1), oid(3)], 0.0) == [False, True]


def test_bad_ids_and_nan_are_refused(cache: SpeculativeCache) -> None:
    with pytest.raises(ValueError):
        cache.mark_on_server(SCOPE, [ObjectId(b"short")], None)
    with pytest.raises(ValueError):
        cache.mark_on_server(SCOPE, [oid(1)], math.nan)


def test_manifest_needs_all_four_stat_values_to_match(cache: SpeculativeCache) -> None:
    m = manifest(100, 50)
    cache.record_file("/w/a.mov", 150, 1_000, 42, m)
    assert cache.manifest_for("/w/a.mov", 150, 1_000, 42) == m
    assert cache.manifest_for("/w/a.mov", 151, 1_000, 42) is None
    assert cache.manifest_for("/w/a.mov", 150, 1_001, 42) is None
    assert cache.manifest_for("/w/a.mov", 150, 1_000, 43) is None
    assert cache.manifest_for("/w/b.mov", 150, 1_000, 42) is None
    cache.forget_file("/w/a.mov")
    cache.forget_file("/w/never-seen")
    assert cache.manifest_for("/w/a.mov", 150, 1_000, 42) is None


def test_a_newer_record_replaces_the_old_one(cache: SpeculativeCache) -> None:
    cache.record_file("/w/a.mov", 150, 1, 1, manifest(100, 50))
    newer = manifest(70, 70, 70)
    cache.record_file("/w/a.mov", 210, 2, 1, newer)
    assert cache.manifest_for("/w/a.mov", 150, 1, 1) is None
    assert cache.manifest_for("/w/a.mov", 210, 2, 1) == newer


def test_record_refuses_a_size_that_is_not_the_manifests(cache: SpeculativeCache) -> None:
    with pytest.raises(ValueError):
        cache.record_file("/w/a.mov", 10, 1, 1, manifest(100))


def test_paths_that_are_not_utf8_round_trip(cache: SpeculativeCache) -> None:
    odd = b"/w/caf\xe9.mov".decode("utf-8", "surrogateescape")
    m = manifest(5)
    cache.record_file(odd, 5, 1, 1, m)
    assert cache.manifest_for(odd, 5, 1, 1) == m


def test_a_large_manifest_fits(cache: SpeculativeCache) -> None:
    # A 100 GiB file at ~315 KiB per chunk: about 330,000 chunks, a ~13 MB record.
    big = Manifest(
        "media-v1", 330_000 * 7, oid(5), tuple(ChunkRef(oid(i), 7) for i in range(330_000))
    )
    cache.record_file("/w/big.mov", big.size, 1, 1, big)
    assert cache.manifest_for("/w/big.mov", big.size, 1, 1) == big


def test_counters_and_values(cache: SpeculativeCache) -> None:
    assert cache.counters() == {}
    assert cache.get_value("upload_rate") is None
    cache.add_counters(files_processed=1, bytes_uploaded=1000)
    cache.add_counters(files_processed=2, chunks_uploaded=4)
    cache.add_counters()
    assert cache.counters() == {"bytes_uploaded": 1000, "chunks_uploaded": 4, "files_processed": 3}
    cache.set_value("upload_rate", 1.5e6)
    cache.set_value("upload_rate", 2.5e6)
    assert cache.get_value("upload_rate") == 2.5e6


def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    m = manifest(10, 20)
    with SpeculativeCache(path) as c:
        c.mark_on_server(SCOPE, [oid(1)], 500.0)
        c.record_file("/w/a.mov", 30, 5, 6, m)
        c.add_counters(files_processed=7)
        c.set_value("upload_rate", 123.0)
    with SpeculativeCache(path) as c:
        assert c.on_server(SCOPE, [oid(1)], 499.0) == [True]
        assert c.manifest_for("/w/a.mov", 30, 5, 6) == m
        assert c.counters() == {"files_processed": 7}
        assert c.get_value("upload_rate") == 123.0
    with SpeculativeCache(path, readonly=True) as c:
        assert c.manifest_for("/w/a.mov", 30, 5, 6) == m
        with pytest.raises(StoreUnavailableError):
            c.add_counters(files_processed=1)


def test_readonly_open_of_a_missing_cache_fails(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailableError):
        SpeculativeCache(tmp_path / "absent", readonly=True)


def test_two_handles_in_one_process_share_the_environment(tmp_path: Path) -> None:
    a = SpeculativeCache(tmp_path / "c")
    b = SpeculativeCache(tmp_path / "c")
    a.add_counters(x=1)
    b.add_counters(x=1)
    a.close()
    assert b.counters() == {"x": 2}
    b.close()


def test_a_garbled_record_is_reported_as_corrupt(cache: SpeculativeCache) -> None:
    cache.record_file("/w/a.mov", 5, 1, 1, manifest(5))
    env = cache._env  # test-only: damage the stored manifest behind the cache's back
    files = cache._files

    def body(txn):  # type: ignore[no-untyped-def]
        raw = bytes(txn.get(b"/w/a.mov", db=files))
        txn.put(b"/w/a.mov", raw[:-3], db=files)

    env.write(body)
    with pytest.raises(CorruptObjectError):
        cache.manifest_for("/w/a.mov", 5, 1, 1)


# --------------------------------------------------------------------------- several processes


def _writer(path: str, worker: int, rounds: int) -> None:
    cache = SpeculativeCache(Path(path))
    try:
        for i in range(rounds):
            cache.mark_on_server(SCOPE, [oid(worker * 10_000 + i)], None)
            cache.add_counters(chunks_uploaded=1, bytes_uploaded=10)
            cache.record_file(f"/w/{worker}-{i}.mov", 5, i, worker, manifest(5))
    finally:
        cache.close()


def test_several_processes_write_and_read_at_once(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    reader = SpeculativeCache(path)  # this process reads while the others write
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_writer, args=(str(path), w, 200)) for w in range(3)]
    for p in workers:
        p.start()
    seen = 0
    while any(p.is_alive() for p in workers):
        seen = max(seen, reader.counters().get("chunks_uploaded", 0))
        reader.on_server(SCOPE, [oid(0)], 0.0)
    for p in workers:
        p.join()
        assert p.exitcode == 0
    assert reader.counters() == {"bytes_uploaded": 6000, "chunks_uploaded": 600}
    ids = [oid(w * 10_000 + i) for w in range(3) for i in range(200)]
    assert all(reader.on_server(SCOPE, ids, 1e12))
    assert reader.manifest_for("/w/2-199.mov", 5, 199, 2) == manifest(5)
    reader.close()


def test_the_map_grows_when_full(tmp_path: Path) -> None:
    with SpeculativeCache(tmp_path / "c", map_size=1 << 20) as c:
        ids = [oid(i) for i in range(100_000)]  # ~8 MB of entries in a 1 MiB map
        for lo in range(0, len(ids), 25_000):
            c.mark_on_server(SCOPE, ids[lo : lo + 25_000], None)
        big = manifest(*([3] * 50_000))
        c.record_file("/w/big.mov", big.size, 1, 1, big)
        assert c._env.grow_count > 0
        assert all(c.on_server(SCOPE, ids, 0.0))
        assert c.manifest_for("/w/big.mov", big.size, 1, 1) == big


def test_marks_are_per_remote_repository_and_token(cache: SpeculativeCache) -> None:
    # The server shows speculative chunks only to their uploader's token in their repository:
    # what origin holds must not stop an upload to a second remote (or with another token).
    other_repo = server_scope("dits://127.0.0.1:4433/other", "token-a")
    other_token = server_scope("dits://127.0.0.1:4433/project", "token-b")
    assert len({SCOPE, other_repo, other_token}) == 3
    cache.mark_on_server(SCOPE, [oid(1)], None)
    assert cache.on_server(SCOPE, [oid(1)], 0.0) == [True]
    assert cache.on_server(other_repo, [oid(1)], 0.0) == [False]
    assert cache.on_server(other_token, [oid(1)], 0.0) == [False]
    cache.forget_on_server(other_repo, [oid(1)])
    assert cache.on_server(SCOPE, [oid(1)], 0.0) == [True]
    with pytest.raises(ValueError):
        cache.on_server(b"short", [oid(1)], 0.0)

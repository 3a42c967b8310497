"""The Ingestor's mapped read path: same manifests as readv, leases, truncation, errors."""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from pathlib import Path
from typing import Any

import blake3
import pytest

import dits.ops.ingest as ingest
from dits.core.chunking import MEDIA_PROFILE, cut_points
from dits.core.ids import ObjectId
from dits.core.objects import ChunkRef, Manifest
from dits.errors import StorageFullError
from dits.ops.ingest import Ingestor, UnreadableFileError
from dits.store.memory import MemoryBlobStore
from tests.conftest import random_bytes

MIB = 1 << 20


def _ingest(path: Path, **kwargs: Any) -> tuple[Manifest, Ingestor, MemoryBlobStore]:
    store = MemoryBlobStore()
    with Ingestor(store, **kwargs) as ing:
        manifest, _ = ing.ingest_file(path, path.name, 0)
        ing.flush()
    return manifest, ing, store


def _expected(data: bytes) -> Manifest:
    ends = cut_points(data, MEDIA_PROFILE)
    starts = [0, *ends[:-1]]
    chunks = tuple(
        ChunkRef(ObjectId(blake3.blake3(data[s:e]).digest()), e - s)
        for s, e in zip(starts, ends, strict=True)
    )
    return Manifest(MEDIA_PROFILE.name, len(data), ObjectId(blake3.blake3(data).digest()), chunks)


def _count_maps(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    opened: list[object] = []
    real_open = ingest._LeasedMap.open

    def spy(fd: int, before: os.stat_result) -> object:
        result = real_open(fd, before)
        opened.append(result)
        return result

    monkeypatch.setattr(ingest._LeasedMap, "open", staticmethod(spy))
    return opened


@pytest.fixture
def media(tmp_path: Path) -> tuple[Path, bytes]:
    data = random_bytes(23 * MIB + 12345, 7)
    path = tmp_path / "render.mov"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("window", [1 * MIB, 3 * MIB, 16 * MIB])
def test_mapped_read_gives_the_manifest_and_chunks_of_the_buffered_read(
    media: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch, window: int
) -> None:
    path, data = media
    monkeypatch.setattr(ingest, "MMAP_MIN", 1 << 62)
    buffered, _, buffered_store = _ingest(path, window_size=window)
    monkeypatch.setattr(ingest, "MMAP_MIN", 0)
    opened = _count_maps(monkeypatch)
    mapped, _, mapped_store = _ingest(path, window_size=window, pool_buffers=2)
    if not isinstance(opened[0], ingest._LeasedMap):
        pytest.skip("no leases or mmap on this file system")
    assert mapped == buffered == _expected(data)
    assert mapped_store.stats() == buffered_store.stats()
    for ref in mapped.chunks:
        assert mapped_store.get(ref.id) == buffered_store.get(ref.id)


def test_a_file_open_for_writing_elsewhere_is_read_without_a_mapping(
    media: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, data = media
    monkeypatch.setattr(ingest, "MMAP_MIN", 0)
    opened = _count_maps(monkeypatch)
    with open(path, "ab"):  # a render still being written: no read lease for us
        manifest, _, _ = _ingest(path)
    assert opened == [None]
    assert manifest == _expected(data)


def test_a_truncation_while_mapped_waits_for_the_lease_then_the_file_is_read_again(
    media: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, data = media
    monkeypatch.setattr(ingest, "MMAP_MIN", 0)
    opened = _count_maps(monkeypatch)
    truncated = threading.Event()

    def truncate() -> None:
        os.truncate(path, 9 * MIB)  # blocks in the kernel until the lease is let go
        truncated.set()

    started: list[threading.Thread] = []

    def on_bytes(_: int) -> None:
        if not started:
            started.append(threading.Thread(target=truncate))
            started[0].start()
            time.sleep(0.3)  # the truncation is now waiting for the lease
            assert not truncated.is_set() or not isinstance(opened[0], ingest._LeasedMap)

    manifest, ing, _ = _ingest(path, window_size=1 * MIB, on_bytes=on_bytes)
    started[0].join()
    assert manifest == _expected(data[: 9 * MIB])
    assert ing.stats.reread_files == [path.name]


def test_a_read_error_in_the_mapping_is_an_unreadable_file_and_the_lease_is_let_go(
    media: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, data = media
    monkeypatch.setattr(ingest, "MMAP_MIN", 0)
    opened = _count_maps(monkeypatch)
    calls = {"n": 0}
    real_populate = ingest._LeasedMap.populate

    def failing(self: ingest._LeasedMap, start: int, end: int) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_populate(self, start, end)

    monkeypatch.setattr(ingest._LeasedMap, "populate", failing)
    store = MemoryBlobStore()
    with Ingestor(store, window_size=2 * MIB) as ing:
        with pytest.raises(UnreadableFileError, match="Input/output error"):
            ing.ingest_file(path, path.name, 0)
        if not isinstance(opened[0], ingest._LeasedMap):
            pytest.skip("no leases or mmap on this file system")
        os.truncate(path, 5 * MIB)  # would wait 45 s if the lease were still held
        manifest, _ = ing.ingest_file(path, path.name, 0)
    assert manifest == _expected(data[: 5 * MIB])


def test_a_store_error_during_a_mapped_read_reaches_the_caller(
    media: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = media
    monkeypatch.setattr(ingest, "MMAP_MIN", 0)

    class FullStore(MemoryBlobStore):
        def put_many(self, items: Any) -> int:
            raise StorageFullError("no space left on device while writing chunks")

    ing = Ingestor(FullStore(), window_size=1 * MIB, batch_bytes=1 * MIB)
    with pytest.raises(StorageFullError):
        ing.ingest_file(path, path.name, 0)
    with contextlib.suppress(StorageFullError):
        ing.close()  # the batch still pending fails the same way
    os.truncate(path, 1 * MIB)  # the lease is gone: this does not wait


def test_mapped_pages_are_dropped_behind_the_consumers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "long.mov"
    path.write_bytes(random_bytes(96 * MIB, 9))
    with open(path, "rb") as fh:  # page-cached, as in the benchmark
        while fh.read(16 * MIB):
            pass
    monkeypatch.setattr(ingest, "MMAP_MIN", 0)
    opened = _count_maps(monkeypatch)

    def rss_file_kib() -> int:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("RssFile:"):
                    return int(line.split()[1])
        return 0

    base = rss_file_kib()
    peak = [0]

    def on_bytes(_: int) -> None:
        peak[0] = max(peak[0], rss_file_kib() - base)

    _ingest(path, window_size=4 * MIB, pool_buffers=2, on_bytes=on_bytes)
    if not isinstance(opened[0], ingest._LeasedMap):
        pytest.skip("no leases or mmap on this file system")
    assert peak[0] < 32 * 1024  # two 4 MiB windows in flight plus the lookahead, not 96 MiB

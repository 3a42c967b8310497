"""Stager and GrowingFile on real repositories: the chunks and manifests ``dits add`` makes."""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dits.core.chunking import MEDIA_PROFILE, PROJECT_PROFILE, ChunkingProfile
from dits.core.objects import ChunkRef, Manifest
from dits.ops.add import add_paths
from dits.ops.ingest import UnreadableFileError
from dits.repository import Repository
from dits.speculative.stager import GrowingFile, Stager
from dits.store.speculative import SpeculativeCache
from tests.unit.test_chunking import box, ftyp, prores_stream, rand

MIB = 1 << 20
KIB = 1 << 10


@pytest.fixture
def cache(repo: Repository) -> Iterator[SpeculativeCache]:
    c = SpeculativeCache(repo.dits_dir / "speculative" / "cache")
    yield c
    c.close()


def added_manifest(repo: Repository, rel: str) -> Manifest:
    """What ``dits add`` makes of the file: the manifest its index entry names."""
    result = add_paths(repo, [rel])
    assert not result.errors
    entry = repo.index.get(rel)
    assert entry is not None
    return repo.get_typed(entry.oid, Manifest)


def old_mtime(path: Path) -> None:
    """Age a file's mtime past the racy window (instead of sleeping)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 10 * 10**9))


# --------------------------------------------------------------------------- Stager


def test_stage_file_makes_the_manifest_add_makes(repo: Repository, cache: SpeculativeCache) -> None:
    path = repo.root / "clip.mov"
    path.write_bytes(rand(3 * MIB, 1))
    old_mtime(path)
    staged = Stager(repo, cache).stage_file("clip.mov")
    assert staged.path == path
    assert staged.size == 3 * MIB
    assert staged.recorded
    assert staged.new_chunks == len(staged.manifest.chunks) > 1
    assert staged.new_bytes == 3 * MIB
    ids = {c.id for c in staged.manifest.chunks}
    assert repo.chunks.has_many(ids) == ids
    assert repo.index.read_all() == {}  # the index is add's, not the stager's
    assert staged.manifest == added_manifest(repo, "clip.mov")


def test_the_recorded_manifest_feeds_instant_add(repo: Repository, cache: SpeculativeCache) -> None:
    path = repo.root / "edit.prproj"
    path.write_bytes(rand(200 * KIB, 2))
    old_mtime(path)
    staged = Stager(repo, cache).stage_file(path)  # absolute paths work too
    st = path.stat()
    assert cache.manifest_for(str(path), st.st_size, st.st_mtime_ns, st.st_ino) == staged.manifest
    result = add_paths(repo, ["edit.prproj"], known=cache.manifest_for)
    assert result.from_agent == ["edit.prproj"]
    assert result.stats.bytes_read == 0  # not read again
    assert repo.get_typed(repo.index.get("edit.prproj").oid, Manifest) == staged.manifest  # type: ignore[union-attr]


def test_chunks_are_durable_before_the_manifest_is_recorded(
    repo: Repository, cache: SpeculativeCache
) -> None:
    path = repo.root / "clip.mov"
    path.write_bytes(rand(1 * MIB, 3))
    old_mtime(path)
    Stager(repo, cache).stage_file("clip.mov")
    assert repo.chunks._dirty == set()  # type: ignore[attr-defined]  # every pack fsynced


def test_a_racy_file_is_staged_but_not_recorded(repo: Repository, cache: SpeculativeCache) -> None:
    path = repo.root / "clip.mov"
    path.write_bytes(rand(100 * KIB, 4))
    st = path.stat()
    fine = (st.st_mtime_ns // 10**9) * 10**9 + 123_456_789  # a sub-second timestamp
    os.utime(path, ns=(st.st_atime_ns, fine))
    mtime = fine / 1e9
    staged = Stager(repo, cache, clock=lambda: mtime + 0.01).stage_file("clip.mov")
    assert not staged.recorded
    st = path.stat()
    assert cache.manifest_for(str(path), st.st_size, st.st_mtime_ns, st.st_ino) is None
    later = Stager(repo, cache, clock=lambda: mtime + 0.06).stage_file("clip.mov")
    assert later.recorded
    assert later.new_chunks == 0  # everything was stored the first time


def test_whole_second_timestamps_get_the_coarse_racy_window(
    repo: Repository, cache: SpeculativeCache
) -> None:
    path = repo.root / "clip.mov"
    path.write_bytes(rand(100 * KIB, 5))
    st = path.stat()
    whole = (st.st_mtime_ns // 10**9) * 10**9  # as FAT or HFS+ would stamp it
    os.utime(path, ns=(st.st_atime_ns, whole))
    assert not Stager(repo, cache, clock=lambda: whole / 1e9 + 1.0).stage_file(path).recorded
    assert Stager(repo, cache, clock=lambda: whole / 1e9 + 2.0).stage_file(path).recorded


def test_files_outside_the_working_tree_are_staged_by_absolute_path(
    repo: Repository, cache: SpeculativeCache, tmp_path: Path
) -> None:
    outside = tmp_path / "renders" / "notes"  # no extension, 5 MiB: the media profile by size
    outside.parent.mkdir()
    outside.write_bytes(rand(5 * MIB, 5))
    old_mtime(outside)
    staged = Stager(repo, cache).stage_file(outside)
    assert staged.manifest.profile == MEDIA_PROFILE.name
    st = outside.stat()
    assert cache.manifest_for(str(outside), st.st_size, st.st_mtime_ns, st.st_ino) is not None
    inside = repo.root / "notes"
    inside.write_bytes(outside.read_bytes())
    assert added_manifest(repo, "notes") == staged.manifest


def test_an_empty_file_stages_to_an_empty_manifest(
    repo: Repository, cache: SpeculativeCache
) -> None:
    (repo.root / "empty.txt").write_bytes(b"")
    staged = Stager(repo, cache).stage_file("empty.txt")
    assert staged.manifest.chunks == () and staged.size == 0
    assert staged.manifest == added_manifest(repo, "empty.txt")


def test_missing_and_special_files_are_refused(repo: Repository, cache: SpeculativeCache) -> None:
    stager = Stager(repo, cache)
    with pytest.raises(UnreadableFileError, match="vanished"):
        stager.stage_file("absent.mov")
    (repo.root / "folder").mkdir()
    with pytest.raises(UnreadableFileError, match="not a regular file"):
        stager.stage_file("folder")
    (repo.root / "target.mov").write_bytes(b"x")
    os.symlink(repo.root / "target.mov", repo.root / "link.mov")
    with pytest.raises(UnreadableFileError, match="not a regular file"):
        stager.stage_file("link.mov")


def test_in_memory_repositories_work_too(tmp_path: Path) -> None:
    repo = Repository.in_memory(tmp_path / "mem")
    (repo.root / "a.mov").write_bytes(rand(300 * KIB, 6))
    old_mtime(repo.root / "a.mov")
    with SpeculativeCache(tmp_path / "cache") as cache:
        staged = Stager(repo, cache).stage_file("a.mov")
    assert staged.recorded and staged.manifest.size == 300 * KIB


# --------------------------------------------------------------------------- GrowingFile


def grow(path: Path, data: bytes, steps: list[int], gf: GrowingFile) -> list[ChunkRef]:
    """Append ``data`` in pieces of the given sizes, advancing after each; return all chunks."""
    returned: list[ChunkRef] = []
    at = 0
    with open(path, "wb") as fh:
        for step in [*steps, len(data)]:
            piece = data[at : at + step]
            if piece:
                fh.write(piece)
                fh.flush()
                at += len(piece)
            returned += gf.advance()
            if at >= len(data):
                break
    return returned


def assert_prefix_of_add(
    repo: Repository, rel: str, gf: GrowingFile, returned: list[ChunkRef]
) -> None:
    final = added_manifest(repo, rel)
    assert returned == list(gf.chunks)
    assert tuple(returned) == final.chunks[: len(returned)]
    if gf.deferred:  # add picked the project profile by size: nothing was chunked early
        assert returned == [] and final.profile == PROJECT_PROFILE.name
        return
    assert gf.profile is not None and final.profile == gf.profile.name
    # Only the undecided tail is left: less than one lookahead.
    assert final.size - gf.position < gf.profile.max_size + 16 * KIB + 1
    ids = {c.id for c in returned}
    assert repo.chunks.has_many(ids) == ids


def test_growing_media_file_returns_the_leading_chunks_of_add(repo: Repository) -> None:
    data = rand(9 * MIB, 7)
    path = repo.root / "render.mov"
    gf = GrowingFile(repo, "render.mov")
    returned = grow(path, data, [100 * KIB, 3 * MIB, 17, 2 * MIB, 1 * MIB], gf)
    assert len(returned) > 10 and gf.restarts == 0
    assert_prefix_of_add(repo, "render.mov", gf, returned)


def test_nothing_new_means_no_chunks(repo: Repository) -> None:
    path = repo.root / "render.mov"
    path.write_bytes(rand(4 * MIB, 8))
    gf = GrowingFile(repo, path)
    first = gf.advance()
    assert first and gf.advance() == []


def test_a_small_file_without_media_extension_waits_for_its_profile(repo: Repository) -> None:
    path = repo.root / "capture.raw"
    data = rand(6 * MIB, 9)
    gf = GrowingFile(repo, "capture.raw")
    with open(path, "wb") as fh:
        fh.write(data[: 3 * MIB])
        fh.flush()
        assert gf.advance() == []  # under 4 MiB add might still pick the project profile
        assert gf.deferred and gf.profile is None
        fh.write(data[3 * MIB :])
    returned = gf.advance()
    assert not gf.deferred and gf.profile == MEDIA_PROFILE
    assert returned
    assert_prefix_of_add(repo, "capture.raw", gf, returned)


def test_crossing_the_profile_threshold_needs_no_restart(repo: Repository) -> None:
    path = repo.root / "grows.bin"
    data = rand(5 * MIB, 10)
    gf = GrowingFile(repo, "grows.bin")
    grow(path, data, [1 * MIB, 2 * MIB, 1 * MIB + 1], gf)  # 1, 3 (deferred), 4 MiB + 1 byte
    assert gf.restarts == 0 and gf.profile == MEDIA_PROFILE
    assert_prefix_of_add(repo, "grows.bin", gf, list(gf.chunks))


def test_a_profile_that_becomes_uncertain_again_restarts(repo: Repository) -> None:
    def fickle(name: str, size: int) -> ChunkingProfile:  # not monotonic, unlike add's rule
        return PROJECT_PROFILE if 2 * MIB <= size < 1 << 40 else MEDIA_PROFILE

    path = repo.root / "odd.bin"
    data = rand(3 * MIB, 10)
    gf = GrowingFile(repo, path, profile_for=fickle)
    path.write_bytes(data[: 1 * MIB + 512 * KIB])
    first = gf.advance()
    assert first and gf.profile == MEDIA_PROFILE
    with open(path, "ab") as fh:
        fh.write(data[1 * MIB + 512 * KIB :])
    assert gf.advance() == []
    assert gf.deferred and gf.restarts == 1 and gf.chunks == () and gf.position == 0


def test_truncation_and_replacement_restart(repo: Repository) -> None:
    path = repo.root / "take.mov"
    path.write_bytes(rand(4 * MIB, 11))
    gf = GrowingFile(repo, "take.mov")
    assert gf.advance()
    path.write_bytes(rand(3 * MIB, 12))  # truncated and rewritten
    after_truncate = gf.advance()
    assert gf.restarts == 1
    tmp = repo.root / "take.tmp"
    tmp.write_bytes(rand(5 * MIB, 13))
    os.replace(tmp, path)  # a new inode, larger than before
    replaced = gf.advance()
    assert gf.restarts == 2
    assert replaced[0] != after_truncate[0]
    assert tuple(replaced) == gf.chunks
    assert_prefix_of_add(repo, "take.mov", gf, replaced)


def test_a_vanished_file_is_reported(repo: Repository) -> None:
    with pytest.raises(UnreadableFileError):
        GrowingFile(repo, "nothing.mov").advance()


def test_a_header_patched_at_the_end_leaves_only_that_chunk_stale(repo: Repository) -> None:
    # A recorder writes mdat with size 0 ("to the end of the file"), then patches the real
    # size and appends moov when it stops.
    frames = b"".join(prores_stream(60, seed=3, lo=40_000, hi=90_000))
    head = ftyp()
    path = repo.root / "rec.mov"
    gf = GrowingFile(repo, "rec.mov")
    returned = grow(path, head + box(b"mdat", frames, size0=True), [1 * MIB] * 8, gf)
    with open(path, "r+b") as fh:
        fh.seek(len(head))
        fh.write((8 + len(frames)).to_bytes(4, "big"))
        fh.seek(0, os.SEEK_END)
        fh.write(box(b"moov", rand(30_000, 4)))
    final = added_manifest(repo, "rec.mov")
    stale = [c for c in returned if c not in final.chunks]
    assert [c.size for c in stale] == [8]  # the mdat header chunk, nothing else


# --------------------------------------------------------------------------- property


def movie(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    frames: list[bytes] = []
    total = 0
    while total < size:
        batch = prores_stream(8, seed=rng.randrange(1 << 30), lo=20_000, hi=150_000)
        frames += batch
        total += sum(len(f) for f in batch)
    mdat = box(b"mdat", b"".join(frames), large=rng.random() < 0.5)
    return ftyp() + box(b"wide", b"") + mdat + box(b"moov", rand(rng.randrange(100, 200_000), seed))


def mp4(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    return (
        ftyp(b"isom")
        + box(b"mdat", rand(size, seed))
        + box(b"moov", rand(rng.randrange(100, 50_000), seed + 1))
    )


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    kind=st.sampled_from(["random.mov", "random.bin", "movie.mov", "plain.mp4", "project.prproj"]),
    seed=st.integers(0, 1 << 30),
    size=st.integers(1 * MIB, 7 * MIB),
    steps=st.lists(st.integers(1, 3 * MIB), min_size=1, max_size=12),
    window=st.sampled_from([256 * KIB, 1 * MIB, 16 * MIB]),
)
def test_growing_chunks_are_a_prefix_of_adds_manifest(
    kind: str, seed: int, size: int, steps: list[int], window: int
) -> None:
    if kind == "movie.mov":
        data = movie(seed, size)
    elif kind == "plain.mp4":
        data = mp4(seed, size)
    else:
        data = rand(size, seed)
    project = kind.endswith(".prproj")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "work"
        root.mkdir()
        with Repository.init(root) as repo:
            profile_for = (lambda n, s: PROJECT_PROFILE) if project else None
            kwargs = {"profile_for": profile_for} if profile_for else {}
            gf = GrowingFile(repo, kind, window_size=window, **kwargs)  # type: ignore[arg-type]
            returned = grow(root / kind, data, steps, gf)
            event(f"{kind}: {'deferred' if gf.deferred else f'{len(returned)} chunks early'}")
            if project:
                # add would choose by size; compare with the project profile's own cut.
                from dits.core.chunking import cut_points

                cuts = cut_points(data, PROJECT_PROFILE)
                sizes = [b - a for a, b in zip([0, *cuts], cuts, strict=False)]
                assert [c.size for c in returned] == sizes[: len(returned)]
                assert len(data) - gf.position < PROJECT_PROFILE.max_size + 16 * KIB + 1
            else:
                assert gf.restarts == 0
                assert_prefix_of_add(repo, kind, gf, returned)

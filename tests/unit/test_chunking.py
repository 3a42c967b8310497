"""Tests for dits.core.chunking: cut points are pure, streamable, local and container-aware."""

from __future__ import annotations

import io
import random
import struct
import tarfile
from collections.abc import Sequence

import blake3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dits.core.chunking import (
    MEDIA_PROFILE,
    MEDIA_PROFILE_V1,
    PROFILES,
    PROJECT_PROFILE,
    Chunker,
    ChunkingProfile,
    choose_profile,
    cut_points,
    profile_by_name,
)

# Small bounds so kilobyte inputs make many chunks (pyfastcdc's lowest accepted values).
SMALL = ChunkingProfile(
    "test-small", min_size=256, avg_size=1024, max_size=4096, container_aware=True
)
SMALL_PLAIN = ChunkingProfile(
    "test-small-plain", min_size=256, avg_size=1024, max_size=4096, container_aware=False
)
MID = ChunkingProfile(
    "test-mid", min_size=4096, avg_size=16384, max_size=65536, container_aware=True
)
# SMALL with media-v2's rule at test scale: snapping stops after 8 KiB without a frame.
SMALL_GAP = ChunkingProfile(
    "test-small-gap",
    min_size=256,
    avg_size=1024,
    max_size=4096,
    container_aware=True,
    frame_gap_limit=8192,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    out, start = [], 0
    for end in cuts:
        out.append(data[start:end])
        start = end
    return out


def chunk_ids(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    return [blake3.blake3(c).digest() for c in split(data, cuts)]


def new_chunks(old: bytes, new: bytes, profile: ChunkingProfile) -> list[bytes]:
    """Chunks of ``new`` that ``old`` does not already have."""
    known = set(chunk_ids(old, cut_points(old, profile)))
    cuts = cut_points(new, profile)
    return [
        c for c, i in zip(split(new, cuts), chunk_ids(new, cuts), strict=True) if i not in known
    ]


def stream_cuts(data: bytes, profile: ChunkingProfile, steps: Sequence[int]) -> list[int]:
    """Cut ``data`` as a writer-follower would: windows grow by ``steps`` bytes at a time."""
    chunker = Chunker(profile)
    view = memoryview(data)
    out: list[int] = []
    pos = known = 0
    for step in steps:
        known = min(len(data), known + step)
        eof = known == len(data)
        got = chunker.cuts(view[pos:known], pos, eof)
        out += got
        if got:
            pos = got[-1]
        if eof:
            return out
    return out + chunker.cuts(view[pos:], pos, True)


def check_invariants(data: bytes, cuts: list[int], profile: ChunkingProfile) -> None:
    assert b"".join(split(data, cuts)) == data
    assert cuts == sorted(set(cuts))
    if data:
        assert cuts[-1] == len(data)
    else:
        assert cuts == []
    assert all(b - a <= profile.max_size for a, b in zip([0, *cuts], cuts, strict=False))


# --------------------------------------------------------------------------- MP4 / tar / ProRes


def box(kind: bytes, payload: bytes, *, large: bool = False, size0: bool = False) -> bytes:
    if large:
        return struct.pack(">I4sQ", 1, kind, 16 + len(payload)) + payload
    return struct.pack(">I4s", 0 if size0 else 8 + len(payload), kind) + payload


def ftyp(brand: bytes = b"qt  ") -> bytes:
    return box(b"ftyp", brand + b"\0\0\2\0" + brand + b"isom")


def frame(payload_len: int, seed: int) -> bytes:
    """A ProRes-like frame: 4-byte big-endian size, ``icpf``, then payload."""
    return struct.pack(">I", 8 + payload_len) + b"icpf" + rand(payload_len, seed)


def prores_stream(n: int, seed: int, lo: int = 300, hi: int = 1500) -> list[bytes]:
    rng = random.Random(seed)
    return [frame(rng.randint(lo, hi), seed * 100_000 + i) for i in range(n)]


def frame_starts(frames: Sequence[bytes], base: int = 0) -> set[int]:
    starts, at = set(), base
    for f in frames:
        starts.add(at)
        at += len(f)
    return starts


def make_tar(members: Sequence[tuple[str, bytes]], mtime: int = 1_700_000_000) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = mtime
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def tar_layout(data: bytes) -> dict[str, tuple[int, int, int]]:
    """name -> (header offset, data offset, data size) as tarfile reads them."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: (m.offset, m.offset_data, m.size) for m in tar.getmembers()}


# --------------------------------------------------------------------------- basic properties


@FAST
@given(st.binary(max_size=20_000))
def test_chunks_concatenate_back_to_arbitrary_input(data: bytes) -> None:
    for profile in (SMALL, SMALL_PLAIN):
        check_invariants(data, cut_points(data, profile), profile)


def test_plain_chunks_respect_min_and_max_size() -> None:
    data = rand(300_000, 1)
    cuts = cut_points(data, SMALL_PLAIN)
    sizes = [b - a for a, b in zip([0, *cuts], cuts, strict=False)]
    assert all(SMALL.min_size <= s <= SMALL.max_size for s in sizes[:-1])
    assert len(cuts) > 50


def test_cut_points_are_deterministic_and_accept_memoryview() -> None:
    data = rand(200_000, 2)
    assert cut_points(data, SMALL) == cut_points(memoryview(data), SMALL)
    assert cut_points(data, SMALL) == cut_points(bytes(bytearray(data)), SMALL)


def test_empty_and_tiny_files() -> None:
    assert cut_points(b"", MEDIA_PROFILE) == []
    assert cut_points(b"x", MEDIA_PROFILE) == [1]
    assert Chunker(MEDIA_PROFILE).cuts(memoryview(b""), 0, True) == []


def test_plain_media_profile_matches_fastcdc() -> None:
    from pyfastcdc import FastCDC

    data = rand(3 * 1024 * 1024, 3)
    cdc = FastCDC(256 * 1024, min_size=64 * 1024, max_size=1024 * 1024)
    ends, at = [], 0
    for chunk in cdc.cut_buf(data):
        at += chunk.length
        ends.append(at)
    assert cut_points(data, MEDIA_PROFILE) == ends


# --------------------------------------------------------------------------- streaming


def _synthetic_inputs() -> dict[str, bytes]:
    frames = prores_stream(60, 5)
    mdat_payload = b"".join(frames[:30]) + rand(900, 6) + b"".join(frames[30:])
    return {
        "random": rand(60_000, 4),
        "prores": b"".join(frames),
        "mov": b"".join(
            [ftyp(), box(b"wide", b""), box(b"mdat", mdat_payload), box(b"moov", rand(5000, 7))]
        ),
        "mp4-large": b"".join(
            [ftyp(b"isom"), box(b"mdat", rand(30_000, 8), large=True), box(b"moov", rand(700, 9))]
        ),
        "mov-size0": ftyp() + box(b"mdat", mdat_payload, size0=True),
        "tar": make_tar(
            [("a.bin", rand(9000, 10)), ("b.txt", b"hello\n"), ("c/" + "d" * 120, rand(20_000, 11))]
            + [(f"small{i}", rand(100 + i, 12 + i)) for i in range(20)]
        ),
    }


SYNTHETIC = _synthetic_inputs()


@FAST
@given(
    name=st.sampled_from(sorted(SYNTHETIC)),
    steps=st.lists(st.integers(min_value=0, max_value=12_000), min_size=1, max_size=60),
)
def test_streaming_windows_give_one_shot_cuts(name: str, steps: list[int]) -> None:
    data = SYNTHETIC[name]
    assert stream_cuts(data, SMALL, steps) == cut_points(data, SMALL)
    assert stream_cuts(data, SMALL_GAP, steps) == cut_points(data, SMALL_GAP)


@FAST
@given(seed=st.integers(0, 2**32), steps=st.lists(st.integers(0, 70_000), min_size=1, max_size=40))
def test_streaming_random_data_any_window_sizes(seed: int, steps: list[int]) -> None:
    data = rand(150_000, seed)
    assert stream_cuts(data, MID, steps) == cut_points(data, MID)


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_split_into_two_windows_anywhere_gives_one_shot_cuts(name: str) -> None:
    # Exhaustive-ish sweep: the first window ends at every 37th byte, so it also ends inside
    # container headers that are still unknown (a walker that must wait for them).
    data = SYNTHETIC[name]
    for profile in (SMALL, SMALL_GAP):
        expected = cut_points(data, profile)
        for first in range(0, len(data), 37):
            assert stream_cuts(data, profile, [first, len(data)]) == expected, first


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_window_of_lookahead_bytes_always_progresses(name: str) -> None:
    data = SYNTHETIC[name]
    chunker = Chunker(SMALL)
    pos, out = 0, []
    while len(data) - pos > chunker.lookahead:
        got = chunker.cuts(memoryview(data)[pos : pos + chunker.lookahead], pos, False)
        assert got, f"no progress at {pos}"
        out += got
        pos = got[-1]
    out += chunker.cuts(memoryview(data)[pos:], pos, True)
    assert out == cut_points(data, SMALL)
    assert chunker.lookahead >= SMALL.max_size


def test_short_window_may_return_nothing_then_catches_up() -> None:
    data = rand(50_000, 13)
    chunker = Chunker(SMALL)
    assert chunker.cuts(memoryview(data)[:100], 0, False) == []
    got = chunker.cuts(memoryview(data), 0, True)
    assert got == cut_points(data, SMALL)


def test_misuse_raises_value_error() -> None:
    data = rand(50_000, 14)
    chunker = Chunker(SMALL)
    got = chunker.cuts(memoryview(data), 0, False)
    assert got
    with pytest.raises(ValueError):
        chunker.cuts(memoryview(data), 0, False)
    chunker.cuts(memoryview(data)[got[-1] :], got[-1], True)
    with pytest.raises(ValueError):
        chunker.cuts(memoryview(b""), len(data), True)


# --------------------------------------------------------------------------- locality


@pytest.mark.parametrize("mode", ["insert", "overwrite", "delete"])
def test_local_edit_changes_only_nearby_chunks(mode: str) -> None:
    old = rand(4 * 1024 * 1024, 15)
    mid = len(old) // 2
    patch = rand(100, 16)
    if mode == "insert":
        new = old[:mid] + patch + old[mid:]
    elif mode == "overwrite":
        new = old[:mid] + patch + old[mid + 100 :]
    else:
        new = old[:mid] + old[mid + 100 :]
    for profile in (MEDIA_PROFILE, PROJECT_PROFILE):
        fresh = new_chunks(old, new, profile)
        assert 1 <= len(fresh) <= 3, (profile.name, len(fresh))
        assert sum(map(len, fresh)) <= 3 * profile.max_size


# --------------------------------------------------------------------------- ISO-BMFF


def test_mp4_cuts_at_big_box_starts_and_after_mdat_header() -> None:
    head = ftyp(b"isom")
    mdat = box(b"mdat", rand(40_000, 17))
    moov = box(b"moov", rand(3000, 18))
    data = head + mdat + moov
    cuts = set(cut_points(data, SMALL))
    mdat_at, moov_at = len(head), len(head) + len(mdat)
    assert {mdat_at, mdat_at + 8, moov_at, moov_at + 8, len(data)} <= cuts
    assert cut_points(data, SMALL_PLAIN) != sorted(cuts)  # plain CDC ignores the boxes


@pytest.mark.parametrize("faststart", [False, True])
def test_rewritten_moov_leaves_every_mdat_chunk_identical(faststart: bool) -> None:
    payload = rand(60_000, 19)
    mdat = box(b"mdat", payload)

    def movie(moov: bytes) -> bytes:
        return ftyp() + moov + mdat if faststart else ftyp() + mdat + moov

    old = movie(box(b"moov", rand(3000, 20)))
    new = movie(box(b"moov", rand(4100, 21)))  # other size and contents
    mdat_at = len(old) - len(mdat) if faststart else len(ftyp())
    old_cuts = cut_points(old, SMALL)
    payload_chunks = [
        c for a, c in zip([0, *old_cuts], split(old, old_cuts), strict=False) if a >= mdat_at + 8
    ][: -1 if not faststart else None]
    assert len(payload_chunks) > 10
    fresh = new_chunks(old, new, SMALL)
    assert not set(payload_chunks) & set(fresh)
    assert sum(map(len, fresh)) <= 4100 + 8 + len(ftyp()) + SMALL.max_size


def test_mdat_header_size_zero_vs_final_size_keeps_payload_chunks() -> None:
    payload = rand(80_000, 22)
    recording = ftyp() + box(b"mdat", payload, size0=True)
    final = ftyp() + box(b"mdat", payload) + box(b"moov", rand(2000, 23))
    rec_cuts = cut_points(recording, SMALL)
    fin_ids = set(chunk_ids(final, cut_points(final, SMALL)))
    rec_ids = chunk_ids(recording, rec_cuts)
    payload_ids = [i for a, i in zip([0, *rec_cuts], rec_ids, strict=False) if a >= len(ftyp()) + 8]
    # every payload chunk but the last (cut by end of file) is reused as is
    assert len(payload_ids) > 10
    assert set(payload_ids[:-1]) <= fin_ids


def test_wide_plus_mdat32_vs_mdat64_keeps_payload_chunks() -> None:
    payload = rand(50_000, 24)
    small_header = ftyp() + box(b"wide", b"") + box(b"mdat", payload)
    large_header = ftyp() + box(b"mdat", payload, large=True)
    assert len(small_header) == len(large_header)
    a, b = cut_points(small_header, SMALL), cut_points(large_header, SMALL)
    start = len(ftyp()) + 16
    assert [c for c in a if c > start] == [c for c in b if c > start]
    assert start in a and start in b


def test_small_boxes_flow_together() -> None:
    data = ftyp() + b"".join(box(b"free", b"") for _ in range(500)) + rand(20_000, 25)
    cuts = cut_points(data, SMALL)
    assert len(cuts) < 40  # no hard cut per 8-byte box
    check_invariants(data, cuts, SMALL)


# --------------------------------------------------------------------------- tar


def _tar_members(edit: bytes | None = None) -> list[tuple[str, bytes]]:
    return [
        ("clips/a.mov", rand(30_000, 26)),
        ("notes.txt", b"cut at 00:01:02\n" * 3),
        ("clips/" + "long-name-" * 12 + "b.mov", edit if edit is not None else rand(25_000, 27)),
        ("clips/c.wav", rand(12_000, 28)),
        *[(f"meta/{i}.xml", rand(50 + i, 29 + i)) for i in range(30)],
        ("clips/d.mov", rand(9_000, 60)),
    ]


def test_tar_cuts_at_big_member_boundaries() -> None:
    data = make_tar(_tar_members())
    cuts = set(cut_points(data, SMALL))
    layout = tar_layout(data)
    for name, (header_at, data_at, size) in layout.items():
        if size >= SMALL.min_size:
            end = data_at + -(-size // 512) * 512
            assert {data_at, end} <= cuts, name
            if "long-name" not in name and header_at:
                assert header_at in cuts, name
    long_name = next(n for n in layout if "long-name" in n)
    assert layout[long_name][1] - 512 not in cuts  # pax header grouped with its member
    assert layout[long_name][0] - 1024 in cuts  # ... cut before the pax header instead


@pytest.mark.parametrize("new_size", [25_000, 31_337, 700])
def test_tar_editing_one_member_leaves_other_members_chunks(new_size: int) -> None:
    old = make_tar(_tar_members())
    new = make_tar(_tar_members(edit=rand(new_size, 61)))
    old_cuts = cut_points(old, SMALL)
    old_ids = dict(zip([0, *old_cuts], chunk_ids(old, old_cuts), strict=False))
    new_ids = set(chunk_ids(new, cut_points(new, SMALL)))
    layout = tar_layout(old)
    for name in ("clips/a.mov", "clips/c.wav", "clips/d.mov"):
        _, data_at, size = layout[name]
        inside = [i for a, i in old_ids.items() if data_at <= a < data_at + size]
        assert inside and set(inside) <= new_ids, name


def test_tar_header_only_change_keeps_data_chunks() -> None:
    old = make_tar(_tar_members(), mtime=1_700_000_000)
    new = make_tar(_tar_members(), mtime=1_700_000_999)
    fresh = new_chunks(old, new, SMALL)
    big_data = sum(-(-size // 512) * 512 for _, _, size in tar_layout(old).values() if size >= 256)
    assert big_data > len(old) // 2
    # every header changed; the big members' data is reused whole
    assert sum(map(len, fresh)) <= len(old) - big_data


def test_tar_with_corrupt_header_falls_back_to_plain_cdc() -> None:
    data = bytearray(make_tar(_tar_members()))
    _, data_at, _ = tar_layout(bytes(data))["notes.txt"]
    data[data_at - 512 + 148] ^= 0x01  # break the second header's checksum
    cuts = cut_points(bytes(data), SMALL)
    check_invariants(bytes(data), cuts, SMALL)
    assert stream_cuts(bytes(data), SMALL, [777] * 400) == cuts


# --------------------------------------------------------------------------- ProRes frames


def test_prores_cuts_land_on_frame_starts() -> None:
    frames = prores_stream(300, 30)
    data = b"".join(frames)
    starts = frame_starts(frames)
    cuts = cut_points(data, SMALL)
    assert all(c in starts for c in cuts[:-1])
    plain = cut_points(data, SMALL_PLAIN)
    assert sum(c in starts for c in plain[:-1]) < len(plain) // 2  # CDC alone would not


def test_prores_inside_quicktime_mdat_snaps_to_frames() -> None:
    frames = prores_stream(200, 31)
    audio = rand(700, 32)
    body = b"".join(b"".join(frames[i : i + 10]) + audio for i in range(0, 200, 10))
    head = ftyp() + box(b"wide", b"")
    data = head + box(b"mdat", body) + box(b"moov", rand(3000, 33))
    base = len(head) + 8
    starts = set()
    at = base
    for i in range(0, 200, 10):
        starts |= frame_starts(frames[i : i + 10], at)
        at += sum(map(len, frames[i : i + 10])) + len(audio)
    inside = [c for c in cut_points(data, SMALL) if base < c < base + len(body)]
    assert len(inside) > 20
    assert sum(c in starts for c in inside) >= len(inside) - 2


def test_replacing_a_few_frames_changes_only_chunks_around_them() -> None:
    frames = prores_stream(400, 34)
    edited = list(frames)
    edited[200:204] = prores_stream(4, 35)  # new content, new sizes
    old, new = b"".join(frames), b"".join(edited)
    fresh = new_chunks(old, new, SMALL)
    changed = sum(map(len, edited[200:204]))
    assert sum(map(len, fresh)) <= changed + 2 * SMALL.max_size
    assert len(fresh) <= 5


def quicktime(body: bytes) -> tuple[bytes, int]:
    """A QuickTime file with ``body`` as its mdat payload; returns (file, payload offset)."""
    head = ftyp() + box(b"wide", b"")
    return head + box(b"mdat", body) + box(b"moov", rand(3000, 99)), len(head) + 8


def test_frame_gap_limit_keeps_snapping_across_interleaved_audio() -> None:
    # Gaps of 700 bytes between groups of frames (audio), far under the limit: v2 cuts as v1.
    frames = prores_stream(300, 41)
    body = b"".join(b"".join(frames[i : i + 10]) + rand(700, 42 + i) for i in range(0, 300, 10))
    data, _ = quicktime(body)
    assert cut_points(data, SMALL_GAP) == cut_points(data, SMALL)


def test_frames_larger_than_the_gap_limit_keep_snapping() -> None:
    # The gap runs from the end of the last frame, not its start: 20 KiB frames (over the
    # 8 KiB limit) are still a frame stream, and every frame start is a cut.
    frames = prores_stream(40, 43, lo=20_000, hi=24_000)
    data, base = quicktime(b"".join(frames))
    cuts = cut_points(data, SMALL_GAP)
    assert frame_starts(frames, base) - {base} <= set(cuts)
    assert cuts == cut_points(data, SMALL)


def test_frame_gap_limit_stops_scanning_a_region_without_frames() -> None:
    # H.264 in a QuickTime mdat: no frame start anywhere. After the limit the region is cut by
    # plain CDC, as if no snapping region had begun there; before it, as media-v1 cuts.
    video = rand(200_000, 44)
    data, base = quicktime(video)
    limited, unlimited = cut_points(data, SMALL_GAP), cut_points(data, SMALL)
    check_invariants(data, limited, SMALL_GAP)
    assert [c for c in limited if c < base + 8192] == [c for c in unlimited if c < base + 8192]
    # From the first chunk that starts past the limit on, the cuts are FastCDC's own over the
    # rest of the payload.
    resume = next(c for c in limited if c - base >= 8192)
    payload_end = base + len(video)
    tail = [c for c in limited if resume < c <= payload_end]
    plain = [resume + c for c in cut_points(data[resume:payload_end], SMALL_PLAIN)]
    assert tail == plain


def test_frames_after_a_long_gap_are_snapped_again_from_the_next_probe() -> None:
    # A dormant region is probed every gap_limit bytes: frames that turn up after a long
    # stretch of other data (non-interleaved audio, a damaged stretch) are snapped again.
    frames = prores_stream(200, 45)
    body = rand(12_000, 46) + b"".join(frames)
    data, base = quicktime(body)
    starts = frame_starts(frames, base + 12_000)
    awake_from = base + 12_000 + 2 * 8192 + 4096  # dormant past 8 KiB, probed 8 KiB later
    late = [c for c in cut_points(data, SMALL_GAP) if awake_from < c < base + len(body)]
    assert len(late) > 20
    assert sum(c in starts for c in late) >= len(late) - 2


def test_a_long_stretch_without_frames_costs_only_that_stretch() -> None:
    # The demo's re-render, at test scale: 24 frames mid-stream lose their headers (longer
    # than the gap limit). Snapping wakes up after them, so the chunks re-stored are those
    # around the stretch, as with media-v1.
    frames = prores_stream(160, 47, lo=900, hi=1100)
    damaged = list(frames)
    for k in range(60, 84):
        damaged[k] = rand(len(frames[k]), 500 + k)
    old, _ = quicktime(b"".join(frames))
    new, _ = quicktime(b"".join(damaged))
    assert len(new) == len(old)
    stretch = sum(map(len, damaged[60:84]))
    assert stretch > SMALL_GAP.frame_gap_limit
    fresh_gap = sum(map(len, new_chunks(old, new, SMALL_GAP)))
    fresh_v1 = sum(map(len, new_chunks(old, new, SMALL)))
    assert fresh_gap <= stretch + SMALL_GAP.frame_gap_limit + 4 * SMALL_GAP.max_size
    assert fresh_v1 <= stretch + 4 * SMALL.max_size


def test_stray_magic_inside_a_frame_payload_is_not_a_frame_start() -> None:
    fake = struct.pack(">I", 500) + b"icpf"
    frames = [
        struct.pack(">I", 8 + 3000) + b"icpf" + rand(1000, 70 + i) + fake + rand(1992, 90 + i)
        for i in range(20)
    ]
    data = b"".join(frames)
    fakes = {s + 8 + 1000 for s in frame_starts(frames)}
    cuts = cut_points(data, SMALL)
    assert not fakes & set(cuts)
    assert all(c in frame_starts(frames) for c in cuts[:-1])


def test_frames_bigger_than_max_size_keep_cdc_cuts() -> None:
    frames = prores_stream(20, 36, lo=9000, hi=12000)
    data = b"".join(frames)
    cuts = cut_points(data, SMALL)
    check_invariants(data, cuts, SMALL)


# --------------------------------------------------------------------------- malformed input


GARBAGE = [
    struct.pack(">I4s", 3, b"ftyp") + rand(5000, 37),  # size below header length
    struct.pack(">I4s", 1, b"mdat") + b"\0" * 8 + rand(5000, 38),  # 64-bit size 0
    struct.pack(">I4s", 1, b"mdat") + b"\1\2",  # truncated largesize
    ftyp() + struct.pack(">I4s", 10**9, b"mdat") + rand(9000, 39),  # box past end of file
    ftyp() + box(b"mdat", rand(5000, 40)) + b"\xff\xff\xff\xff\x00\x01\x02\x03" + rand(9000, 41),
    ftyp()[:10],
    make_tar([("x", rand(3000, 42))])[:700],  # truncated tar
    b"\0" * 257 + b"ustar\x0000" + rand(6000, 43),  # magic, bad checksum
    struct.pack(">I", 2**31) + b"icpf" + rand(6000, 44),  # implausible frame size
    struct.pack(">I", 12) + b"icpf" + b"icpf" * 3000,
]


@pytest.mark.parametrize("data", GARBAGE, ids=range(len(GARBAGE)))
def test_malformed_containers_do_not_raise(data: bytes) -> None:
    for profile in (SMALL, MEDIA_PROFILE):
        cuts = cut_points(data, profile)
        check_invariants(data, cuts, profile)
        assert stream_cuts(data, profile, [333] * 100) == cuts


@FAST
@given(
    name=st.sampled_from(sorted(SYNTHETIC)),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
    cut_at=st.one_of(st.none(), st.integers(0, 10**6)),
    steps=st.lists(st.integers(0, 9000), min_size=1, max_size=30),
)
def test_mutated_containers_keep_invariants(
    name: str, edits: list[tuple[int, int]], cut_at: int | None, steps: list[int]
) -> None:
    data = bytearray(SYNTHETIC[name])
    for at, value in edits:
        data[at % len(data)] = value
    blob = bytes(data[: cut_at % len(data)] if cut_at is not None else data)
    cuts = cut_points(blob, SMALL)
    check_invariants(blob, cuts, SMALL)
    assert stream_cuts(blob, SMALL, steps) == cuts


# --------------------------------------------------------------------------- profiles


def test_profiles_registry() -> None:
    assert PROFILES["media-v2"] is MEDIA_PROFILE
    assert PROFILES["media-v1"] is MEDIA_PROFILE_V1  # old manifests keep their meaning
    assert MEDIA_PROFILE_V1.frame_gap_limit == 0
    assert MEDIA_PROFILE.frame_gap_limit == 16 * 1024 * 1024
    assert profile_by_name("project-v1") is PROJECT_PROFILE
    assert all(profile_by_name(name).name == name for name in PROFILES)
    with pytest.raises(ValueError):
        profile_by_name("media-v0")
    assert (MEDIA_PROFILE.min_size, MEDIA_PROFILE.avg_size, MEDIA_PROFILE.max_size) == (
        64 * 1024,
        256 * 1024,
        1024 * 1024,
    )
    assert MEDIA_PROFILE.container_aware and not PROJECT_PROFILE.container_aware


@pytest.mark.parametrize(
    ("name", "size", "expected"),
    [
        ("A001_C002.MOV", 10, MEDIA_PROFILE),
        ("shots/take.mp4", 0, MEDIA_PROFILE),
        ("C:\\card\\clip.braw", 100, MEDIA_PROFILE),
        ("frame.000123.exr", 1000, MEDIA_PROFILE),
        ("archive.tar", 1000, MEDIA_PROFILE),
        ("edit.prproj", 300_000, PROJECT_PROFILE),
        ("edit.prproj", 4 * 1024 * 1024, MEDIA_PROFILE),
        ("notes.txt", 4 * 1024 * 1024 - 1, PROJECT_PROFILE),
        ("mov", 10, PROJECT_PROFILE),
        (".mov", 10, PROJECT_PROFILE),
        ("Makefile", 0, PROJECT_PROFILE),
    ],
)
def test_choose_profile(name: str, size: int, expected: ChunkingProfile) -> None:
    assert choose_profile(name, size) is expected


@pytest.mark.parametrize(
    "sizes", [(32, 1024, 4096), (256, 128, 4096), (256, 1024, 512), (257, 1024, 4096), (0, 0, 0)]
)
def test_invalid_profiles_are_rejected(sizes: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError):
        ChunkingProfile("bad", *sizes, container_aware=False)
    with pytest.raises(ValueError):
        ChunkingProfile("", 256, 1024, 4096, container_aware=False)

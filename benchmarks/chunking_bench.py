"""Chunking benchmark: dedup between file versions and raw cut-point throughput.

For every media pair from :mod:`benchmarks.media` (old, new), both versions are cut with

* plain CDC at 64K/256K/1M (the media profile's sizes without container awareness),
* plain CDC at 256K/1M/4M,
* ``media-v1`` and ``media-v2`` (container-aware; v2 stops looking for ProRes frames in a
  QuickTime region after 16 MiB without one),

and the bytes of the new version already present in the old one are counted (reuse), with
the new bytes a push would have to upload. A packet-level yardstick (ffprobe) shows what a
chunker cutting exactly at every audio/video packet would achieve. A synthetic project file
shows why ``project-v1`` uses smaller chunks. Throughput is measured on random data.

Run: ``python -m benchmarks chunking [--quick] [--data-dir DIR] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import platform
import random
import struct
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import blake3
from pyfastcdc import FastCDC

from benchmarks import media
from dits.core.chunking import (
    MEDIA_PROFILE,
    MEDIA_PROFILE_V1,
    PROJECT_PROFILE,
    Chunker,
    ChunkingProfile,
    cut_points,
)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

CONFIGS: list[tuple[str, ChunkingProfile]] = [
    ("plain 64K/256K/1M", ChunkingProfile("bench-plain-256k", 64 * KiB, 256 * KiB, MiB, False)),
    ("plain 256K/1M/4M", ChunkingProfile("bench-plain-1m", 256 * KiB, MiB, 4 * MiB, False)),
    ("media-v1 (aware)", MEDIA_PROFILE_V1),
    ("media-v2 (aware)", MEDIA_PROFILE),
]

PROJECT_CONFIGS: list[tuple[str, ChunkingProfile]] = [
    ("plain 2K/8K/32K", ChunkingProfile("bench-2k", 2 * KiB, 8 * KiB, 32 * KiB, False)),
    ("project-v1 4K/16K/64K", PROJECT_PROFILE),
    ("plain 8K/32K/128K", ChunkingProfile("bench-8k", 8 * KiB, 32 * KiB, 128 * KiB, False)),
    ("plain 16K/64K/256K", ChunkingProfile("bench-16k", 16 * KiB, 64 * KiB, 256 * KiB, False)),
    ("media-v2 64K/256K/1M", MEDIA_PROFILE),
]


@dataclass
class DedupRow:
    pair: str
    config: str
    old_size: int
    new_size: int
    old_chunks: int
    new_chunks: int
    reused_bytes: int  # bytes of the new version in chunks the old version already has
    stored_bytes: int  # distinct new chunks: what a push would upload

    @property
    def reuse_pct(self) -> float:
        return 100.0 * self.reused_bytes / self.new_size if self.new_size else 100.0


@dataclass
class ThroughputRow:
    what: str
    size: int
    seconds: float
    chunks: int

    @property
    def gbps(self) -> float:
        return self.size / self.seconds / 1e9


@contextmanager
def mapped(path: Path) -> Iterator[memoryview]:
    """The file's bytes as a read-only memoryview (mmap, no copy)."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        view = memoryview(m)
        try:
            yield view
        finally:
            view.release()


def chunk_ids(data: memoryview, cuts: list[int]) -> list[tuple[bytes, int]]:
    out, start = [], 0
    for end in cuts:
        out.append((blake3.blake3(data[start:end]).digest(), end - start))
        start = end
    return out


def compare(old: list[tuple[bytes, int]], new: list[tuple[bytes, int]]) -> tuple[int, int]:
    """(reused bytes, bytes to store) for ``new`` given the chunks of ``old``."""
    have = {cid for cid, _ in old}
    reused = sum(size for cid, size in new if cid in have)
    fresh = {cid: size for cid, size in new if cid not in have}
    return reused, sum(fresh.values())


def dedup_rows(pair: media.MediaPair) -> list[DedupRow]:
    rows = []
    with mapped(pair.old) as old, mapped(pair.new) as new:
        for label, profile in CONFIGS:
            a = chunk_ids(old, cut_points(old, profile))
            b = chunk_ids(new, cut_points(new, profile))
            reused, stored = compare(a, b)
            rows.append(
                DedupRow(pair.name, label, len(old), len(new), len(a), len(b), reused, stored)
            )
    return rows


def packet_yardstick(pair: media.MediaPair) -> DedupRow | None:
    """Reuse if chunks were exactly the audio/video packets (container bytes always new)."""
    if pair.old.suffix not in (".mov", ".mp4"):
        return None

    def packets(path: Path) -> list[tuple[bytes, int]]:
        with mapped(path) as view:
            return [
                (hashlib.blake2b(view[pos : pos + size]).digest(), size)
                for pos, size in media.packet_spans(path)
            ]

    a, b = packets(pair.old), packets(pair.new)
    new_size = pair.new.stat().st_size
    reused, stored = compare(a, b)
    stored += new_size - sum(size for _, size in b)  # moov, headers: counted as new
    return DedupRow(
        pair.name,
        "packets (yardstick)",
        pair.old.stat().st_size,
        new_size,
        len(a),
        len(b),
        reused,
        stored,
    )


def project_rows() -> list[DedupRow]:
    old, new = memoryview(media.project_file(1)), memoryview(media.project_file(2))
    rows = []
    for label, profile in PROJECT_CONFIGS:
        a = chunk_ids(old, cut_points(old, profile))
        b = chunk_ids(new, cut_points(new, profile))
        reused, stored = compare(a, b)
        rows.append(
            DedupRow("project-xml", label, len(old), len(new), len(a), len(b), reused, stored)
        )
    return rows


def best_of(repeat: int, size: int, what: str, run: Callable[[], int]) -> ThroughputRow:
    best, chunks = float("inf"), 0
    for _ in range(repeat):
        start = time.perf_counter()
        chunks = run()
        best = min(best, time.perf_counter() - start)
    return ThroughputRow(what, size, best, chunks)


def streaming(view: memoryview, profile: ChunkingProfile, window: int) -> int:
    """Cut ``view`` the way a follower of a growing file does, ``window`` new bytes per call."""
    chunker, pos, known, count = Chunker(profile), 0, 0, 0
    while True:
        known = min(len(view), known + window)
        eof = known == len(view)
        got = chunker.cuts(view[pos:known], pos, eof)
        count += len(got)
        pos = got[-1] if got else pos
        if eof:
            return count


def _quicktime_header(payload: int) -> bytes:
    ftyp = struct.pack(">I4s", 20, b"ftyp") + b"qt  " + struct.pack(">I", 0x200) + b"qt  "
    return ftyp + struct.pack(">I4s", 8, b"wide") + struct.pack(">I4s", 8 + payload, b"mdat")


def throughput_rows(size: int, repeat: int, pairs: list[media.MediaPair]) -> list[ThroughputRow]:
    rng = random.Random(0)
    data = memoryview(
        b"".join(rng.randbytes(min(64 * MiB, size - at)) for at in range(0, size, 64 * MiB))
    )
    cdc = FastCDC(
        MEDIA_PROFILE.avg_size, min_size=MEDIA_PROFILE.min_size, max_size=MEDIA_PROFILE.max_size
    )
    rows = [
        best_of(
            repeat, size, "pyfastcdc cut_buf, random", lambda: sum(1 for _ in cdc.cut_buf(data))
        ),
        best_of(
            repeat, size, "media-v2 one-shot, random", lambda: len(cut_points(data, MEDIA_PROFILE))
        ),
        best_of(
            repeat,
            size,
            "media-v2 16 MiB windows, random",
            lambda: streaming(data, MEDIA_PROFILE, 16 * MiB),
        ),
        best_of(
            repeat,
            size,
            "project-v1 one-shot, random",
            lambda: len(cut_points(data, PROJECT_PROFILE)),
        ),
    ]
    # A QuickTime file (qt brand) whose mdat holds no ProRes frames: H.264/HEVC .mov from
    # cameras, phones and NLE exports. media-v1 scans every payload byte for frames.
    qt = memoryview(_quicktime_header(len(data)) + bytes(data))
    for profile in (MEDIA_PROFILE_V1, MEDIA_PROFILE):
        rows.append(
            best_of(
                repeat,
                len(qt),
                f"{profile.name} 16 MiB windows, QuickTime non-ProRes",
                lambda p=profile: streaming(qt, p, 16 * MiB),  # type: ignore[misc]
            )
        )
    for pair in pairs:
        if pair.name in ("prores-mov", "h264-mp4"):
            with mapped(pair.new) as view:
                bytes(view)  # fault the pages in, so the disk is not what is measured

                def run(v: memoryview = view) -> int:
                    return len(cut_points(v, MEDIA_PROFILE))

                rows.append(best_of(repeat, len(view), f"media-v2 one-shot, {pair.name}", run))
                del run  # drop the last reference to the view before the mmap closes
    return rows


def print_dedup(rows: list[DedupRow]) -> None:
    head = (
        f"{'pair':<20} {'configuration':<24} {'chunks old/new':>15} {'reuse':>7} {'to store':>11}"
    )
    print(head)
    print("-" * len(head))
    last = None
    for r in rows:
        pair = r.pair if r.pair != last else ""
        last = r.pair
        counts = f"{r.old_chunks}/{r.new_chunks}"
        stored = (
            f"{r.stored_bytes / MiB:.2f} MiB"
            if r.stored_bytes >= 100 * KiB
            else f"{r.stored_bytes / KiB:.1f} KiB"
        )
        print(f"{pair:<20} {r.config:<24} {counts:>15} {r.reuse_pct:>6.2f}% {stored:>11}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks chunking", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small media, 256 MiB of random data")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("/tmp/dits-bench-media"),
        help="where generated media is cached (default: %(default)s)",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--repeat", type=int, default=3, help="throughput runs, best counts")
    parser.add_argument("--random-bytes", type=int, help="size of the random throughput input")
    args = parser.parse_args(argv)

    spec = media.QUICK if args.quick else media.FULL
    random_size = args.random_bytes or (256 * MiB if args.quick else GiB)
    print(f"generating media {spec.tag} in {args.data_dir} (cached) ...", flush=True)
    pairs = media.ensure_media(args.data_dir, spec)

    rows: list[DedupRow] = []
    for pair in pairs:
        print(f"  {pair.name}: {pair.note} ({pair.new.stat().st_size / MiB:.1f} MiB)", flush=True)
        rows += dedup_rows(pair)
        yardstick = packet_yardstick(pair)
        if yardstick is not None:
            rows.append(yardstick)
    rows += project_rows()
    print()
    print_dedup(rows)

    machine = f"{os.cpu_count()} CPUs, {platform.machine()}"
    print(f"\nthroughput (best of {args.repeat}), {machine}:")
    speed = throughput_rows(random_size, args.repeat, pairs)
    for t in speed:
        print(f"  {t.what:<40} {t.size / MiB:>8.0f} MiB {t.gbps:>6.2f} GB/s  {t.chunks} chunks")

    if args.json:
        result = {
            "spec": asdict(spec),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": sys.version,
            },
            "pairs": [
                {"name": p.name, "note": p.note, "old": str(p.old), "new": str(p.new)}
                for p in pairs
            ],
            "dedup": [asdict(r) | {"reuse_pct": r.reuse_pct} for r in rows],
            "throughput": [asdict(t) | {"gbps": t.gbps} for t in speed],
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

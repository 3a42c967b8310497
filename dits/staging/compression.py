"""Which zstd level, if any, pays for a chunk on this link and this machine.

This module owns the wire-compression decision of predictive staging and the per-machine
speed model it rests on. ``choose`` is pure: a ``CompressionModel``, a ``ContentAnalysis`` and
the measured bandwidth in, a ``WireChoice`` out. Only ``calibrate`` times anything, through the
``clock`` it is given; ``machine_model`` is the one place that passes it the real clock.

The rule (from the issue): compress only when

    time to compress + compressed size / bandwidth  <  raw size / bandwidth

where the time to compress is measured on this machine (``LevelProfile.speed``) and divided by
the ``workers`` threads that compress in parallel. Every level of the model is priced this way;
a level that does not pass the rule is never used, and when none passes, the chunk goes raw.
Among the levels that pass, a sequential sender takes the least total time; the staging
pipeline (``overlap=True``) compresses chunk N+1 while chunk N is on the wire, so its pace is
the slower of the two, ``max(cpu, wire)``, and it takes the level that minimises that: on a
slow link it spends the CPU that would otherwise wait, on a fast one it stays cheap. The
compressed size at level L is predicted as the chunk's level-1 ratio from
``dits.staging.analysis`` times the level's ``ratio_scale``, measured
on the calibration sample (a level's gain over level 1 is far more stable across data than the
ratio itself). A chunk stored zstd-compressed at rest can also go "as stored": no compression
time, its at-rest ratio; recompressing it costs a decompression first.

Calibration: ``calibrate`` compresses a sample at each level ``repeats`` times and keeps the best
time (the least disturbed by other load), then decompresses the lowest level's frame likewise.
The engine passes ``calibration_sample()``: ~1 MiB of fixed, seeded data mixing XML project
files, log lines and 10-bit image rows, i.e. the compressible content dits meets; random data
would measure zstd's fast path for stored blocks instead. ``machine_model()`` calibrates once per
process on first use (~1-2 s here at the default levels) and caches the result; two threads
racing on the first call may both calibrate, and either result is kept (both are valid).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import zstandard

from dits.staging.analysis import ContentAnalysis, ContentClass

__all__ = [
    "DEFAULT_LEVELS",
    "NO_BANDWIDTH_MAX_RATIO",
    "CompressionModel",
    "LevelProfile",
    "WireChoice",
    "accuracy",
    "calibration_sample",
    "choose",
    "machine_model",
]

MB: Final = 1_000_000
"""Costs are quoted per MB (10^6 bytes) of plain data."""

DEFAULT_LEVELS: Final = (1, 3, 6, 9, 12, 16)

NO_BANDWIDTH_MAX_RATIO: Final = 0.95
"""Before any bandwidth is measured, level 1 is used when it predicts at most this ratio
(``dits.core.compression.KEEP_MAX_RATIO``: a smaller gain is not worth a decompression)."""

MIN_BANDWIDTH: Final = 1.0
"""Bytes/s a stalled link is priced at."""

CALIBRATION_SAMPLE_SIZE: Final = 1 << 20
_CALIBRATION_SEED: Final = 20240611


@dataclass(frozen=True)
class LevelProfile:
    """How one zstd level performs on this machine.

    Attributes:
        level: the zstd level.
        speed: plain bytes per second per thread when compressing at this level.
        ratio_scale: this level's compressed size divided by level 1's on the calibration
            sample; 1.0 for level 1, below 1 for higher levels.
    """

    level: int
    speed: float
    ratio_scale: float


@dataclass(frozen=True)
class CompressionModel:
    """Measured zstd speeds and relative ratios of this machine.

    Attributes:
        levels: one profile per level, in ascending level order.
        decompress_speed: plain bytes per second per thread when decompressing.
    """

    levels: tuple[LevelProfile, ...]
    decompress_speed: float

    def profile(self, level: int) -> LevelProfile:
        """The profile of ``level``.

        Raises:
            KeyError: the model has no such level.
        """
        for profile in self.levels:
            if profile.level == level:
                return profile
        raise KeyError(level)

    def ratio_scale(self, level: int) -> float:
        """``profile(level).ratio_scale``."""
        return self.profile(level).ratio_scale

    @classmethod
    def calibrate(
        cls,
        sample: bytes,
        *,
        levels: Sequence[int] = DEFAULT_LEVELS,
        clock: Callable[[], float] = time.perf_counter,
        repeats: int = 3,
    ) -> CompressionModel:
        """Measure compression speed and ratio per level, and decompression speed.

        Timings happen in this order, each bracketed by two ``clock()`` calls: ``repeats``
        compressions per level in ascending level order, then ``repeats`` decompressions of the
        lowest level's frame. The best (smallest) time of each group counts.

        Args:
            sample: compressible bytes (``calibration_sample()``); not empty.
            levels: zstd levels to profile; level 1 is the ratio baseline whether listed or
                not.
            clock: seconds, monotonic; injected so tests can script the timings.
            repeats: timings per level (at least 1).

        Returns:
            The model.

        Raises:
            ValueError: empty sample or levels, ``repeats`` below 1, or a zero-length timing
                (a clock too coarse for the sample).
        """
        if not sample:
            raise ValueError("calibration sample is empty")
        if not levels:
            raise ValueError("no levels to calibrate")
        if repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {repeats}")
        ordered = sorted(set(levels))
        frames: dict[int, bytes] = {}
        speeds: dict[int, float] = {}
        for level in ordered:
            compressor = zstandard.ZstdCompressor(
                level=level, write_checksum=False, write_content_size=True
            )
            seconds, frames[level] = _best_time(clock, repeats, compressor.compress, sample)
            speeds[level] = len(sample) / seconds
        level_1_size = len(frames[1]) if 1 in frames else len(_compress(sample, 1))
        decompressor = zstandard.ZstdDecompressor()
        seconds, _ = _best_time(clock, repeats, decompressor.decompress, frames[ordered[0]])
        profiles = tuple(
            LevelProfile(level, speeds[level], len(frames[level]) / level_1_size)
            for level in ordered
        )
        return cls(profiles, len(sample) / seconds)


def _compress(data: bytes, level: int) -> bytes:
    return zstandard.ZstdCompressor(level=level, write_checksum=False).compress(data)


def _best_time(
    clock: Callable[[], float], repeats: int, work: Callable[[bytes], bytes], data: bytes
) -> tuple[float, bytes]:
    best = float("inf")
    output = b""
    for _ in range(repeats):
        start = clock()
        output = work(data)
        best = min(best, clock() - start)
    if best <= 0:
        raise ValueError("calibration timing was zero: clock too coarse or sample too small")
    return best, output


def calibration_sample(size: int = CALIBRATION_SAMPLE_SIZE) -> bytes:
    """Return ``size`` bytes of fixed, compressible data like what dits compresses.

    Blocks of 16 KiB rotate through XML project-file elements, render-log lines and rows of
    10-bit RGB pixels packed DPX-style into big-endian 32-bit words (smooth gradients plus a
    few bits of noise), all drawn from one seeded ``random.Random``: the same bytes on every
    run.
    """
    rng = random.Random(_CALIBRATION_SEED)
    block = 16 * 1024
    makers = (_xml_block, _log_block, _image_block)
    parts: list[bytes] = []
    total = 0
    while total < size:
        part = makers[len(parts) % len(makers)](rng, block)
        parts.append(part)
        total += len(part)
    return b"".join(parts)[:size]


def _lines_block(rng: random.Random, size: int, line: Callable[[random.Random], str]) -> bytes:
    lines: list[str] = []
    length = 0
    while length < size:
        text = line(rng)
        lines.append(text)
        length += len(text)
    return "".join(lines).encode()[:size]


def _xml_line(rng: random.Random) -> str:
    return (
        f'  <clipitem id="clipitem-{rng.randrange(10**5)}"><name>A{rng.randrange(999):03d}'
        f"_C{rng.randrange(999):03d}_{rng.randrange(10**6):06d}.mov</name>"
        f"<start>{rng.randrange(10**5)}</start><end>{rng.randrange(10**5)}</end>"
        f"<rate><timebase>{rng.choice((24, 25, 30, 60))}</timebase></rate></clipitem>\n"
    )


_LOG_LEVELS: Final = ("INFO", "INFO", "INFO", "DEBUG", "WARN")


def _log_line(rng: random.Random) -> str:
    return (
        f"2024-06-{rng.randrange(1, 31):02d}T{rng.randrange(24):02d}:{rng.randrange(60):02d}"
        f":{rng.randrange(60):02d}.{rng.randrange(1000):03d} {rng.choice(_LOG_LEVELS)} "
        f"render frame={rng.randrange(10**5)} took={rng.randrange(2000)}ms "
        f"cache={'hit' if rng.random() < 0.7 else 'miss'}\n"
    )


def _xml_block(rng: random.Random, size: int) -> bytes:
    return _lines_block(rng, size, _xml_line)


def _log_block(rng: random.Random, size: int) -> bytes:
    return _lines_block(rng, size, _log_line)


def _image_block(rng: random.Random, size: int) -> bytes:
    import numpy as np  # only for calibration samples: kept out of every command's start-up

    pixels = size // 4
    x = np.arange(pixels, dtype=np.int64)
    # Noise of -2..+2 per component from the seeded generator's bytes (stable across versions).
    noise = np.frombuffer(rng.randbytes(3 * pixels), dtype=np.uint8).astype(np.int64) % 5 - 2
    r = np.clip(rng.randrange(1024) + x // 8 % 1024 + noise[:pixels], 0, 1023)
    g = np.clip(rng.randrange(1024) + noise[pixels : 2 * pixels], 0, 1023)
    b = np.clip(512 + noise[2 * pixels :], 0, 1023)
    words = (r << 22) | (g << 12) | (b << 2)
    packed: bytes = words.astype(">u4").tobytes()
    return packed


_machine_model: CompressionModel | None = None


def machine_model() -> CompressionModel:
    """This machine's model: calibrated on first call with the real clock, then cached.

    Engines call this rather than ``calibrate`` so a process pays for calibration once.
    """
    global _machine_model
    model = _machine_model
    if model is None:
        model = CompressionModel.calibrate(calibration_sample())
        _machine_model = model
    return model


@dataclass(frozen=True)
class WireChoice:
    """How one chunk goes on the wire.

    Attributes:
        level: zstd level to compress at; None = send the bytes raw, or as stored at rest.
        predicted_ratio: predicted wire size / plain size for the chosen option.
        seconds_per_mb_raw: predicted seconds per MB of plain data to send it without
            compressing (raw, or as stored when the chunk is stored compressed).
        seconds_per_mb_chosen: the same for the chosen option: compression (and, to recompress
            a stored chunk, decompression) time spread over the workers, plus wire time.
            Without a measured bandwidth both leave out the wire time.
        reason: why, in a few words ("incompressible", "compress level 3", "as stored", ...).
    """

    level: int | None
    predicted_ratio: float
    seconds_per_mb_raw: float
    seconds_per_mb_chosen: float
    reason: str


def choose(
    model: CompressionModel,
    analysis: ContentAnalysis,
    *,
    bandwidth: float | None,
    workers: int,
    stored_ratio: float | None = None,
    overlap: bool = False,
) -> WireChoice:
    """Pick the cheapest way to send one chunk: raw (or as stored) or zstd at some level.

    Args:
        model: this machine's speeds and per-level ratio scales.
        analysis: the chunk's content analysis (its level-1 ratio).
        bandwidth: predicted link throughput in bytes/s; None when not measured yet; 0 for
            a stalled link.
        workers: threads compressing in parallel (at least 1).
        stored_ratio: at-rest size / plain size when the chunk is stored zstd-compressed,
            else None.
        overlap: compression runs while earlier chunks are on the wire (the staging
            pipeline): among the levels that pay, prefer the one whose slower side (CPU or
            wire) is fastest, rather than the least total time.

    Returns:
        The choice, with the predicted costs that decided it.

    Raises:
        ValueError: ``workers`` below 1, ``bandwidth`` negative or NaN, or a model without
            levels.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if bandwidth is not None and not bandwidth >= 0:
        raise ValueError(f"bandwidth must be at least 0 bytes/s, got {bandwidth}")
    if not model.levels:
        raise ValueError("compression model has no levels")
    # Seconds per plain MB on the wire, uncompressed. A stalled link (0 bytes/s, which the
    # monitor reports truthfully) is priced at 1 byte/s: the smallest output wins.
    wire = MB / max(bandwidth, MIN_BANDWIDTH) if bandwidth is not None else 0.0
    baseline_ratio = min(stored_ratio, 1.0) if stored_ratio is not None else 1.0
    baseline = wire * baseline_ratio
    # Recompressing a stored chunk decompresses it first; sending raw needs nothing.
    unpack = MB / (model.decompress_speed * workers) if stored_ratio is not None else 0.0

    def as_is(reason: str) -> WireChoice:
        return WireChoice(None, baseline_ratio, baseline, baseline, reason)

    if analysis.content_class is ContentClass.RANDOM:
        return as_is("incompressible")
    if bandwidth is None:
        if stored_ratio is not None:
            return as_is("as stored")  # already compressed: recompressing would only cost CPU
        lowest = model.levels[0]
        ratio = min(analysis.predicted_ratio * lowest.ratio_scale, 1.0)
        reason = "no bandwidth measured: level 1 when it pays"
        if ratio > NO_BANDWIDTH_MAX_RATIO:
            return as_is(reason)
        cpu = MB / (lowest.speed * workers)
        return WireChoice(lowest.level, ratio, 0.0, cpu, reason)

    best: WireChoice | None = None
    best_rank = math.inf
    for profile in model.levels:
        ratio = min(analysis.predicted_ratio * profile.ratio_scale, 1.0)
        cpu = unpack + MB / (profile.speed * workers)
        cost = cpu + wire * ratio
        if not cost < baseline:
            continue  # the rule: it must pay even if nothing overlapped
        # Overlapped, compression and the wire run at once: the slower one sets the pace.
        rank = max(cpu, wire * ratio) if overlap else cost
        if rank < best_rank:
            best_rank = rank
            best = WireChoice(
                profile.level, ratio, baseline, cost, f"compress level {profile.level}"
            )
    if best is not None:
        return best
    return as_is("as stored" if stored_ratio is not None else "link faster than compression pays")


def accuracy(predicted_ratio: float, actual_ratio: float) -> float:
    """How close a predicted ratio came: 1 - |predicted - actual| / actual, within [0, 1]."""
    error = abs(predicted_ratio - actual_ratio) / max(actual_ratio, 1e-9)
    return min(max(1.0 - error, 0.0), 1.0)

"""What kind of bytes a chunk holds, and how well zstd level 1 would shrink them.

This module owns the content analysis behind staging's compression choice
(``dits.staging.compression``): a ``ContentClass``, a predicted level-1 ratio and, when asked,
the Shannon entropy of the sample. It is pure: bytes in, a frozen value out; no files, no clock.

Cost: most of what dits moves is already-compressed video, so the common case must be nearly
free (the issue allows the decision ~2 % of CPU time). ``analyze`` works in two stages, as
``dits.core.compression`` does for the at-rest form:

(a) a ``PROBE_SIZE`` (512-byte) zstd level-1 probe from the middle of the chunk (the start of a
    file is often an atypical header). When zstd finds no gain at all it emits a raw block,
    longer than its input: the chunk is ``RANDOM`` (compressed video, encrypted or random data)
    with ratio 1.0, and nothing else is read.
(b) otherwise ``window`` bytes from the middle are compressed at level 1; the ratio predicts the
    chunk's, and the sample's byte histogram tells text from binary.

Measured on this machine (noisy 2-vCPU box, Python 3.11, zstandard 0.25, numpy 2.4;
``time.perf_counter`` around each call, median of 2,000 calls per batch, 15 batches; "quiet" is
the fastest batch, "loaded" the median batch while another test suite ran; BLAKE3 of the same
256 KiB chunk costs ~63 µs):

    ===============================  ===============  ===========  ============
    256 KiB chunk                    measure_entropy  quiet (µs)   loaded (µs)
    ===============================  ===============  ===========  ============
    random (stage a only)            False            2.7          4.8
    random (stage a only)            True             13.4         21.7
    XML/log text, 16 KiB window (b)  False            49           53
    XML/log text, 16 KiB window (b)  True             75           81
    ===============================  ===============  ===========  ============

The random case is the one that matters: 2.7 µs is 4 % of BLAKE3 on the same chunk, and with
chunking (~55 µs at pyfastcdc's measured 4.7 GB/s) and wire encryption on top it comes near the
issue's 2 % (an estimate: not measured end to end here). Entropy is a diagnostic, off in the
hot path unless the caller wants it. Text detection without a histogram uses
``bytes.translate`` (~13 µs on 16 KiB) rather than ``np.bincount`` (~22 µs); with entropy
requested the histogram is already there and is reused.

zstd compressors are not thread-safe and creating one per call would cost more than the probe,
so each call borrows one from a free list and returns it (``list.pop``/``list.append`` are
atomic): the pattern of ``dits.core.compression``, without importing ``threading``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Final

import zstandard

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "MIN_ANALYSIS_SIZE",
    "PROBE_SIZE",
    "RANDOM_MIN_RATIO",
    "REPETITIVE_MAX_RATIO",
    "TEXT_MIN_PRINTABLE",
    "ContentAnalysis",
    "ContentClass",
    "analyze",
    "shannon_entropy",
]

Buffer = bytes | bytearray | memoryview

PROBE_SIZE: Final = 512
"""Bytes of the first, cheap probe (stage a); same size as ``dits.core.compression``'s."""

MIN_ANALYSIS_SIZE: Final = 64
"""Shorter data is called RANDOM with ratio 1.0: a zstd frame header alone is 6-13 bytes."""

TEXT_MIN_PRINTABLE: Final = 0.95
"""Fraction of printable ASCII (plus tab, LF, CR) above which a sample is TEXT."""

REPETITIVE_MAX_RATIO: Final = 0.25
"""Level-1 ratio at or below which a (non-text) sample is REPETITIVE."""

RANDOM_MIN_RATIO: Final = 0.97
"""Level-1 ratio at or above which a sample is RANDOM (zstd gains under 3 %)."""

_PRINTABLE: Final = bytes(range(32, 127)) + b"\t\n\r"


@functools.cache
def _printable_mask() -> npt.NDArray[np.int64]:
    # numpy is imported on first use: it costs ~70 ms of start-up that a push of
    # incompressible media never needs.
    import numpy as np

    mask = np.zeros(256, dtype=np.int64)
    mask[list(_PRINTABLE)] = 1
    return mask


class ContentClass(StrEnum):
    """What a sample looks like to zstd and to a byte histogram."""

    RANDOM = "random"
    """Already compressed, encrypted or random: zstd gains (almost) nothing."""
    STRUCTURED = "structured"
    """Binary with structure (images, audio, containers' index tables)."""
    TEXT = "text"
    """Mostly printable ASCII: XML/EDL project files, logs, sidecars."""
    REPETITIVE = "repetitive"
    """Runs and repeated patterns (zeros, padding, flat frames): level 1 shrinks it 4x+."""


@dataclass(frozen=True)
class ContentAnalysis:
    """The result of ``analyze``.

    Attributes:
        content_class: what the sample looks like.
        predicted_ratio: zstd level-1 compressed size / plain size of the sample, at most 1.0.
        entropy: Shannon entropy of the sample in bits per byte (0-8); None when not measured.
        sample_bytes: how many bytes the prediction rests on.
    """

    content_class: ContentClass
    predicted_ratio: float
    entropy: float | None
    sample_bytes: int


_RANDOM_PROBED: Final = ContentAnalysis(ContentClass.RANDOM, 1.0, None, PROBE_SIZE)


class _Sampler:
    """One thread's level-1 compressor while it holds it."""

    def __init__(self) -> None:
        self.compressor = zstandard.ZstdCompressor(
            level=1, write_checksum=False, write_content_size=False
        )


_free_samplers: list[_Sampler] = []


def _take_sampler() -> _Sampler:
    """Borrow a sampler; give it back with ``_free_samplers.append`` in a ``finally``."""
    try:
        return _free_samplers.pop()
    except IndexError:
        return _Sampler()


def _as_bytes_view(data: Buffer) -> memoryview:
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _middle(view: memoryview, size: int) -> memoryview:
    if len(view) <= size:
        return view
    start = (len(view) - size) >> 1
    return view[start : start + size]


def _histogram(view: memoryview) -> npt.NDArray[np.intp]:
    import numpy as np

    return np.bincount(np.frombuffer(view, dtype=np.uint8), minlength=256)


def _entropy_from_histogram(counts: npt.NDArray[np.intp], total: int) -> float:
    if total == 0:
        return 0.0
    import numpy as np

    present = counts[counts.nonzero()]
    # H = -sum(c/n * log2(c/n)) = log2(n) - sum(c * log2 c) / n: one dot product, no division
    # per symbol.
    entropy = math.log2(total) - float(np.dot(present, np.log2(present))) / total
    return max(entropy, 0.0)  # rounding can give -1e-16 for a constant buffer


def shannon_entropy(data: Buffer) -> float:
    """Return the Shannon entropy of ``data`` in bits per byte (0.0 for empty data).

    Args:
        data: any contiguous buffer; read in place, not copied.

    Returns:
        A value from 0.0 (one byte value repeated) to 8.0 (all 256 values equally often).
    """
    view = _as_bytes_view(data)
    return _entropy_from_histogram(_histogram(view), len(view))


def analyze(data: Buffer, *, window: int = 16384, measure_entropy: bool = True) -> ContentAnalysis:
    """Classify ``data`` and predict its zstd level-1 ratio from samples of its middle.

    Args:
        data: the chunk (any contiguous buffer; not copied except for a text check on the
            sample).
        window: bytes from the middle compressed when the first 512-byte probe finds a gain;
            the whole data when shorter.
        measure_entropy: also compute the sample's Shannon entropy (a numpy histogram, ~2-15
            µs); False leaves ``entropy`` None.

    Returns:
        The analysis; data shorter than ``MIN_ANALYSIS_SIZE`` is RANDOM with ratio 1.0.

    Raises:
        ValueError: ``window`` is below 1.
    """
    if window < 1:
        raise ValueError(f"analysis window must be at least 1 byte, got {window}")
    view = _as_bytes_view(data)
    if len(view) < MIN_ANALYSIS_SIZE:
        entropy = shannon_entropy(view) if measure_entropy else None
        return ContentAnalysis(ContentClass.RANDOM, 1.0, entropy, len(view))
    sampler = _take_sampler()
    try:
        compress = sampler.compressor.compress
        probe = _middle(view, PROBE_SIZE)
        probe_len = len(compress(probe))
        if probe_len >= len(probe):
            # zstd stored a raw block: nothing to gain, and nothing more worth reading.
            if not measure_entropy and len(probe) == PROBE_SIZE:
                return _RANDOM_PROBED  # shared: building a frozen dataclass costs ~1 µs
            entropy = shannon_entropy(probe) if measure_entropy else None
            return ContentAnalysis(ContentClass.RANDOM, 1.0, entropy, len(probe))
        sample = _middle(view, window)
        sample_len = len(sample)
        compressed_len = probe_len if sample_len == len(probe) else len(compress(sample))
    finally:
        _free_samplers.append(sampler)
    ratio = min(compressed_len / sample_len, 1.0)
    if measure_entropy:
        counts = _histogram(sample)
        entropy = _entropy_from_histogram(counts, sample_len)
        printable = int(counts @ _printable_mask())
    else:
        entropy = None
        printable = sample_len - len(sample.tobytes().translate(None, _PRINTABLE))
    return ContentAnalysis(_classify(ratio, printable / sample_len), ratio, entropy, sample_len)


def _classify(ratio: float, printable_fraction: float) -> ContentClass:
    if printable_fraction >= TEXT_MIN_PRINTABLE:
        return ContentClass.TEXT
    if ratio <= REPETITIVE_MAX_RATIO:
        return ContentClass.REPETITIVE
    if ratio >= RANDOM_MIN_RATIO:
        return ContentClass.RANDOM
    return ContentClass.STRUCTURED

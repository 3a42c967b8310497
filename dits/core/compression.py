"""The at-rest form of a stored value: a tag byte, then the raw bytes or one zstd frame.

This module owns the choice "compress this value or not" and the stored format. It does no I/O:
bytes in, bytes out. Stores call ``encode_stored`` before writing and ``decode_stored`` after
reading; ids always name the *plain* bytes, so the at-rest form never leaks into ids.

Format (version 1 of the at-rest form; the tag byte doubles as the version)::

    offset 0   tag      u8   0 = RAW: the payload is the plain bytes
                             1 = ZSTD: the payload is exactly one zstd frame (RFC 8878) that
                                 records its content size, without a frame checksum (every
                                 read re-hashes the plain bytes with BLAKE3 anyway)
    offset 1   payload  the rest of the value

An empty value is stored as the single byte ``00``. Any other tag is an error, and so is a zstd
frame that is truncated, followed by trailing bytes, lacks its content size or would decode to
more than the reader's ``max_size`` (the bound is checked against the frame header *before*
anything is allocated).

Decision (``encode_stored``, ``compress_if_worthwhile``): most of what dits stores is
already-compressed video, where zstd wins nothing (and compressing a random 256 KiB chunk costs
~45 µs even at level 1). So a two-stage probe decides first, with zstd level 1 on samples from
the middle of the value (the start of a file is often an atypical header). ``SAMPLE_SIZE``
(512) bytes settle the common cases: zstd finds no gain at all and emits a raw block (compressed
video, random data: store RAW at once), or the sample shrinks to ``SAMPLE_MAX_RATIO`` (97 %) or
less (compress). Only a marginal first answer pays for a ``SECOND_SAMPLE_SIZE`` (4 KiB) probe.
Measured here on random 256 KiB chunks: 2.0-2.6 µs per chunk, of which the zstd call is ~1.6
µs, against ~63 µs for BLAKE3 on the same chunk (3-4 %; ~2 % of a 100 µs budget). A 256-byte
sample misjudged 7-bit data (ratio 1.04, no gain seen), a 1 KiB one cost ~2.1 µs and a 4 KiB
one ~4 µs for the zstd call alone. Negative zstd levels are faster but do not entropy-code
literals, so they cannot see data that is compressible only by its byte distribution (7-bit
samples, raw sensor data): level 1 can. The whole value is then compressed at ``level`` and
kept only if it saves at least 5 % (``KEEP_MAX_RATIO``), so a poor ratio never costs a
decompression on every read.

zstd compressor and decompressor objects are not thread-safe, and creating them per call would
cost more than the probe. Each call borrows one set from a free list and returns it afterwards
(``list.pop``/``list.append`` are atomic), so a set is used by one thread at a time and reused
across calls; the list grows to the peak number of concurrent callers. This is what
``threading.local`` would give, without importing ``threading`` into the pure core
(``tests/unit/test_architecture.py`` forbids it here).
"""

from __future__ import annotations

import zstandard

__all__ = [
    "KEEP_MAX_RATIO",
    "MIN_COMPRESS_SIZE",
    "SAMPLE_MAX_RATIO",
    "SAMPLE_SIZE",
    "SECOND_SAMPLE_SIZE",
    "TAG_RAW",
    "TAG_ZSTD",
    "compress_if_worthwhile",
    "decode_stored",
    "encode_stored",
    "sample_says_compressible",
    "stored_plain_size",
    "write_raw_stored",
]

TAG_RAW = 0
TAG_ZSTD = 1

SAMPLE_SIZE = 512
"""Bytes probed from the middle of a value before deciding to compress it."""

SECOND_SAMPLE_SIZE = 4096
"""Bytes probed when the first probe gains a little but not clearly enough."""

SAMPLE_MAX_RATIO = 0.97
"""The sample must compress to at most this fraction of its size for a whole-value attempt.

A small sample understates what zstd achieves on the whole value (no history), so this is looser
than ``KEEP_MAX_RATIO``. Random data never goes below 1.0 (zstd adds a block header)."""

KEEP_MAX_RATIO = 0.95
"""A compressed value is kept only if it is at most this fraction of the plain size."""

MIN_COMPRESS_SIZE = 64
"""Values shorter than this are stored raw: a zstd frame header alone is 6-13 bytes."""

_RAW_PREFIX = bytes([TAG_RAW])
_ZSTD_PREFIX = bytes([TAG_ZSTD])
_MIN_LEVEL = 1
_MAX_LEVEL = 22


class _Codecs:
    """One thread's zstd objects while it holds them."""

    def __init__(self) -> None:
        self.sampler = zstandard.ZstdCompressor(
            level=1, write_checksum=False, write_content_size=False
        )
        self.compressors: dict[int, zstandard.ZstdCompressor] = {}
        self.decompressor = zstandard.ZstdDecompressor()

    def compressor(self, level: int) -> zstandard.ZstdCompressor:
        found = self.compressors.get(level)
        if found is None:
            found = zstandard.ZstdCompressor(
                level=level, write_checksum=False, write_content_size=True
            )
            self.compressors[level] = found
        return found


_free_codecs: list[_Codecs] = []


def _take_codecs() -> _Codecs:
    """Borrow a codec set; give it back with ``_free_codecs.append`` in a ``finally``."""
    try:
        return _free_codecs.pop()
    except IndexError:
        return _Codecs()


def _as_bytes_view(data: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def sample_says_compressible(data: bytes | bytearray | memoryview) -> bool:
    """Return True when zstd level 1 shrinks samples from the middle of ``data`` enough.

    Two stages: a ``SAMPLE_SIZE`` probe settles the common cases (zstd finds no gain at all on
    compressed video or random data and emits a raw block, longer than its input; or it
    clearly gains). Only an ambiguous first answer pays for a ``SECOND_SAMPLE_SIZE`` probe.
    Values no longer than a sample are probed whole.
    """
    codecs = _take_codecs()
    try:
        return _probe(codecs, _as_bytes_view(data))
    finally:
        _free_codecs.append(codecs)


def _probe(codecs: _Codecs, view: memoryview) -> bool:
    size = len(view)
    compress = codecs.sampler.compress
    if size > SAMPLE_SIZE:
        start = (size - SAMPLE_SIZE) >> 1
        sample = view[start : start + SAMPLE_SIZE]
    else:
        sample = view
    sample_len = len(sample)
    probe_len = len(compress(sample))
    if probe_len >= sample_len:
        return False  # zstd found no gain at all and stored a raw block
    if probe_len <= sample_len * SAMPLE_MAX_RATIO or size <= SAMPLE_SIZE:
        return probe_len <= sample_len * SAMPLE_MAX_RATIO
    if size > SECOND_SAMPLE_SIZE:
        start = (size - SECOND_SAMPLE_SIZE) >> 1
        sample = view[start : start + SECOND_SAMPLE_SIZE]
    else:
        sample = view
    return len(compress(sample)) <= len(sample) * SAMPLE_MAX_RATIO


def encode_stored(data: bytes | bytearray | memoryview, *, level: int = 3) -> bytes:
    """Return the at-rest form of ``data``: a tag byte plus the raw bytes or a zstd frame.

    Args:
        data: the plain value.
        level: zstd level (1-22) for values the probe finds compressible.

    Returns:
        ``00 || data`` or ``01 || zstd frame``, whichever the decision rule picks.

    Raises:
        ValueError: ``level`` is out of range.
    """
    compressed = compress_if_worthwhile(data, level=level)
    if compressed is not None:
        return compressed
    return b"".join((_RAW_PREFIX, _as_bytes_view(data)))


def compress_if_worthwhile(data: bytes | bytearray | memoryview, *, level: int = 3) -> bytes | None:
    """Return the ZSTD at-rest form of ``data`` when compression pays, else None (store RAW).

    The decision half of ``encode_stored``, for a store that writes RAW values itself
    (``write_raw_stored``) without allocating a tagged copy of each.

    Raises:
        ValueError: ``level`` is out of range.
    """
    if not _MIN_LEVEL <= level <= _MAX_LEVEL:
        raise ValueError(f"zstd level must be {_MIN_LEVEL}..{_MAX_LEVEL}, got {level}")
    view = _as_bytes_view(data)
    size = len(view)
    if size < MIN_COMPRESS_SIZE:
        return None
    codecs = _take_codecs()
    try:
        if size > SAMPLE_SIZE and not _probe(codecs, view):
            return None
        frame = codecs.compressor(level).compress(view)
    finally:
        _free_codecs.append(codecs)
    if len(frame) <= size * KEEP_MAX_RATIO:
        return b"".join((_ZSTD_PREFIX, frame))
    return None


def write_raw_stored(data: bytes | bytearray | memoryview, into: bytearray) -> memoryview:
    """Write the RAW at-rest form of ``data`` into the reusable buffer ``into``; return a view.

    The view is valid until ``into`` is written again. The buffer grows when it is too short,
    which Python refuses while a view of it is alive: size it for the largest value first.
    Why: a fresh 256 KiB allocation per value (``encode_stored``) measured 80-220 µs here,
    mostly page faults, against 7-25 µs for the copy into a reused buffer.
    """
    view = _as_bytes_view(data)
    size = len(view) + 1
    if len(into) < size:
        into.extend(bytes(size - len(into)))
    into[0] = TAG_RAW
    into[1:size] = view
    return memoryview(into)[:size]


def stored_plain_size(stored: bytes | bytearray | memoryview) -> int:
    """Return the plain size recorded in an at-rest value without decoding the payload.

    Cheap: reads the tag and, for zstd, the frame header only.

    Raises:
        ValueError: unknown tag or unreadable frame header.
    """
    view = _as_bytes_view(stored)
    if len(view) == 0:
        raise ValueError("stored value is empty (no tag byte)")
    tag = view[0]
    if tag == TAG_RAW:
        return len(view) - 1
    if tag == TAG_ZSTD:
        return _frame_content_size(view[1:])
    raise ValueError(f"unknown at-rest tag {tag}")


def _frame_content_size(frame: memoryview) -> int:
    try:
        size = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as exc:
        raise ValueError(f"bad zstd frame header: {exc}") from None
    if size < 0:
        raise ValueError("zstd frame does not record its content size")
    return int(size)


def decode_stored(stored: bytes | bytearray | memoryview, *, max_size: int) -> bytes:
    """Return the plain bytes of an at-rest value.

    Args:
        stored: tag byte plus payload, as produced by ``encode_stored``.
        max_size: the largest plain size the caller accepts; checked before allocating.

    Returns:
        The plain bytes (not yet verified against any id: that is the store's job).

    Raises:
        ValueError: empty input, unknown tag, a bad, truncated or trailing-garbage zstd frame,
            or a plain size above ``max_size``.
    """
    view = _as_bytes_view(stored)
    if len(view) == 0:
        raise ValueError("stored value is empty (no tag byte)")
    tag = view[0]
    payload = view[1:]
    if tag == TAG_RAW:
        if len(payload) > max_size:
            raise ValueError(f"value of {len(payload)} bytes exceeds the limit of {max_size}")
        return payload.tobytes()
    if tag != TAG_ZSTD:
        raise ValueError(f"unknown at-rest tag {tag}")
    size = _frame_content_size(payload)
    if size > max_size:
        raise ValueError(f"zstd frame declares {size} bytes, above the limit of {max_size}")
    codecs = _take_codecs()
    try:
        stream = codecs.decompressor.decompressobj(write_size=max(size, 1))
        plain = stream.decompress(payload)
    except zstandard.ZstdError as exc:
        raise ValueError(f"bad zstd frame: {exc}") from None
    finally:
        _free_codecs.append(codecs)
    if not stream.eof:
        raise ValueError("truncated zstd frame")
    if stream.unused_data:
        raise ValueError(f"{len(stream.unused_data)} bytes of trailing data after the zstd frame")
    if len(plain) != size:  # zstd checks this itself; kept as a cheap guard
        raise ValueError(f"zstd frame decoded to {len(plain)} bytes, header said {size}")
    return plain

"""The at-rest form: tag byte + raw or zstd, the compress-or-not decision, strict decoding."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from dits.core.compression import (
    SAMPLE_SIZE,
    TAG_RAW,
    TAG_ZSTD,
    compress_if_worthwhile,
    decode_stored,
    encode_stored,
    sample_says_compressible,
    stored_plain_size,
    write_raw_stored,
)

LIMIT = 1 << 30


def text_bytes(size: int) -> bytes:
    words = [b"timeline", b"clip", b"render", b"proxy", b"frame", b"audio", b"edit", b"cut"]
    rng = random.Random(size)
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" "
    return bytes(out[:size])


def seven_bit_bytes(size: int) -> bytes:
    """Compressible only by its byte distribution (no repeats for an LZ match finder)."""
    return bytes(b & 0x7F for b in random.Random(7).randbytes(size))


@given(st.binary(max_size=5000))
@settings(max_examples=200, deadline=None)
def test_round_trip_any_bytes(data: bytes) -> None:
    assert decode_stored(encode_stored(data), max_size=LIMIT) == data


@given(st.integers(min_value=0, max_value=70_000), st.sampled_from(["text", "zeros", "seven"]))
@settings(max_examples=60, deadline=None)
def test_round_trip_compressible(size: int, kind: str) -> None:
    makers: dict[str, Callable[[int], bytes]] = {
        "text": text_bytes,
        "zeros": bytes,
        "seven": seven_bit_bytes,
    }
    data = makers[kind](size)
    stored = encode_stored(data)
    assert decode_stored(stored, max_size=LIMIT) == data
    assert stored_plain_size(stored) == size


def test_empty_value_is_one_raw_tag_byte() -> None:
    assert encode_stored(b"") == bytes([TAG_RAW])
    assert decode_stored(bytes([TAG_RAW]), max_size=0) == b""


def test_random_data_is_stored_raw() -> None:
    data = os.urandom(256 * 1024)
    stored = encode_stored(data)
    assert stored[0] == TAG_RAW
    assert stored[1:] == data


def test_compressible_data_is_stored_as_zstd_and_smaller() -> None:
    data = text_bytes(256 * 1024)
    stored = encode_stored(data)
    assert stored[0] == TAG_ZSTD
    assert len(stored) < len(data) // 4


def test_entropy_only_compressible_data_is_detected() -> None:
    # Negative zstd levels skip literal entropy coding and would call this incompressible.
    data = seven_bit_bytes(256 * 1024)
    assert sample_says_compressible(data)
    stored = encode_stored(data)
    assert stored[0] == TAG_ZSTD
    assert len(stored) < 0.95 * len(data)


def test_probe_rejects_random_and_accepts_zeros() -> None:
    assert not sample_says_compressible(os.urandom(256 * 1024))
    assert sample_says_compressible(bytes(256 * 1024))
    assert not sample_says_compressible(os.urandom(SAMPLE_SIZE // 2))


def test_marginal_gain_is_stored_raw() -> None:
    # ~2 % compressible: the whole-value attempt must not keep a frame saving under 5 %.
    rng = random.Random(3)
    data = bytearray(rng.randbytes(256 * 1024))
    for start in range(0, len(data), 4096):
        data[start : start + 80] = bytes(80)
    stored = encode_stored(bytes(data))
    assert stored[0] == TAG_RAW


def test_small_values_are_raw() -> None:
    assert encode_stored(b"a" * 63)[0] == TAG_RAW


def test_memoryview_and_bytearray_inputs() -> None:
    data = text_bytes(10_000)
    assert encode_stored(memoryview(data)) == encode_stored(data)
    assert encode_stored(bytearray(data)) == encode_stored(data)
    stored = encode_stored(data)
    assert decode_stored(memoryview(stored), max_size=LIMIT) == data
    wide = memoryview(bytes(800)).cast("I")  # non-byte format is read as its raw bytes
    assert decode_stored(encode_stored(wide), max_size=LIMIT) == bytes(800)


def test_level_is_validated() -> None:
    with pytest.raises(ValueError, match="level"):
        encode_stored(b"x" * 100, level=0)
    with pytest.raises(ValueError, match="level"):
        encode_stored(b"x" * 100, level=23)
    data = text_bytes(50_000)
    assert decode_stored(encode_stored(data, level=19), max_size=LIMIT) == data


def test_decode_rejects_empty_and_unknown_tag() -> None:
    with pytest.raises(ValueError, match="empty"):
        decode_stored(b"", max_size=LIMIT)
    with pytest.raises(ValueError, match="unknown at-rest tag 7"):
        decode_stored(b"\x07abc", max_size=LIMIT)
    with pytest.raises(ValueError, match="unknown"):
        stored_plain_size(b"\x02")


def test_decode_rejects_bad_frames() -> None:
    stored = encode_stored(text_bytes(100_000))
    assert stored[0] == TAG_ZSTD
    with pytest.raises(ValueError, match="truncated"):
        decode_stored(stored[:-5], max_size=LIMIT)
    with pytest.raises(ValueError, match="trailing"):
        decode_stored(stored + b"junk", max_size=LIMIT)
    with pytest.raises(ValueError, match="frame"):
        decode_stored(bytes([TAG_ZSTD]) + b"not a frame at all", max_size=LIMIT)
    with pytest.raises(ValueError):
        decode_stored(bytes([TAG_ZSTD]), max_size=LIMIT)
    damaged = bytearray(stored)
    damaged[len(damaged) // 2] ^= 0xFF
    try:
        plain = decode_stored(bytes(damaged), max_size=LIMIT)
    except ValueError:
        pass
    else:  # zstd cannot always notice; the store's BLAKE3 check will
        assert plain != text_bytes(100_000)


def test_decode_requires_content_size_in_frame() -> None:
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(text_bytes(10_000))
    with pytest.raises(ValueError, match="content size"):
        decode_stored(bytes([TAG_ZSTD]) + frame, max_size=LIMIT)


def test_decode_enforces_max_size_before_decompressing() -> None:
    zeros = encode_stored(bytes(10_000_000))
    assert len(zeros) < 2_000  # a decompression bomb in miniature
    with pytest.raises(ValueError, match="limit"):
        decode_stored(zeros, max_size=1_000_000)
    with pytest.raises(ValueError, match="limit"):
        decode_stored(b"\x00" + bytes(101), max_size=100)
    assert decode_stored(b"\x00" + bytes(100), max_size=100) == bytes(100)


def test_stored_plain_size_reads_headers_only() -> None:
    data = text_bytes(123_456)
    assert stored_plain_size(encode_stored(data)) == 123_456
    assert stored_plain_size(encode_stored(os.urandom(5000))) == 5000
    with pytest.raises(ValueError):
        stored_plain_size(b"")


def test_concurrent_threads_share_no_codec_state() -> None:
    inputs = [text_bytes(20_000 + i) for i in range(8)] + [os.urandom(30_000) for _ in range(8)]
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(60):
                data = rng.choice(inputs)
                assert decode_stored(encode_stored(data), max_size=LIMIT) == data
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_decision_half_and_raw_writer_agree_with_encode_stored() -> None:
    rnd = os.urandom(70_000)
    text = text_bytes(70_000)
    assert compress_if_worthwhile(rnd) is None
    assert compress_if_worthwhile(b"short") is None
    assert compress_if_worthwhile(text) == encode_stored(text)
    scratch = bytearray()
    assert bytes(write_raw_stored(rnd, scratch)) == encode_stored(rnd)  # grows the buffer
    view = write_raw_stored(b"abc", scratch)  # reuses it
    assert bytes(view) == b"\x00abc"
    assert len(scratch) == 70_001
    del view
    assert bytes(write_raw_stored(b"", scratch)) == b"\x00"

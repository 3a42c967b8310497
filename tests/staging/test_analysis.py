"""Content analysis: classes, predicted level-1 ratios and entropy on known kinds of bytes."""

from __future__ import annotations

import random

import numpy as np
import pytest

from dits.staging.analysis import (
    MIN_ANALYSIS_SIZE,
    PROBE_SIZE,
    ContentAnalysis,
    ContentClass,
    analyze,
    shannon_entropy,
)

KIB = 1024


def random_bytes(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def xml_and_log_text(n: int, seed: int = 2) -> bytes:
    """Project-file-like XML interleaved with render-log lines, varied by a seeded generator."""
    rng = random.Random(seed)
    parts: list[bytes] = []
    size = 0
    while size < n:
        clip = (
            f"  <clipitem id='clip-{rng.randrange(10**6)}'><name>A{rng.randrange(999):03d}_"
            f"C{rng.randrange(999):03d}.mov</name><in>{rng.randrange(10**5)}</in>"
            f"<out>{rng.randrange(10**5)}</out></clipitem>\n"
        )
        log = (
            f"2024-05-{rng.randrange(1, 29):02d} 12:{rng.randrange(60):02d}:"
            f"{rng.randrange(60):02d} INFO\trender frame {rng.randrange(10**6)} "
            f"done in {rng.randrange(900)} ms\r\n"
        )
        for line in (clip.encode(), log.encode()):
            parts.append(line)
            size += len(line)
    return b"".join(parts)[:n]


def dpx_like_frame(width: int = 2048, height: int = 64, seed: int = 3) -> bytes:
    """10-bit RGB packed into big-endian 32-bit words (DPX method A): gradients plus noise."""
    rng = np.random.default_rng(seed)
    x = np.arange(width)[None, :]
    y = np.arange(height)[:, None]
    planes = (x * 1023 // width + 0 * y, y * 1023 // height + 0 * x, 512 + 0 * x + 0 * y)
    r, g, b = (
        np.clip(p + rng.integers(-3, 4, size=(height, width)), 0, 1023).astype(np.uint32)
        for p in planes
    )
    words = (r << 22) | (g << 12) | (b << 2)
    packed: bytes = words.astype(">u4").tobytes()
    return packed


def test_random_bytes_are_random_with_ratio_one_from_the_probe_alone() -> None:
    result = analyze(random_bytes(256 * KIB))
    assert result.content_class is ContentClass.RANDOM
    assert result.predicted_ratio == 1.0
    assert result.sample_bytes == PROBE_SIZE
    assert result.entropy is not None and 7.0 < result.entropy <= 8.0


def test_random_bytes_without_entropy_leave_it_unmeasured() -> None:
    result = analyze(random_bytes(256 * KIB), measure_entropy=False)
    assert result == ContentAnalysis(ContentClass.RANDOM, 1.0, None, PROBE_SIZE)


@pytest.mark.parametrize("measure_entropy", [True, False])
def test_xml_and_logs_are_text_and_compress_well(measure_entropy: bool) -> None:
    result = analyze(xml_and_log_text(256 * KIB), measure_entropy=measure_entropy)
    assert result.content_class is ContentClass.TEXT
    assert result.predicted_ratio < 0.6
    assert result.sample_bytes == 16 * KIB
    if measure_entropy:
        assert result.entropy is not None and 3.0 < result.entropy < 7.0
    else:
        assert result.entropy is None


def test_text_detection_agrees_with_and_without_a_histogram() -> None:
    # 90 % printable: below the 95 % line either way.
    rng = random.Random(4)
    mixed = bytearray(xml_and_log_text(64 * KIB))
    for i in rng.sample(range(len(mixed)), len(mixed) // 10):
        mixed[i] = rng.randrange(128, 256)
    with_hist = analyze(mixed, measure_entropy=True)
    without = analyze(mixed, measure_entropy=False)
    assert with_hist.content_class is without.content_class is ContentClass.STRUCTURED
    assert with_hist.predicted_ratio == without.predicted_ratio


@pytest.mark.parametrize(
    "data",
    [bytes(256 * KIB), bytes(range(0x80, 0x90)) * (16 * KIB)],
    ids=["zeros", "16-byte-pattern"],
)
def test_runs_and_patterns_are_repetitive(data: bytes) -> None:
    result = analyze(data)
    assert result.content_class is ContentClass.REPETITIVE
    assert result.predicted_ratio <= 0.25


def test_a_dpx_like_frame_is_structured_and_compressible() -> None:
    result = analyze(dpx_like_frame())
    assert result.content_class in (ContentClass.STRUCTURED, ContentClass.REPETITIVE)
    assert result.predicted_ratio < 0.97


def test_a_random_middle_is_judged_by_the_middle_not_the_header() -> None:
    # A text header in front of random payload (a container): the middle decides.
    data = xml_and_log_text(8 * KIB) + random_bytes(248 * KIB)
    assert analyze(data).content_class is ContentClass.RANDOM


def test_the_window_bounds_the_sample() -> None:
    data = xml_and_log_text(256 * KIB)
    assert analyze(data, window=4 * KIB).sample_bytes == 4 * KIB
    assert analyze(data, window=1 << 30).sample_bytes == 256 * KIB


def test_a_window_larger_than_the_data_takes_it_whole() -> None:
    data = xml_and_log_text(3000)
    result = analyze(data, window=16 * KIB)
    assert result.sample_bytes == 3000
    assert result.content_class is ContentClass.TEXT


def test_data_no_longer_than_the_probe_is_probed_whole() -> None:
    result = analyze(bytes(300))
    assert result.sample_bytes == 300
    assert result.content_class is ContentClass.REPETITIVE


def test_memoryview_and_bytearray_inputs_work() -> None:
    data = xml_and_log_text(64 * KIB)
    expected = analyze(data)
    assert analyze(memoryview(data)) == expected
    assert analyze(bytearray(data)) == expected
    # A non-byte format (e.g. a numpy array's buffer) is read as its bytes.
    words = np.frombuffer(data, dtype=np.uint32)
    assert words.data.format == "I"
    assert analyze(words.data) == expected


@pytest.mark.parametrize("size", [0, 1, MIN_ANALYSIS_SIZE - 1])
def test_short_data_is_random_with_ratio_one(size: int) -> None:
    result = analyze(bytes(size), measure_entropy=False)
    assert result == ContentAnalysis(ContentClass.RANDOM, 1.0, None, size)


def test_a_zero_window_is_refused() -> None:
    with pytest.raises(ValueError, match="window"):
        analyze(bytes(1024), window=0)


def test_entropy_of_uniform_random_bytes_is_near_eight() -> None:
    assert 7.9 < shannon_entropy(random_bytes(64 * KIB)) <= 8.0


def test_entropy_of_every_value_equally_often_is_exactly_eight() -> None:
    assert shannon_entropy(bytes(range(256)) * 4) == pytest.approx(8.0, abs=1e-12)


def test_entropy_of_a_constant_buffer_is_zero() -> None:
    assert shannon_entropy(b"\x07" * 4096) == 0.0


def test_entropy_of_two_equiprobable_values_is_one_bit() -> None:
    assert shannon_entropy(b"ab" * 2048) == pytest.approx(1.0, abs=1e-12)


def test_entropy_of_empty_data_is_zero() -> None:
    assert shannon_entropy(b"") == 0.0


def test_entropy_reads_memoryviews_and_slices_in_place() -> None:
    data = bytearray(b"\x00" * 100 + b"ab" * 50)
    assert shannon_entropy(memoryview(data)[100:]) == pytest.approx(1.0, abs=1e-12)
    assert shannon_entropy(memoryview(data)[:100]) == 0.0

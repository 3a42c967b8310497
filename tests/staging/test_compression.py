"""The wire-compression decision: the issue's cost rule, levels, stored chunks, calibration."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import zstandard

from dits.staging.analysis import ContentAnalysis, ContentClass, analyze
from dits.staging.compression import (
    CompressionModel,
    LevelProfile,
    WireChoice,
    accuracy,
    calibration_sample,
    choose,
    machine_model,
)

MB = 1_000_000

# Shaped like a calibration on this machine (bytes/s per thread; ratio relative to level 1).
TYPICAL = CompressionModel(
    levels=(
        LevelProfile(1, 370 * MB, 1.0),
        LevelProfile(3, 150 * MB, 0.85),
        LevelProfile(6, 48 * MB, 0.815),
        LevelProfile(9, 30 * MB, 0.80),
        LevelProfile(12, 20 * MB, 0.79),
        LevelProfile(16, 3.3 * MB, 0.74),
    ),
    decompress_speed=780 * MB,
)

# One level at 100 MB/s: compressing costs 0.01 s per MB on one thread.
ONE_LEVEL = CompressionModel(levels=(LevelProfile(1, 100 * MB, 1.0),), decompress_speed=500 * MB)


def analysis(ratio: float, content_class: ContentClass = ContentClass.TEXT) -> ContentAnalysis:
    return ContentAnalysis(content_class, ratio, None, 16384)


def text_chunk(n: int = 256 * 1024) -> bytes:
    rng = random.Random(9)
    lines = (
        f"<clip id='{rng.randrange(10**6)}' in='{rng.randrange(10**5)}' "
        f"name='A{rng.randrange(999):03d}'/>\n"
        for _ in range(n // 20)
    )
    return "".join(lines).encode()[:n]


@pytest.mark.parametrize("bandwidth", [None, 1e3, 1 * MB, 100 * MB, 10_000 * MB])
@pytest.mark.parametrize("workers", [1, 64])
def test_random_content_is_never_compressed(bandwidth: float | None, workers: int) -> None:
    random_chunk = random.Random(1).randbytes(256 * 1024)
    choice = choose(TYPICAL, analyze(random_chunk), bandwidth=bandwidth, workers=workers)
    assert choice.level is None
    assert choice.predicted_ratio == 1.0
    assert choice.reason == "incompressible"


def test_text_on_a_slow_link_compresses_at_a_high_level() -> None:
    text = analyze(text_chunk())
    assert text.content_class is ContentClass.TEXT
    choice = choose(TYPICAL, text, bandwidth=1 * MB, workers=2)
    assert choice.level is not None and choice.level >= 6
    assert choice.reason == f"compress level {choice.level}"
    assert choice.predicted_ratio == pytest.approx(
        text.predicted_ratio * TYPICAL.ratio_scale(choice.level)
    )
    assert choice.seconds_per_mb_chosen < choice.seconds_per_mb_raw
    fast = choose(TYPICAL, text, bandwidth=100 * MB, workers=2)
    assert fast.level is not None and fast.level < choice.level


def test_the_level_chosen_is_the_cheapest_one() -> None:
    choice = choose(TYPICAL, analysis(0.4), bandwidth=1 * MB, workers=1)
    costs = {p.level: MB / p.speed + MB * 0.4 * p.ratio_scale / (1 * MB) for p in TYPICAL.levels}
    assert choice.level == min(costs, key=costs.__getitem__)
    assert choice.seconds_per_mb_chosen == pytest.approx(min(costs.values()))


def test_nothing_compresses_on_a_link_faster_than_compression() -> None:
    slow = CompressionModel((LevelProfile(1, 50 * MB, 1.0), LevelProfile(9, 5 * MB, 0.7)), 1e9)
    choice = choose(slow, analysis(0.3), bandwidth=10_000 * MB, workers=2)
    assert choice == WireChoice(None, 1.0, 0.0001, 0.0001, "link faster than compression pays")


def test_the_break_even_bandwidth_is_the_issues_rule() -> None:
    # Ratio 0.5 at 100 MB/s on one thread: 0.01 s + 0.5 MB / bw < 1 MB / bw  <=>  bw < 50 MB/s.
    below = choose(ONE_LEVEL, analysis(0.5), bandwidth=49.9 * MB, workers=1)
    above = choose(ONE_LEVEL, analysis(0.5), bandwidth=50.1 * MB, workers=1)
    assert below.level == 1
    assert below.seconds_per_mb_chosen == pytest.approx(0.01 + 0.5 / 49.9)
    assert below.seconds_per_mb_raw == pytest.approx(1 / 49.9)
    assert above.level is None
    assert above.seconds_per_mb_raw == above.seconds_per_mb_chosen == pytest.approx(1 / 50.1)


def test_more_workers_make_compression_pay_on_a_faster_link() -> None:
    # 4 threads: 0.0025 s per MB, so the break-even moves from 50 MB/s to 200 MB/s.
    assert choose(ONE_LEVEL, analysis(0.5), bandwidth=100 * MB, workers=1).level is None
    assert choose(ONE_LEVEL, analysis(0.5), bandwidth=100 * MB, workers=4).level == 1
    assert choose(ONE_LEVEL, analysis(0.5), bandwidth=201 * MB, workers=4).level is None


def test_predicted_ratios_are_capped_at_one() -> None:
    model = CompressionModel((LevelProfile(1, 1e12, 1.0), LevelProfile(3, 1e12, 1.2)), 1e12)
    choice = choose(model, analysis(0.9, ContentClass.STRUCTURED), bandwidth=MB, workers=1)
    assert choice.level == 1
    assert choice.predicted_ratio == 0.9
    flat = choose(model, analysis(1.0, ContentClass.STRUCTURED), bandwidth=MB, workers=1)
    assert flat.level is None and flat.predicted_ratio == 1.0


def test_a_stored_chunk_goes_as_stored_when_recompressing_does_not_pay() -> None:
    choice = choose(TYPICAL, analysis(0.4), bandwidth=100 * MB, workers=2, stored_ratio=0.35)
    assert choice.level is None
    assert choice.predicted_ratio == 0.35
    assert choice.reason == "as stored"
    assert choice.seconds_per_mb_chosen == choice.seconds_per_mb_raw == pytest.approx(0.35 / 100)


def test_a_poorly_stored_chunk_is_recompressed_on_a_slow_link_paying_decompression() -> None:
    choice = choose(ONE_LEVEL, analysis(0.3), bandwidth=1 * MB, workers=1, stored_ratio=0.9)
    assert choice.level == 1
    assert choice.predicted_ratio == 0.3
    # decompress 1/500 s + compress 1/100 s + 0.3 MB at 1 MB/s
    assert choice.seconds_per_mb_chosen == pytest.approx(0.002 + 0.01 + 0.3)
    assert choice.seconds_per_mb_raw == pytest.approx(0.9)


def test_decompression_can_tip_a_stored_chunk_to_as_stored() -> None:
    # Without the decompression (0.05 s/MB) level 1 would win: 0.01 + 0.3/10 = 0.04 < 0.045.
    model = CompressionModel((LevelProfile(1, 100 * MB, 1.0),), decompress_speed=20 * MB)
    choice = choose(model, analysis(0.3), bandwidth=10 * MB, workers=1, stored_ratio=0.45)
    assert choice.level is None and choice.reason == "as stored"
    fresh = choose(model, analysis(0.3), bandwidth=10 * MB, workers=1)
    assert fresh.level == 1


def test_without_bandwidth_level_one_is_used_when_it_pays() -> None:
    reason = "no bandwidth measured: level 1 when it pays"
    good = choose(TYPICAL, analysis(0.5), bandwidth=None, workers=2)
    assert good == WireChoice(1, 0.5, 0.0, MB / (370 * MB * 2), reason)
    poor = choose(TYPICAL, analysis(0.96, ContentClass.STRUCTURED), bandwidth=None, workers=2)
    assert poor == WireChoice(None, 1.0, 0.0, 0.0, reason)


def test_without_bandwidth_a_stored_chunk_goes_as_stored() -> None:
    choice = choose(TYPICAL, analysis(0.3), bandwidth=None, workers=1, stored_ratio=0.4)
    assert choice == WireChoice(None, 0.4, 0.0, 0.0, "as stored")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bandwidth": MB, "workers": 0}, "workers"),
        ({"bandwidth": -5.0, "workers": 1}, "bandwidth"),
        ({"bandwidth": float("nan"), "workers": 1}, "bandwidth"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        choose(TYPICAL, analysis(0.5), **kwargs)  # type: ignore[arg-type]


def test_a_stalled_link_gets_the_smallest_output() -> None:
    choice = choose(TYPICAL, analysis(0.4), bandwidth=0.0, workers=1)
    assert choice.level == 16
    assert choice.predicted_ratio == pytest.approx(0.4 * 0.74)


def scripted_clock(*durations: float) -> Iterator[float]:
    """Timestamps so that consecutive (start, end) pairs measure ``durations`` in order."""
    stamps: list[float] = []
    now = 100.0
    for duration in durations:
        stamps += [now, now + duration]
        now += duration + 1.0
    return iter(stamps)


def test_calibrate_keeps_the_best_of_the_repeats_from_the_injected_clock() -> None:
    sample = calibration_sample(256 * 1024)
    ticks = scripted_clock(
        *(0.02, 0.01, 0.03),  # level 1
        *(0.05, 0.04, 0.06),  # level 3
        *(0.002, 0.001, 0.004),  # decompression
    )
    model = CompressionModel.calibrate(sample, levels=(3, 1), clock=lambda: next(ticks), repeats=3)
    assert next(ticks, None) is None  # every timestamp was used: two clock reads per timing
    assert [p.level for p in model.levels] == [1, 3]
    assert model.profile(1).speed == pytest.approx(len(sample) / 0.01)
    assert model.profile(3).speed == pytest.approx(len(sample) / 0.04)
    assert model.decompress_speed == pytest.approx(len(sample) / 0.001)
    assert model.ratio_scale(1) == 1.0
    expected = len(zstandard.ZstdCompressor(level=3).compress(sample)) / len(
        zstandard.ZstdCompressor(level=1).compress(sample)
    )
    assert model.ratio_scale(3) == pytest.approx(expected, rel=0.01)
    assert model.ratio_scale(3) < 1.0


def test_calibrate_uses_level_one_as_the_baseline_even_when_not_listed() -> None:
    sample = calibration_sample(64 * 1024)
    ticks = scripted_clock(0.01, 0.001)
    model = CompressionModel.calibrate(sample, levels=(6,), clock=lambda: next(ticks), repeats=1)
    assert [p.level for p in model.levels] == [6]
    assert model.ratio_scale(6) < 1.0


def test_calibrate_refuses_a_clock_that_does_not_move() -> None:
    with pytest.raises(ValueError, match="clock"):
        CompressionModel.calibrate(calibration_sample(4096), levels=(1,), clock=lambda: 5.0)


def test_the_calibration_sample_is_fixed_and_compressible() -> None:
    sample = calibration_sample()
    assert len(sample) == 1 << 20
    assert sample == calibration_sample()
    assert len(zstandard.ZstdCompressor(level=1).compress(sample)) < 0.6 * len(sample)


def test_the_machine_model_is_calibrated_once_on_real_zstd() -> None:
    model = machine_model()
    assert machine_model() is model
    assert [p.level for p in model.levels] == [1, 3, 6, 9, 12, 16]
    assert model.profile(1).speed > model.profile(16).speed
    assert model.ratio_scale(1) == 1.0
    assert model.ratio_scale(16) < 1.0
    assert model.decompress_speed > 0


def test_a_missing_level_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        TYPICAL.profile(2)


@pytest.mark.parametrize(
    ("predicted", "actual", "expected"),
    [(0.5, 0.5, 1.0), (0.45, 0.5, 0.9), (0.6, 0.5, 0.8), (1.0, 0.3, 0.0), (0.5, 0.0, 0.0)],
)
def test_accuracy_is_one_minus_the_relative_error_clipped(
    predicted: float, actual: float, expected: float
) -> None:
    assert accuracy(predicted, actual) == pytest.approx(expected)


def test_overlapped_staging_spends_idle_cpu_on_a_stronger_level() -> None:
    # 2 workers, link 20 MB/s, level-1 ratio 0.5. Per MB: level 1 costs 0.005 s CPU and
    # 0.025 s wire; level 9 (25 MB/s per thread, 0.8x) 0.02 s CPU and 0.02 s wire.
    model = CompressionModel(
        (LevelProfile(1, 100 * MB, 1.0), LevelProfile(9, 25 * MB, 0.8)), decompress_speed=1e9
    )
    seq = choose(model, analysis(0.5), bandwidth=20 * MB, workers=2)
    pipe = choose(model, analysis(0.5), bandwidth=20 * MB, workers=2, overlap=True)
    assert seq.level == 1  # 0.030 s < 0.040 s in total
    assert pipe.level == 9  # max(0.020, 0.020) < max(0.005, 0.025): the link sets the pace
    # Overlap never admits a level the issue's rule refuses: on a 1 GB/s link nothing pays.
    fast = choose(model, analysis(0.5), bandwidth=1000 * MB, workers=2, overlap=True)
    assert fast.level is None

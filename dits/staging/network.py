"""Link throughput, RTT, loss and trend, estimated from acknowledgements with time passed in.

This module owns ``NetworkMonitor``, the sans-IO estimator staging asks "how fast will the link
be over the next few seconds?". It never reads the clock or the network: the engine reports
what happened (``record_acked``, ``record_transport``, ``mark_busy``/``mark_idle``) with the
``now`` it read, and asks ``estimate(now)``. It is not thread-safe; the engine serialises calls.

Theory of operation
-------------------
Only *busy* time counts. Between ``mark_idle`` and the next ``mark_busy`` the link had nothing
to send, so that time measures the sender, not the link, and is left out: throughput does not
sag while the user is not pushing. (An ack may say when its put started, ``busy_since``, for
callers that do not mark busy and idle themselves.)

Busy time is cut into slices of about ``window / 8``. A slice closes at the first ack after its
busy time reaches that length (acks are discrete: closing between acks would give empty and
overfull slices), and its rate is its acknowledged bytes over its busy seconds. Slice rates
feed an exponentially weighted moving average whose time constant is ``window`` busy seconds
(weight ``1 - exp(-slice_busy / window)``), so the estimate forgets at the same pace whatever
the ack size. A slice still open when ``estimate`` is asked counts provisionally once it is
longer than a slice: a stalled link (busy, no acks) then drags the estimate down instead of
freezing it at the last good value.

Level shifts: after ``SHIFT_SLICES`` (3) consecutive slices all more than ``SHIFT_FACTOR``
(1.5x) above, or all below, the smoothed rate, the smoothed rate jumps to their median and the
trend history restarts. The EWMA alone would need ~0.8 window to get halfway to a new level, and
a line fitted through a step extrapolates it as a ramp (to the 10 % floor after a drop). Noise
that trips this takes three same-side slices off by 1.5x, which is volatility, not noise. A very
steep ramp (doubling within a window) also trips it and is tracked as a series of levels.

Trend is read from the slice rates since the last level shift, at most the last
``TREND_SLICES`` (8), against their busy-time positions. A least-squares line gives the slope.
VOLATILE means the coefficient of variation of the rates *about that line* exceeds 0.5: the
plain coefficient of variation would call every ramp volatile, and ramps are what prediction
is for (alternating 10/100 MB/s is 0.8 either way). A slope within two standard errors of flat
is STABLE (noise alone otherwise reads as a trend ~30 % of the time at 30 % ack jitter).
Otherwise IMPROVING or DEGRADING when the line moves the rate by more than 15 % of the mean
over the horizon, else STABLE. Fewer than 3 slices: UNKNOWN. The horizon is the window, but
never longer than the history reaches back: three noisy slices extrapolated over a whole
window turn 5 % noise into a 30 % "trend".

Prediction: ``predicted = smoothed + slope * horizon``, at least 10 % of ``smoothed`` and at
most the fastest slice of the history (never promise a rate the link has not just shown); just
``smoothed`` when prediction is off or the trend is VOLATILE or UNKNOWN. Reaction time with the
default 2 s window and an ack every 50 ms (tests/staging/test_network.py): after a step from 50
to 5 MB/s the prediction is below 25 MB/s within 0.35-0.6 s, and after 5 -> 50 MB/s above 25
MB/s within 0.6 s; with an ack every 200 ms, 0.8 and 1.2 s. The EWMA alone needs ~1.6 s.

RTT is smoothed per sample with gain 1/8 (RFC 6298's SRTT). Loss rate is lost / sent packets
over the last ``window`` seconds, from the transport's cumulative counters; a counter that goes
backwards (a new connection) restarts the count.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

__all__ = [
    "RTT_GAIN",
    "TREND_SLICES",
    "NetworkEstimate",
    "NetworkMonitor",
    "Trend",
]

SLICES_PER_WINDOW: Final = 8
TREND_SLICES: Final = 8
MIN_TREND_SLICES: Final = 3
VOLATILE_CV: Final = 0.5
TREND_CHANGE: Final = 0.15
"""Relative change of the rate over one window beyond which the trend is not STABLE."""
TREND_T: Final = 2.0
"""A slope counts only beyond this many standard errors (a t-test at roughly 90 %)."""
MIN_PREDICTED_FRACTION: Final = 0.1
SHIFT_SLICES: Final = 3
SHIFT_FACTOR: Final = 1.5
"""A slice rate this many times above or below the smoothed rate is off-level."""
RTT_GAIN: Final = 1 / 8


class Trend(StrEnum):
    """Where the link's throughput is heading."""

    UNKNOWN = "unknown"
    IMPROVING = "improving"
    DEGRADING = "degrading"
    STABLE = "stable"
    VOLATILE = "volatile"


@dataclass(frozen=True)
class NetworkEstimate:
    """What the monitor knows at one moment.

    Attributes:
        throughput: smoothed acknowledged bytes per busy second; None before the first slice.
        predicted: bytes/s expected over the next prediction window; None with throughput.
        rtt: smoothed round-trip time in seconds; None before the transport reports one.
        loss_rate: lost / sent packets over the last window; None without counters.
        trend: where throughput is heading.
        samples: slice rates measured so far.
    """

    throughput: float | None
    predicted: float | None
    rtt: float | None
    loss_rate: float | None
    trend: Trend
    samples: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``trend`` as its lower-case name)."""
        return {
            "throughput": self.throughput,
            "predicted": self.predicted,
            "rtt": self.rtt,
            "loss_rate": self.loss_rate,
            "trend": self.trend.value,
            "samples": self.samples,
        }


class NetworkMonitor:
    """Estimates link throughput and its trend from acknowledged bytes over busy time.

    Args:
        window: seconds of busy time the estimate smooths over, and how far ahead the trend is
            extrapolated (``staging.network_prediction_window``).
        predict: extrapolate the trend; False makes ``predicted`` equal ``throughput``
            (``staging.enable_network_prediction``).

    Raises:
        ValueError: ``window`` is not above 0.
    """

    def __init__(self, window: float = 2.0, *, predict: bool = True) -> None:
        if not window > 0:
            raise ValueError(f"prediction window must be above 0 seconds, got {window}")
        self.window = window
        self.predict = predict
        self._slice_length = window / SLICES_PER_WINDOW
        self._busy = False
        self._last = -math.inf  # when busy time was last accounted
        self._busy_total = 0.0  # busy seconds since the start, the trend's x axis
        self._slice_bytes = 0
        self._slice_busy = 0.0
        self._smoothed: float | None = None
        self._rates: deque[tuple[float, float]] = deque(maxlen=TREND_SLICES)
        self._samples = 0
        self._off_level: list[float] = []  # consecutive off-level rates, all on one side
        self._off_side = 0
        self._rtt: float | None = None
        self._counters: deque[tuple[float, int, int]] = deque()

    # -- what happened ----------------------------------------------------------------------

    def mark_busy(self, now: float) -> None:
        """The sender has data in flight from ``now`` on; no-op when already busy."""
        if not self._busy:
            self._busy = True
            self._last = max(now, self._last)

    def mark_idle(self, now: float) -> None:
        """The sender has nothing in flight from ``now`` on; later time is not counted."""
        self._account(now)
        self._busy = False

    def record_acked(self, now: float, nbytes: int, *, busy_since: float | None = None) -> None:
        """The server acknowledged ``nbytes`` (a completed put) at ``now``.

        Busy time comes from ``mark_busy``/``mark_idle``; an ack does not change that state.
        An ack that arrives while idle (the engine marks idle when its last put returns, then
        records it) adds its bytes to the busy time already counted, unless ``busy_since`` says
        when its put started: then the time since (but not before the last ``mark_idle``)
        counts as busy too, for a caller that does not mark busy and idle itself.

        Args:
            now: when the acknowledgement arrived.
            nbytes: bytes acknowledged (at least 0).
            busy_since: when the acknowledged put started; used only while idle.

        Raises:
            ValueError: ``nbytes`` is negative.
        """
        if nbytes < 0:
            raise ValueError(f"acknowledged bytes must be at least 0, got {nbytes}")
        if self._busy:
            self._account(now)
        elif busy_since is not None:
            self.mark_busy(min(busy_since, now))
            self.mark_idle(now)
        self._slice_bytes += nbytes
        if self._slice_busy >= self._slice_length:
            self._close_slice()

    def record_transport(
        self,
        now: float,
        *,
        rtt: float | None,
        packets_sent: int | None = None,
        packets_lost: int | None = None,
    ) -> None:
        """The transport's view at ``now``: an RTT sample and cumulative packet counters.

        Args:
            now: when the figures were read.
            rtt: latest round-trip time in seconds; None when the transport has none.
            packets_sent: packets sent on the connection so far (cumulative).
            packets_lost: packets declared lost so far (cumulative).
        """
        if rtt is not None and rtt >= 0:
            self._rtt = rtt if self._rtt is None else self._rtt + RTT_GAIN * (rtt - self._rtt)
        if packets_sent is None or packets_lost is None:
            return
        if self._counters:
            _, last_sent, last_lost = self._counters[-1]
            if packets_sent < last_sent or packets_lost < last_lost:
                self._counters.clear()  # counters went backwards: a new connection
        self._counters.append((now, packets_sent, packets_lost))
        # Keep one sample at or before the window's start as the baseline.
        while len(self._counters) > 1 and self._counters[1][0] <= now - self.window:
            self._counters.popleft()

    # -- what it means ----------------------------------------------------------------------

    def estimate(self, now: float) -> NetworkEstimate:
        """The estimate at ``now`` (does not change the monitor's state).

        Args:
            now: the current time, on the clock the records used.
        """
        throughput = self._smoothed
        open_busy = self._slice_busy + (max(now - self._last, 0.0) if self._busy else 0.0)
        if open_busy >= self._slice_length:  # a long slice without its closing ack: a stall?
            throughput = self._blend(throughput, self._slice_bytes / open_busy, open_busy)
        trend, change = self._trend()
        predicted = throughput
        if throughput is not None and self.predict and trend not in _NO_EXTRAPOLATION:
            # Never faster than any slice of the last window, never below 10 % of the level.
            ceiling = max(throughput, *(rate for _, rate in self._rates))
            extrapolated = throughput + change
            predicted = min(max(extrapolated, throughput * MIN_PREDICTED_FRACTION), ceiling)
        return NetworkEstimate(
            throughput, predicted, self._rtt, self._loss_rate(), trend, self._samples
        )

    # -- internals --------------------------------------------------------------------------

    def _account(self, now: float) -> None:
        if self._busy:
            elapsed = max(now - self._last, 0.0)
            self._slice_busy += elapsed
            self._busy_total += elapsed
        self._last = max(now, self._last)

    def _close_slice(self) -> None:
        rate = self._slice_bytes / self._slice_busy
        before = self._smoothed
        self._smoothed = self._blend(before, rate, self._slice_busy)
        self._rates.append((self._busy_total, rate))
        self._samples += 1
        self._slice_bytes = 0
        self._slice_busy = 0.0
        if before is not None:
            self._track_level_shift(rate, before)

    def _track_level_shift(self, rate: float, smoothed: float) -> None:
        """Jump to a new level after ``SHIFT_SLICES`` off-level slices on the same side."""
        side = 1 if rate > smoothed * SHIFT_FACTOR else -1 if rate * SHIFT_FACTOR < smoothed else 0
        if side == 0 or side != self._off_side:
            self._off_level.clear()
        self._off_side = side
        if side == 0:
            return
        self._off_level.append(rate)
        if len(self._off_level) >= SHIFT_SLICES:
            # The EWMA alone would take ~0.8 window to cross halfway to a new level, and a line
            # through the step would extrapolate it as a ramp: start a new regime instead. The
            # median ignores the first off-level slice, which often straddles the step.
            self._smoothed = statistics.median(self._off_level)
            self._rates.clear()
            self._off_level.clear()
            self._off_side = 0

    def _blend(self, smoothed: float | None, rate: float, busy: float) -> float:
        if smoothed is None:
            return rate
        return smoothed + (1.0 - math.exp(-busy / self.window)) * (rate - smoothed)

    def _trend(self) -> tuple[Trend, float]:
        """The trend, and the rate change it predicts over the coming window (bytes/s)."""
        if len(self._rates) < MIN_TREND_SLICES:
            return Trend.UNKNOWN, 0.0
        xs = [x for x, _ in self._rates]
        ys = [y for _, y in self._rates]
        n = len(ys)
        mean_x = sum(xs) / n
        mean_y = sum(ys) / n
        sxx = sum((x - mean_x) ** 2 for x in xs)
        if mean_y <= 0 or sxx <= 0:
            return Trend.STABLE, 0.0
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx
        residuals = [y - (mean_y + slope * (x - mean_x)) for x, y in zip(xs, ys, strict=True)]
        squares = sum(r * r for r in residuals)
        if math.sqrt(squares / n) / mean_y > VOLATILE_CV:
            return Trend.VOLATILE, 0.0
        if n > 2 and abs(slope) <= TREND_T * math.sqrt(squares / (n - 2) / sxx):
            return Trend.STABLE, 0.0  # the slope is within noise of flat
        # Look no further ahead than the history reaches back: three noisy slices (0.75 s)
        # extrapolated over a whole 2 s window turn 5 % noise into a 30 % "trend".
        change = slope * min(self.window, xs[-1] - xs[0])
        if change > TREND_CHANGE * mean_y:
            return Trend.IMPROVING, change
        if change < -TREND_CHANGE * mean_y:
            return Trend.DEGRADING, change
        return Trend.STABLE, change

    def _loss_rate(self) -> float | None:
        if len(self._counters) < 2:
            return None
        _, first_sent, first_lost = self._counters[0]
        _, last_sent, last_lost = self._counters[-1]
        sent = last_sent - first_sent
        if sent <= 0:
            return None
        return min((last_lost - first_lost) / sent, 1.0)


_NO_EXTRAPOLATION: Final = frozenset({Trend.UNKNOWN, Trend.VOLATILE})

"""Shaft speed from a tachometer channel (one or more pulses per revolution), chunk by chunk.

`TachoCounter.feed(x)` finds the rising edges of the pulse train across chunk boundaries: the
middle between the running low and high levels is crossed, with hysteresis so noise on a flank
counts once, and edges seen before the pulse height was known are forgotten. `shaft_hz` is the
mean rate of the edges of the last `span_s` seconds divided by the pulses per revolution; None
until two edges were seen, or when none came for `timeout_s`.
"""

from __future__ import annotations

from collections import deque

import numpy as np

HYSTERESIS = 0.2  # of the pulse height: a rising edge crosses mid + h, re-arms below mid - h
LEVEL_MEMORY_S = 10.0  # the low and high levels forget a level this slowly (whatever the chunks)


class TachoCounter:
    """Rising edges of a tachometer pulse train -> shaft speed (Hz)."""

    def __init__(
        self,
        sample_rate_hz: int,
        pulses_per_rev: int = 1,
        span_s: float = 1.0,
        timeout_s: float = 2.0,
    ) -> None:
        if sample_rate_hz <= 0 or pulses_per_rev < 1 or span_s <= 0 or timeout_s <= 0:
            raise ValueError(
                "TachoCounter needs sample_rate_hz > 0, pulses_per_rev >= 1, span_s > 0 and "
                f"timeout_s > 0; got {sample_rate_hz=}, {pulses_per_rev=}, {span_s=}, {timeout_s=}"
            )
        self.fs, self.pulses = int(sample_rate_hz), int(pulses_per_rev)
        self.span, self.timeout = int(span_s * sample_rate_hz), int(timeout_s * sample_rate_hz)
        self._edges: deque[int] = deque()  # sample index of each rising edge
        self._seen = 0  # samples fed so far
        self._low: float | None = None
        self._high: float | None = None
        self._armed = True

    def feed(self, x: np.ndarray) -> None:
        """The next samples of the tachometer channel (any unit)."""
        x = np.asarray(x, dtype=np.float64)
        if not len(x) or not np.isfinite(x).all():
            self._seen += len(x)
            return
        lo, hi = float(x.min()), float(x.max())
        height = None if self._low is None or self._high is None else self._high - self._low
        keep = float(np.exp(-len(x) / (LEVEL_MEMORY_S * self.fs)))  # levels fade over seconds
        self._low = lo if self._low is None else min(lo, keep * self._low + (1 - keep) * lo)
        self._high = hi if self._high is None else max(hi, keep * self._high + (1 - keep) * hi)
        if height is not None and self._high - self._low > 2 * height:
            self._edges.clear()  # the first pulse after noise alone: earlier "edges" were noise
        mid, h = (self._low + self._high) / 2, HYSTERESIS * (self._high - self._low)
        if h <= 0:
            self._seen += len(x)
            return
        side = np.where(x > mid + h, 1, np.where(x < mid - h, -1, 0))  # high / low / on a flank
        off = np.flatnonzero(side)
        if len(off):
            levels = side[off]
            before = np.concatenate([[-1 if self._armed else 1], levels[:-1]])
            self._edges.extend((self._seen + off[(levels == 1) & (before == -1)]).tolist())
            self._armed = bool(levels[-1] == -1)
        self._seen += len(x)
        while self._edges and self._edges[0] < self._seen - self.span:
            self._edges.popleft()

    @property
    def shaft_hz(self) -> float | None:
        if len(self._edges) < 2 or self._seen - self._edges[-1] > self.timeout:
            return None
        intervals = (self._edges[-1] - self._edges[0]) / (len(self._edges) - 1)
        return self.fs / intervals / self.pulses

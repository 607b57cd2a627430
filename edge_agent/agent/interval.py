"""Per-telemetry-interval accounting of the agent: window statistics, inference times, CPU.

One `IntervalStats` lives for one telemetry interval; `summary()` closes it. Fixed-size numpy
state, nothing allocated per window.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

TIMING_RING = 4096  # per-batch inference times kept for the p99


class IntervalStats:
    """Accumulates from `start()` until `summary()`; times are monotonic seconds."""

    def __init__(self) -> None:
        self._timing = np.zeros(TIMING_RING)
        self.start(time.monotonic(), 0)

    def start(self, now: float, windows_total: int) -> None:
        self.began, self._cpu = now, time.process_time()
        self._windows_at_start = windows_total
        self._n, self._rms2, self._peak, self._crest, self._kurtosis = 0, 0.0, 0.0, 0.0, 0.0
        self._timed = 0  # batches timed this interval

    def add_window(self, stats: dict[str, float]) -> None:
        """Fold in one window's sanity statistics (rms, peak, crest_factor, kurtosis)."""
        self._n += 1
        self._rms2 += stats["rms"] ** 2
        self._peak = max(self._peak, stats["peak"])
        self._crest += stats["crest_factor"]
        self._kurtosis += stats["kurtosis"]

    def add_inference(self, ms_per_window: float) -> None:
        self._timing[self._timed % TIMING_RING] = ms_per_window
        self._timed += 1

    def summary(self, now: float, windows_total: int) -> dict[str, Any]:
        """Means over the interval: signal level, inference ms (mean, p99), windows/s, CPU %."""
        wall = max(now - self.began, 1e-6)
        times = self._timing[: min(self._timed, TIMING_RING)]
        n = max(self._n, 1)
        return {
            "rms_g": math.sqrt(self._rms2 / n),
            "peak_g": self._peak,
            "crest_factor": self._crest / n,
            "kurtosis": self._kurtosis / n,
            "inference_ms": float(times.mean()) if len(times) else 0.0,
            "inference_ms_p99": float(np.percentile(times, 99)) if len(times) else 0.0,
            "windows_per_s": (windows_total - self._windows_at_start) / wall,
            "cpu_percent": 100.0 * (time.process_time() - self._cpu) / wall,
        }

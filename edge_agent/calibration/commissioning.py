"""This device's own normal: learned after installation, then the yardstick for every window.

A bundle's reference statistics describe the training fleet; a gateway on another machine sits
outside that cloud from day one, so drift against it says "foreign machine", not "degrading
machine". Commissioning learns the device's own baseline instead: for `period_s` after install
(or after the operator's `commission` command) the raw encoder embedding of every
non-overlapping sensor-valid window (the caller strides) goes into a running mean and
covariance. Once the period is over and at least `min_windows` were seen, the baseline is
stored in
`state_dir/baseline.npz` (atomic; raw encoder space, so head calibrations do not invalidate it;
a new bundle model version does) and a `DriftMonitor` scores the recent windows against it,
whatever class the head gives them.

The open-set scores of the same windows set this device's own `unknown_above`: windows of a
machine the model never saw sit farther from the training classes than the training windows
did, so the bundle's threshold alone would call the device's own normal "unknown". The device's
threshold is `UNKNOWN_MARGIN` x the `UNKNOWN_QUANTILE` of its commissioning scores.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.calibration.drift import DriftMonitor, DriftReading
from edge_agent.contract.bundle import ClassStats
from edge_agent.contract.durable import atomic_write

logger = logging.getLogger(__name__)

BASELINE_FILE = "baseline.npz"
UNKNOWN_QUANTILE = 0.995
UNKNOWN_MARGIN = 1.2
DEVICE = "device-baseline"  # the monitor's one "class"


@dataclass(frozen=True)
class Baseline:
    """Mean (D,), covariance (D, D) and window count of this device's commissioning period."""

    mean: np.ndarray
    cov: np.ndarray
    count: int
    model_version: str
    created: float  # unix time
    unknown_above: float | None = None  # this device's open-set threshold

    def stats(self) -> ClassStats:
        return ClassStats(count=self.count, mean=self.mean.tolist(), cov=self.cov.tolist())


class Commissioning:
    """Learn the baseline, then score drift on every window against it.

    `feed(emb, t)` takes each sensor-valid window's raw embedding (D,) and its end time (s);
    it returns a DriftReading once a baseline exists and the monitor's ring is full, else None.
    """

    def __init__(
        self,
        folder: Path,
        model_version: str,
        dim: int,
        *,
        period_s: float = 600.0,
        min_windows: int = 100,
        drift_window: int = 200,
        threshold: float = 2.0,
    ) -> None:
        if period_s <= 0 or min_windows < 2 or drift_window < 2:
            raise ValueError(
                "Commissioning needs period_s > 0, min_windows >= 2, drift_window >= 2; got "
                f"{period_s=}, {min_windows=}, {drift_window=}"
            )
        self.path = Path(folder) / BASELINE_FILE
        self.model_version, self.dim = model_version, int(dim)
        self.period_s, self.min_windows = float(period_s), int(min_windows)
        self.drift_window, self.threshold = int(drift_window), float(threshold)
        self.baseline: Baseline | None = None
        self.monitor: DriftMonitor | None = None
        self.started_at: float | None = None  # window time the learning period began
        self._learning = False
        self._reset_sums()
        self._load()

    # ---- state -------------------------------------------------------------------------------

    @property
    def learning(self) -> bool:
        return self._learning

    def start(self) -> None:
        """(Re)start learning from the next window (the old baseline is used until replaced)."""
        self._learning, self.started_at = True, None
        self._reset_sums()
        logger.info(
            "commissioning: learning this device's normal for %.0f s (at least %d windows)",
            self.period_s, self.min_windows,
        )  # fmt: skip

    def progress(self) -> dict[str, object]:
        """For the status command and telemetry: what is known and what is being learned."""
        return {
            "baseline_windows": self.baseline.count if self.baseline else 0,
            "baseline_utc": self.baseline.created if self.baseline else None,
            "learning": self.learning,
            "learned_windows": self._n,
        }

    # ---- windows -----------------------------------------------------------------------------

    def feed(
        self, emb: np.ndarray, t: float, unknown_score: float | None = None
    ) -> DriftReading | None:
        """One non-overlapping valid window's raw embedding (D,) at window-end time t (s), and
        its open-set score when the bundle has one."""
        x = np.asarray(emb, dtype=np.float64)
        if self.learning:
            if unknown_score is not None:
                self._scores.append(float(unknown_score))
            self._learn(x, t)
        if self.monitor is None:
            return None
        return self.monitor.update(x)

    def _learn(self, x: np.ndarray, t: float) -> None:
        if self.started_at is None:
            self.started_at = t
        self._n += 1
        self._sum += x
        self._outer += np.outer(x, x)
        if t - self.started_at >= self.period_s and self._n >= self.min_windows:
            mean = self._sum / self._n
            cov = (self._outer - self._n * np.outer(mean, mean)) / (self._n - 1)
            unknown_above = (
                UNKNOWN_MARGIN * float(np.quantile(self._scores, UNKNOWN_QUANTILE))
                if len(self._scores) >= self.min_windows
                else None
            )
            self._use(Baseline(mean, cov, self._n, self.model_version, time.time(), unknown_above))
            self._save()
            logger.info("commissioning done: baseline of %d windows stored in %s", self._n,
                        self.path)  # fmt: skip
            self._learning, self.started_at = False, None
            self._reset_sums()

    # ---- internals ---------------------------------------------------------------------------

    def _reset_sums(self) -> None:
        self._scores: list[float] = []
        self._n = 0
        self._sum = np.zeros(self.dim)
        self._outer = np.zeros((self.dim, self.dim))

    def _use(self, baseline: Baseline) -> None:
        self.baseline = baseline
        self.monitor = DriftMonitor({DEVICE: baseline.stats()}, DEVICE, self.drift_window,
                                    self.threshold)  # fmt: skip

    def _save(self) -> None:
        assert self.baseline is not None
        b = self.baseline
        buffer = io.BytesIO()
        np.savez(buffer, mean=b.mean, cov=b.cov, count=b.count, created=b.created,
                 model_version=np.array(b.model_version),
                 unknown_above=np.nan if b.unknown_above is None else b.unknown_above)  # fmt: skip
        try:
            atomic_write(self.path, buffer.getvalue())
        except OSError as exc:  # a full disk: the baseline still works until the next restart
            logger.error("commissioning: could not store the baseline in %s (%s)", self.path, exc)

    def _load(self) -> None:
        if not self.path.is_file():
            return
        try:
            with np.load(self.path, allow_pickle=False) as data:
                version = str(data["model_version"])
                unknown = float(data["unknown_above"]) if "unknown_above" in data else np.nan
                baseline = Baseline(
                    data["mean"], data["cov"], int(data["count"]), version, float(data["created"]),
                    None if np.isnan(unknown) else unknown,
                )  # fmt: skip
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("commissioning: ignoring unreadable %s (%s)", self.path, exc)
            return
        if version != self.model_version or baseline.mean.shape != (self.dim,):
            logger.warning(
                "commissioning: %s belongs to model version %s, not %s; commission again",
                self.path, version, self.model_version,
            )  # fmt: skip
            return
        self._use(baseline)
        logger.info("commissioning: baseline of %d windows loaded", baseline.count)

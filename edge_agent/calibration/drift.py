"""Drift monitor: is the recent normal operation still the normal the model was trained on?

Feed it only embeddings the decision layer classified as the normal class (the caller's choice:
fault windows are supposed to look different and would read as drift). Feed them in the space
of the reference statistics: raw encoder outputs, or `head.adapt(emb)` when the device head
carries a re-normalization (see calibration.fit_renormalization), so drift is measured since
that calibration.

Score, for the mean mu of the last n embeddings (a fixed ring of `window` rows) against a
reference mean m and per-window covariance S:

    S_s   = (1 - a) S + a (tr(S) / D) I        a = max(shrinkage, D / (D + count)): statistics
                                              from few windows lean on the identity
    score = sqrt((mu - m)^T S_s^-1 (mu - m) / D)

i.e. how far the recent operating point sits from the reference, in per-window standard
deviations (RMS over whitened dimensions). It is deliberately NOT scaled by sqrt(n): windows of
one machine are strongly correlated (overlap, slowly varying speed and load), and every machine
sits somewhere inside the fleet's normal cloud, so a standard-error test would call every device
"drifted" on day one. Inside the training envelope the score stays below ~1; a sensor that
drifts out of it (noise floor, resonance or mounting change) pushes it past the threshold
(default 2). `set_baseline_from_recent()` stores this device's own mean and covariance after
commissioning; readings then also carry `baseline_score` by the same formula, which is more
sensitive because one machine's own spread is tighter than the fleet's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edge_agent.contract.bundle import ClassStats, Manifest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriftReading:
    """One drift check over the last `n` embeddings; scores are in per-window std units."""

    score: float
    baseline_score: float | None
    n: int
    drifted: bool  # score > threshold
    baseline_drifted: bool = False  # baseline_score > threshold


@dataclass(frozen=True)
class _Gaussian:
    mean: np.ndarray  # (D,)
    whitener: np.ndarray  # (D, D): ||W x||^2 = x^T S_s^-1 x
    count: float  # samples behind the mean (inf when unknown)


class DriftMonitor:
    """Rolling drift score of recent normal embeddings vs the bundle's reference normal class.

    reference_stats: {class: ClassStats or (mean (D,), cov (D, D))}; only `normal_class` is used.
    window: ring size (rows kept). threshold: drifted when score > threshold.
    shrinkage: weight of the scaled identity in the covariance, in (0, 1].
    min_samples: readings start once this many embeddings are in the ring (default: window).
    """

    def __init__(
        self,
        reference_stats: Mapping[str, ClassStats | tuple[np.ndarray, np.ndarray]],
        normal_class: str,
        window: int = 200,
        threshold: float = 2.0,
        *,
        shrinkage: float = 0.1,
        min_samples: int | None = None,
    ) -> None:
        if normal_class not in reference_stats:
            raise ValueError(
                f"reference_stats has no entry for normal_class {normal_class!r} (it has "
                f"{sorted(reference_stats)}); export the bundle with reference statistics"
            )
        if window < 2:
            raise ValueError(f"window must be >= 2, got {window}")
        if not 0 < shrinkage <= 1:
            raise ValueError(f"shrinkage must be in (0, 1], got {shrinkage}")
        min_samples = window if min_samples is None else min_samples
        if not 1 <= min_samples <= window:
            raise ValueError(f"min_samples must be in [1, window={window}], got {min_samples}")
        stats = reference_stats[normal_class]
        if isinstance(stats, ClassStats):
            mean, cov, count = stats.mean, stats.cov, float(stats.count)
        else:
            (mean, cov), count = stats, math.inf
        self.threshold = float(threshold)
        self.window = int(window)
        self.min_samples = int(min_samples)
        self.shrinkage = float(shrinkage)
        self.reference = self._gaussian(np.asarray(mean), np.asarray(cov), count)
        self.dim = int(self.reference.mean.shape[0])
        self.baseline: _Gaussian | None = None
        self._ring = np.zeros((self.window, self.dim), dtype=np.float64)
        self._seen = 0  # embeddings fed since the last reset

    @classmethod
    def from_manifest(cls, manifest: Manifest, window: int = 200, **kwargs: float) -> DriftMonitor:
        """Monitor for a bundle: its reference stats, normal class and drift threshold."""
        return cls(
            manifest.reference_stats,
            manifest.normal_class,
            window,
            manifest.thresholds.drift_score,
            **kwargs,  # type: ignore[arg-type]
        )

    @property
    def n(self) -> int:
        """Embeddings currently in the ring (at most `window`)."""
        return min(self._seen, self.window)

    def update(self, emb: np.ndarray) -> DriftReading | None:
        """Add one (D,) or a batch (B, D) of normal embeddings; read once the ring has enough."""
        given = np.asarray(emb, dtype=np.float64)
        x = given[None, :] if given.ndim == 1 else given
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"embeddings must be ({self.dim},) or (B, {self.dim}), got {given.shape}"
            )
        if not np.isfinite(x).all():
            raise ValueError("embeddings contain NaN or inf; feed only windows that passed sanity")
        x = x[-self.window :]
        slots = (self._seen + np.arange(len(x))) % self.window
        self._ring[slots] = x
        self._seen += len(x)
        if self.n < self.min_samples:
            return None
        return self.reading()

    def reading(self) -> DriftReading:
        """Scores of the current ring contents (ValueError when it is empty)."""
        if self.n == 0:
            raise ValueError("no embeddings yet; call update() first")
        recent = self._ring[: self.n].mean(axis=0)
        score = self._score(recent, self.reference)
        baseline_score = None if self.baseline is None else self._score(recent, self.baseline)
        return DriftReading(
            score=score,
            baseline_score=baseline_score,
            n=self.n,
            drifted=score > self.threshold,
            baseline_drifted=baseline_score is not None and baseline_score > self.threshold,
        )

    def set_baseline_from_recent(self) -> None:
        """Store the ring's mean and covariance as this device's baseline (needs >= 2 rows)."""
        if self.n < 2:
            raise ValueError(
                f"a baseline needs at least 2 embeddings in the ring, have {self.n}; run the "
                "machine in normal operation for a while first"
            )
        rows = self._ring[: self.n]
        cov = np.cov(rows, rowvar=False).reshape(self.dim, self.dim)
        self.baseline = self._gaussian(rows.mean(axis=0), cov, float(self.n))
        logger.info("drift baseline set from %d embeddings", self.n)

    def reset(self) -> None:
        """Forget the recent embeddings (e.g. after a recalibration); keeps the baseline."""
        self._seen = 0

    def _score(self, recent_mean: np.ndarray, ref: _Gaussian) -> float:
        d2 = float(np.sum((ref.whitener @ (recent_mean - ref.mean)) ** 2))
        return math.sqrt(d2 / self.dim)

    def _gaussian(self, mean: np.ndarray, cov: np.ndarray, count: float) -> _Gaussian:
        mean = np.asarray(mean, dtype=np.float64)
        cov = np.asarray(cov, dtype=np.float64)
        d = mean.shape[0] if mean.ndim == 1 else -1
        if d < 1 or cov.shape != (d, d):
            raise ValueError(
                f"reference statistics need mean (D,) and cov (D, D); got {mean.shape} and "
                f"{cov.shape}"
            )
        if not (np.isfinite(mean).all() and np.isfinite(cov).all()):
            raise ValueError("reference statistics contain NaN or inf")
        floor = 1e-9 * max(float(np.trace(cov)) / d, float(np.mean(mean**2)), 1e-12)
        whitener = shrunk_whitener(cov, count, self.shrinkage, floor)
        return _Gaussian(mean=mean, whitener=whitener, count=count)


def shrunk_whitener(cov: np.ndarray, count: float, shrinkage: float, floor: float) -> np.ndarray:
    """W (D, D) with ||W x||^2 = x^T S_s^-1 x, S_s = (1 - a) S + a (tr(S) / D) I.

    a = max(shrinkage, D / (D + count)): a covariance from few samples leans on the identity
    (count inf: `shrinkage`). Eigenvalues are floored at `floor` (rounding, a non-PSD input).
    """
    d = cov.shape[0]
    cov = (cov + cov.T) / 2.0
    scale = float(np.trace(cov)) / d
    weight = max(shrinkage, d / (d + count)) if math.isfinite(count) else shrinkage
    shrunk = (1.0 - weight) * cov + weight * max(scale, floor) * np.eye(d)
    eigvals, eigvecs = np.linalg.eigh(shrunk)
    return (eigvecs / np.sqrt(np.maximum(eigvals, floor))).T

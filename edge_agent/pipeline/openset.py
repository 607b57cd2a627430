"""Open set: how unlike every trained class a window is, from the bundle's class statistics.

The bundle carries each class's embedding mean and covariance (`Manifest.reference_stats`).
With the covariance pooled over the classes (weighted by their counts, as linear discriminant
analysis does) and shrunk toward a scaled identity by D / (D + N) (statistics from few windows
lean on the identity), a window's score is its distance to the nearest class mean in
per-window standard deviations, RMS over the D whitened dimensions:

    score(e) = min_c sqrt((e - m_c)^T S^-1 (e - m_c) / D)

A window of a known class scores near 1; one of a condition the model never saw sits far from
every mean. The threshold comes with the bundle (`Thresholds.unknown_above`: a high percentile
of the score on validation windows at training time) or from the device config.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from edge_agent.calibration.drift import shrunk_whitener
from edge_agent.contract.bundle import ClassStats

MIN_SHRINKAGE = 0.05


class OpenSetScorer:
    """Nearest-class-mean distance under a pooled, shrunk covariance (see the module doc)."""

    def __init__(self, stats: Mapping[str, ClassStats]) -> None:
        usable = {name: s for name, s in stats.items() if s.count >= 2}
        if len(usable) < 2:
            raise ValueError(
                f"the open-set score needs statistics of at least 2 classes, the bundle has "
                f"{sorted(usable)}; export it again with reference statistics"
            )
        self.class_names = list(usable)
        means = np.array([s.mean for s in usable.values()], dtype=np.float64)  # (K, D)
        counts = np.array([s.count for s in usable.values()], dtype=np.float64)
        covs = np.array([s.cov for s in usable.values()], dtype=np.float64)  # (K, D, D)
        d = means.shape[1]
        if covs.shape != (len(usable), d, d) or not np.isfinite(covs).all():
            raise ValueError("class statistics need (D,) means and finite (D, D) covariances")
        pooled = np.einsum("k,kij->ij", counts - 1, covs) / max(counts.sum() - len(counts), 1.0)
        floor = 1e-9 * max(float(np.trace(pooled)) / d, 1e-12)
        self._whitener = shrunk_whitener(pooled, float(counts.sum()), MIN_SHRINKAGE, floor)
        self._means = means @ self._whitener.T  # (K, D) whitened
        self.dim = d

    def score(self, emb: np.ndarray) -> np.ndarray:
        """(N, D) embeddings in the space of the statistics -> (N,) scores (>= 0)."""
        x = np.atleast_2d(np.asarray(emb, dtype=np.float64))
        if x.shape[1] != self.dim:
            raise ValueError(f"embeddings must be (N, {self.dim}), got {np.shape(emb)}")
        w = x @ self._whitener.T  # (N, D)
        d2 = (w**2).sum(1)[:, None] - 2.0 * w @ self._means.T + (self._means**2).sum(1)[None, :]
        return np.sqrt(np.maximum(d2.min(axis=1), 0.0) / self.dim)


def threshold_for(scores: np.ndarray, quantile: float = 0.99) -> float:
    """The `unknown_above` threshold: the `quantile` of known-class validation scores."""
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if len(s) < 10:
        raise ValueError(f"an open-set threshold needs >= 10 finite scores, got {len(s)}")
    if not 0.5 <= quantile < 1:
        raise ValueError(f"quantile must be in [0.5, 1), got {quantile}")
    return float(np.quantile(s, quantile))


def auroc(known: np.ndarray, novel: np.ndarray) -> float:
    """Area under the ROC curve of separating `novel` (positive) from `known` by score."""
    from scipy.stats import rankdata

    k, n = np.asarray(known, np.float64), np.asarray(novel, np.float64)
    if not len(k) or not len(n):
        return math.nan
    ranks = rankdata(np.concatenate([k, n]))  # ties share their mean rank
    return float((ranks[len(k) :].sum() - len(n) * (len(n) + 1) / 2) / (len(k) * len(n)))

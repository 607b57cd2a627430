"""How far a device's labels reach: the windows a refitted head has the operator's word for.

An operator labels a few windows of the bearings in front of them. A head refitted on those
labels knows that bearing; on a bearing, size or load none of its labels came from it
extrapolates, and there a clear defect line of the configured bearing is the better witness
(README "Benchmarks", device side: on CWRU, labels of one record per class, the rig's other
records). `LabelReach` keeps the labeled windows' ranked spectral views (the device template's
view) and a radius: the farthest any labeled window lies from its nearest labeled neighbour of
the same class (a class labeled once: half the way to the nearest window of another class, the
widest ball around it that holds no other label). A window lies within reach when some labeled
window is no farther than that. A class keeps at most PER_CLASS windows, spread evenly over its
labeled ones (a calibration set may hold thousands; the head file and the per-window check
stay small: 4 classes at the cap are 800 kB and 0.08 ms a window in the agent's batches of 8
on the development workstation, against 0.4-0.65 ms for the INT8 encoder).

numpy only; `calibration.calibrate` builds it beside every refitted head whose labeled windows
carry views, and the channel asks it per window (`EvidenceStream.basis`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_agent.physics.pool import kth_neighbour_distance

PER_CLASS = 100  # labeled windows a class keeps in the reach


@dataclass(frozen=True)
class LabelReach:
    """The labeled windows' views (N, bands) and the distance within which they vouch."""

    views: np.ndarray
    radius: float

    def __post_init__(self) -> None:
        views = np.asarray(self.views, np.float32)
        if views.ndim != 2 or not len(views) or not np.isfinite(views).all():
            raise ValueError(f"label reach needs finite views (N >= 1, bands), got {views.shape}")
        if not (math.isfinite(self.radius) and self.radius >= 0):
            raise ValueError(f"label reach radius must be >= 0, got {self.radius}")
        object.__setattr__(self, "views", views)

    @classmethod
    def of(cls, views: np.ndarray, labels: np.ndarray) -> LabelReach:
        """The reach of labeled windows (views (N, bands), labels (N,), in time order)."""
        v, y = np.asarray(views, np.float64), np.asarray(labels)
        kept = []
        for c in np.unique(y):
            rows = np.flatnonzero(y == c)
            picks = np.linspace(0, len(rows) - 1, min(len(rows), PER_CLASS)).round()
            kept.append(rows[picks.astype(int)])
        keep = np.sort(np.concatenate(kept))
        v, y = v[keep], y[keep]
        radius = 0.0
        for c in np.unique(y):
            mine, others = v[y == c], v[y != c]
            if len(mine) > 1:
                apart = kth_neighbour_distance(mine, mine, 1, leave_self_out=True)
            elif len(others):
                apart = kth_neighbour_distance(mine, others, 1) / 2
            else:
                continue
            radius = max(radius, float(apart.max()))
        return cls(v, radius)

    @property
    def bands(self) -> int:
        return int(self.views.shape[1])

    def covers(self, views: np.ndarray) -> np.ndarray:
        """(N,) bool: the windows (views (N, bands)) within reach of a labeled window."""
        nearest = kth_neighbour_distance(views, self.views, 1)
        return nearest <= self.radius

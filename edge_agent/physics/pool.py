"""Whether a window is like the unlabeled pool the model learned from: the gate of the spectral
fusion (edge_agent.physics.spectral).

The pool's log spectra are standardized band by band and projected on their first principal
components; a window is like the pool when its `neighbours`-th nearest pool window there lies
no farther than `radius` (training sets it to a high percentile of the pool windows' own such
distances, each leaving itself out). Where a window resembles none of the pool, the model
extrapolates and the template decides alone.

numpy only; training fits the components (train.spectral) and every side gates with this code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

QUERY_BLOCK = 1024  # windows whose distances to the pool are held in memory at once


def kth_neighbour_distance(
    queries: np.ndarray, points: np.ndarray, k: int, leave_self_out: bool = False
) -> np.ndarray:
    """(N,) Euclidean distance from each query (N, D) to its k-th nearest point (P, D);
    `leave_self_out`: the queries are the points, and each skips itself."""
    q = np.asarray(queries, np.float64)
    p = np.asarray(points, np.float64)
    kth = k if leave_self_out else k - 1  # index of the k-th nearest once sorted
    out = np.empty(len(q))
    p_sq = (p**2).sum(axis=1)
    for start in range(0, len(q), QUERY_BLOCK):
        block = q[start : start + QUERY_BLOCK]
        sq = (block**2).sum(axis=1)[:, None] - 2 * block @ p.T + p_sq
        if leave_self_out:
            rows = np.arange(len(block))
            sq[rows, start + rows] = -np.inf  # always the nearest: skipped by kth
        out[start : start + len(block)] = np.partition(sq, kth, axis=1)[:, kth]
    return np.sqrt(np.maximum(out, 0.0))


@dataclass(frozen=True)
class PoolGate:
    """The pool's reference: band standardization (center, scale: (bands,)), principal
    components (K, bands), the projected pool windows (P, K), and the distance to the
    `neighbours`-th nearest of them under which a window counts as like the pool."""

    center: np.ndarray
    scale: np.ndarray
    components: np.ndarray
    points: np.ndarray
    radius: float
    neighbours: int

    def __post_init__(self) -> None:
        arrays = {
            k: np.asarray(getattr(self, k), np.float64)
            for k in ("center", "scale", "components", "points")
        }
        c, p = arrays["components"], arrays["points"]
        bands = arrays["center"].shape
        if (
            c.ndim != 2
            or p.ndim != 2
            or p.shape[1] != c.shape[0]
            or arrays["scale"].shape != bands
            or bands != (c.shape[1],)
        ):
            raise ValueError(
                "the pool gate needs center and scale (bands,), components (K, bands) and points "
                f"(P, K); got {arrays['center'].shape}, {arrays['scale'].shape}, {c.shape}, "
                f"{p.shape}"
            )
        if not all(np.isfinite(a).all() for a in arrays.values()):
            raise ValueError("pool gate arrays must be finite")
        if not (arrays["scale"] > 0).all():
            raise ValueError("pool gate scale must be > 0")
        if not 1 <= self.neighbours <= len(p):
            raise ValueError(
                f"pool gate neighbours must be in [1, {len(p)}] (its points), got {self.neighbours}"
            )
        if not (math.isfinite(self.radius) and self.radius >= 0):
            raise ValueError(f"pool gate radius must be >= 0, got {self.radius}")
        for key, value in arrays.items():
            object.__setattr__(self, key, value)

    @property
    def bands(self) -> int:
        return int(self.center.shape[0])

    def project(self, level: np.ndarray) -> np.ndarray:
        """(N, bands) log spectra -> (N, K) their coordinates beside the pool's."""
        return ((np.asarray(level, np.float64) - self.center) / self.scale) @ self.components.T

    def distance(self, level: np.ndarray) -> np.ndarray:
        """(N,) distance from each window's log spectrum to its `neighbours`-th nearest pool
        window."""
        return kth_neighbour_distance(self.project(level), self.points, self.neighbours)

    def near(self, level: np.ndarray) -> np.ndarray:
        """(N,) bool: the windows (their log spectra, (N, bands)) like the pool."""
        return self.distance(level) <= self.radius

    def to_dict(self) -> dict[str, Any]:
        return {
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
            "components": self.components.tolist(),
            "points": self.points.tolist(),
            "radius": float(self.radius),
            "neighbours": int(self.neighbours),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PoolGate:
        return cls(
            np.asarray(data["center"]),
            np.asarray(data["scale"]),
            np.asarray(data["components"]),
            np.asarray(data["points"]),
            float(data["radius"]),
            int(data["neighbours"]),
        )

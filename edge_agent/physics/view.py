"""The physics view of a window and its small head, fused with the model's head.

A window's physics view is how far each bearing defect line (BPFO, BPFI, BSF, FTF; harmonics
1-3) stands out of its neighbourhood in the squared-envelope spectrum of a fixed wide band
(`physics.evidence`, dB). The lines sit at orders of the shaft speed, so the view means the
same thing at any speed, on any bearing geometry and behind any sensor gain: what a model
trained on one machine at one speed can carry to another. A linear head on it (fitted in
training, carried in the bundle) gives logits that are added to the log-probabilities of the
model's head (a product of experts) and tempered once more:

    p = softmax((log p_model + W @ view + b) / T)

numpy only; the same code runs in training, in the export parity check and on the gateway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.physics.bearing_sim import BearingGeometry
from edge_agent.physics.evidence import HARMONICS, LINES, EvidenceError, line_levels
from edge_agent.pipeline.head import softmax

FEATURES = "envelope-lines-v1"
N_FEATURES = len(LINES) * len(HARMONICS)  # 12: (bpfo, bpfi, bsf, ftf) x harmonics 1-3
LOW_HZ = 1000.0  # below the structural resonances defects ring; above shaft, gear and mains tones
HIGH_FRACTION = 0.45  # of the sample rate: just under Nyquist, above every resonance band


def default_band(sample_rate_hz: float) -> tuple[float, float]:
    """The demodulation band of the view: LOW_HZ to 0.45 fs (wide and fixed, so no per-machine
    band choice has to be repeated on the device; on the simulator it beat a kurtogram band)."""
    return LOW_HZ, HIGH_FRACTION * float(sample_rate_hz)


def line_view(
    windows: np.ndarray,
    sample_rate_hz: float,
    shaft_hz: float | np.ndarray,
    geometry: BearingGeometry | str,
    band: tuple[float, float],
) -> np.ndarray:
    """(N, W) or (N, 1, W) windows -> (N, N_FEATURES) float32 line levels in dB.

    shaft_hz: one speed, or one per window; a window of unknown speed (NaN) gets a NaN row,
    which `PhysicsHead.fuse` leaves to the model. A line the window cannot resolve reads 0 dB
    (no line); so does every line of a window with no vibration to analyse (flat, NaN), which
    the sensor checks flag on their own.
    """
    x = np.asarray(windows)
    x = x.reshape(x.shape[0], x.shape[-1])  # N may be 0 (a split with no validation windows)
    speeds = np.broadcast_to(np.asarray(shaft_hz, dtype=np.float64), (x.shape[0],))
    out = np.zeros((x.shape[0], N_FEATURES), np.float32)
    for i in range(x.shape[0]):
        if not np.isfinite(speeds[i]):
            out[i] = np.nan
            continue
        try:
            _, _, levels, _ = line_levels(x[i], sample_rate_hz, float(speeds[i]), geometry, band)
        except EvidenceError:
            continue
        out[i] = np.nan_to_num(np.asarray(levels, np.float32), nan=0.0)
    return out


@dataclass(frozen=True)
class PhysicsHead:
    """Linear head on the physics view, and the temperature of the fused probabilities."""

    weights: np.ndarray  # (C, N_FEATURES)
    bias: np.ndarray  # (C,)
    band_hz: tuple[float, float]
    temperature: float = 1.0

    def __post_init__(self) -> None:
        w, b = np.asarray(self.weights, np.float64), np.asarray(self.bias, np.float64)
        if w.ndim != 2 or w.shape[1] != N_FEATURES or b.shape != (w.shape[0],):
            raise ValueError(
                f"physics head needs weights (C, {N_FEATURES}) and bias (C,), got "
                f"{w.shape} and {b.shape}"
            )
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise ValueError("physics head weights and bias must be finite")
        lo, hi = self.band_hz
        if not 0 <= lo < hi:
            raise ValueError(
                f"physics band_hz must be (low, high) with 0 <= low < high, got {lo}, {hi}"
            )
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"physics temperature must be > 0, got {self.temperature}")
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "bias", b)

    @property
    def num_classes(self) -> int:
        return int(self.weights.shape[0])

    def logits(self, view: np.ndarray) -> np.ndarray:
        """(N, N_FEATURES) -> (N, C)."""
        return np.asarray(view, np.float64) @ self.weights.T + self.bias

    def fuse(self, model_probs: np.ndarray, view: np.ndarray) -> np.ndarray:
        """Fused probabilities (N, C) from the model head's probabilities and the physics view;
        rows whose view is NaN (speed unknown) keep the model's probabilities."""
        probs = np.asarray(model_probs, np.float64)
        known = np.isfinite(view).all(axis=1)
        if known.all():
            z = np.log(np.clip(probs, 1e-12, 1.0)) + self.logits(view)
            return softmax(z / self.temperature)
        out = probs.copy()
        if known.any():
            out[known] = self.fuse(probs[known], view[known])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": FEATURES,
            "band_hz": [float(v) for v in self.band_hz],
            "weights": self.weights.tolist(),
            "bias": self.bias.tolist(),
            "temperature": float(self.temperature),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PhysicsHead:
        if data.get("features") != FEATURES:
            raise ValueError(
                f"physics features {data.get('features')!r} are not {FEATURES!r}; this agent "
                "cannot compute them"
            )
        lo, hi = data["band_hz"]
        return cls(
            np.asarray(data["weights"]),
            np.asarray(data["bias"]),
            (float(lo), float(hi)),
            float(data.get("temperature", 1.0)),
        )

"""The one preprocessing implementation: scaling to g, windowing and per-window normalization.

Training, export checks and the agent all call these functions, so a window means the same
thing on the workstation and on the gateway. numpy only (scipy for resampling, imported lazily).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Literal

import numpy as np

Normalization = Literal["zscore", "center"]
NORMALIZATIONS: tuple[str, ...] = ("zscore", "center")
_EPS = 1e-6  # g; far below any real vibration, keeps flat windows finite


@dataclass(frozen=True)
class PreprocessSpec:
    """How raw acceleration (g) becomes model input; recorded in every bundle manifest."""

    sample_rate_hz: int = 12_000
    window: int = 2048
    hop: int = 1024
    normalization: Normalization = "zscore"

    def __post_init__(self) -> None:
        if self.sample_rate_hz <= 0:
            raise ValueError(f"sample_rate_hz must be > 0, got {self.sample_rate_hz}")
        if self.window < 16:
            raise ValueError(f"window must be >= 16 samples, got {self.window}")
        if not 0 < self.hop <= 4 * self.window:
            raise ValueError(f"hop must be in 1..4*window, got {self.hop}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def adc_to_g(
    raw: np.ndarray, *, sensitivity_mv_per_g: float, full_scale_volts: float
) -> np.ndarray:
    """Convert ADC samples to acceleration in g.

    `raw` is either integer counts (int16/int32: full scale is the dtype's max) or floats in
    [-1, 1] as audio interfaces deliver them. Volts = fraction of full scale * full_scale_volts;
    g = volts / (sensitivity in V/g).
    """
    if sensitivity_mv_per_g <= 0 or full_scale_volts <= 0:
        raise ValueError(
            f"need sensitivity_mv_per_g > 0 and full_scale_volts > 0, got "
            f"{sensitivity_mv_per_g=}, {full_scale_volts=}"
        )
    raw = np.asarray(raw)
    if np.issubdtype(raw.dtype, np.integer):
        fraction = raw.astype(np.float32) / float(np.iinfo(raw.dtype).max)
    else:
        fraction = raw.astype(np.float32, copy=False)
    return fraction * np.float32(full_scale_volts / (sensitivity_mv_per_g / 1000.0))


def resample(signal: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Polyphase resampling (scipy.signal.resample_poly) along the last axis; float32 out."""
    if from_hz <= 0 or to_hz <= 0:
        raise ValueError(f"sample rates must be > 0, got {from_hz=}, {to_hz=}")
    if from_hz == to_hz:
        return np.asarray(signal, dtype=np.float32)
    from scipy.signal import resample_poly

    ratio = Fraction(int(to_hz), int(from_hz))
    out = resample_poly(signal, ratio.numerator, ratio.denominator, axis=-1)
    return out.astype(np.float32)


def frame(signal: np.ndarray, window: int, hop: int) -> np.ndarray:
    """Cut a 1-D signal into overlapping windows: (T,) -> (N, window), N = 1 + (T-window)//hop.

    Raises ValueError for a signal shorter than one window (never silently returns nothing).
    """
    signal = np.asarray(signal)
    if signal.ndim != 1:
        raise ValueError(f"frame expects a 1-D signal, got shape {signal.shape}")
    if signal.shape[0] < window:
        raise ValueError(
            f"signal has {signal.shape[0]} samples, shorter than one window ({window})"
        )
    views = np.lib.stride_tricks.sliding_window_view(signal, window)
    return views[::hop]


def normalize(windows: np.ndarray, method: Normalization = "zscore") -> np.ndarray:
    """Per-window normalization: (N, W) or (N, 1, W) -> float32 (N, 1, W).

    zscore: subtract the window mean, divide by its standard deviation (robust to gain drift).
    center: subtract the mean only (keeps amplitude in g).
    """
    x = np.asarray(windows, dtype=np.float32)
    if x.ndim == 2:
        x = x[:, None, :]
    if x.ndim != 3 or x.shape[1] != 1:
        raise ValueError(f"normalize expects (N, W) or (N, 1, W), got shape {x.shape}")
    if method not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {method!r}; valid: {NORMALIZATIONS}")
    # centered in float64: a flat window centers to exactly 0, and a window of large offset and
    # tiny spread keeps its shape (a float32 mean is off by up to half an ulp of the offset)
    wide = x.astype(np.float64)
    x = (wide - wide.mean(axis=-1, keepdims=True)).astype(np.float32)
    if method == "zscore":
        var = np.square(x).sum(axis=-1, keepdims=True, dtype=np.float64) / x.shape[-1]
        x /= (np.sqrt(var) + _EPS).astype(np.float32)
    return x


def prepare(signal: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Signal in g at spec.sample_rate_hz -> model input (N, 1, window) float32."""
    return normalize(frame(signal, spec.window, spec.hop), spec.normalization)

"""Is this window a plausible vibration signal? Checked on the raw g window, before normalization.

A z-scored window of a dead sensor looks like any other window to the model, so the agent must
catch broken cables, saturated inputs and NaNs here and report a sensor problem instead of a
diagnosis. Also computes the level statistics sent with telemetry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

REASONS = ("nan", "inf", "flat_line", "clipping", "level_low", "level_high")


@dataclass(frozen=True)
class SanityResult:
    """ok: the window may be classified. reason: first failed check (one of REASONS) or None.

    stats: rms, peak, crest_factor, kurtosis, mean, clipped_fraction (floats, always finite).
    """

    ok: bool
    reason: str | None
    stats: dict[str, float] = field(default_factory=dict)


def _as_window(x_g: np.ndarray) -> np.ndarray:
    x = np.asarray(x_g)
    if x.ndim != 1 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty 1-D window in g, got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"expected numeric samples, got dtype {x.dtype}")
    return x.astype(np.float64)


def window_stats(x_g: np.ndarray) -> dict[str, float]:
    """Level statistics of a 1-D window in g, over its finite samples.

    rms: AC RMS (mean removed), the vibration level. peak: max |x|. crest_factor: max |x - mean|
    / rms. kurtosis: fourth standardized moment (3 for Gaussian noise, high for impacts).
    mean: DC level. All 0.0 when undefined (no finite samples, or a constant window).
    """
    x = _as_window(x_g)
    return _stats(x[np.isfinite(x)])


def _stats(x: np.ndarray, peak: float | None = None) -> dict[str, float]:
    """The statistics of finite samples `x`; `peak` = max |x| when the caller has it."""
    zero = {"rms": 0.0, "peak": 0.0, "crest_factor": 0.0, "kurtosis": 0.0, "mean": 0.0}
    if x.size == 0:
        return zero
    if peak is None:
        peak = float(np.max(np.abs(x)))
    if peak == 0.0:
        return zero
    y = x * np.float32(1.0 / peak) if x.dtype == np.float32 else x / peak  # in [-1, 1]
    mean_y = float(np.mean(y, dtype=np.float64))
    d = y - np.float32(mean_y) if y.dtype == np.float32 else y - mean_y
    d2 = d * d
    var_y = float(np.mean(d2, dtype=np.float64))
    rms_y = float(np.sqrt(var_y))
    stats = {"rms": rms_y * peak, "peak": peak, "mean": mean_y * peak}
    if rms_y <= 1e-12 * max(1.0, abs(mean_y)):  # constant (to rounding)
        return {**stats, "rms": 0.0, "crest_factor": 0.0, "kurtosis": 0.0}
    stats["crest_factor"] = max(float(d.max()), -float(d.min())) / rms_y
    stats["kurtosis"] = float(np.mean(d2 * d2, dtype=np.float64)) / (var_y * var_y)
    return stats


def check_window(
    x_g: np.ndarray,
    *,
    clip_g: float | None,
    min_rms_g: float,
    max_rms_g: float,
    flat_std_g: float = 1e-6,
    max_clipped_fraction: float = 0.001,
) -> SanityResult:
    """Check a raw window (1-D, g); the first failing check names the reason.

    Order: nan, inf, flat_line (std < flat_std_g: stuck or disconnected), clipping (more than
    max_clipped_fraction of samples at |x| >= clip_g; skipped when clip_g is None), level_low
    (rms < min_rms_g), level_high (rms > max_rms_g). Raises ValueError only for a window that
    is not a non-empty 1-D numeric array.
    """
    x = _as_window(x_g)
    magnitude = np.abs(x)
    peak = float(magnitude.max())  # NaN or inf when some sample is not finite
    finite = None if np.isfinite(peak) else np.isfinite(x)
    if finite is None:
        stats = _stats(x, peak)
    else:
        stats = _stats(x[finite])
        magnitude = magnitude[finite]
    clipped = 0.0
    if clip_g is not None:
        clipped = float(np.count_nonzero(magnitude >= clip_g * (1 - 1e-6))) / x.size
    stats["clipped_fraction"] = clipped

    def fail(reason: str) -> SanityResult:
        return SanityResult(False, reason, stats)

    if finite is not None:
        return fail("nan" if np.isnan(x).any() else "inf")
    if stats["rms"] < flat_std_g:
        return fail("flat_line")
    if clip_g is not None and clipped > max_clipped_fraction:
        return fail("clipping")
    if stats["rms"] < min_rms_g:
        return fail("level_low")
    if stats["rms"] > max_rms_g:
        return fail("level_high")
    return SanityResult(True, None, stats)

"""How far a model's confidence can be trusted: expected calibration error (ECE) and the accuracy
of confident windows. numpy only; training reports, benchmarks and the device share it.

A window's confidence is its largest class probability. ECE (Guo et al. 2017) sorts windows into
`bins` equal-width confidence bins (lo, hi] over [0, 1] and weighs each bin's gap between
accuracy and mean confidence by its share of windows:

    ECE = sum_b |acc_b - conf_b| * n_b / N

0 means a model that says 80 % is right 80 % of the time; 0.3 means it is 30 points off.
"""

from __future__ import annotations

import numpy as np

DEFAULT_BINS = 15


def _checked(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """probs (N, C) in [0, 1] and labels (N,) class indices, validated; ValueError names the
    problem."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"probs must be (N windows, C classes) with N, C >= 1, got {p.shape}")
    if y.shape != (p.shape[0],):
        raise ValueError(f"labels must be ({p.shape[0]},), one per row of probs, got {y.shape}")
    bad = int((~np.isfinite(p)).sum())
    if bad:
        raise ValueError(f"probs hold {bad} NaN or infinite values; pass probabilities, not logits")
    if p.min() < 0 or p.max() > 1:
        raise ValueError(
            f"probs must lie in [0, 1], got {p.min():.3g} to {p.max():.3g}; "
            "pass probabilities (softmax), not logits"
        )
    if y.dtype.kind not in "iu":
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(
            f"labels must be class indices in [0, {p.shape[1]}), got {y.min()} to {y.max()}"
        )
    return p, y.astype(np.int64)


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, bins: int = DEFAULT_BINS
) -> float:
    """ECE of (N, C) probabilities against (N,) true class indices, `bins` equal-width bins."""
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
    p, y = _checked(probs, labels)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    idx = np.searchsorted(np.arange(1, bins) / bins, conf, side="left")  # bin (lo, hi]
    conf_sum = np.bincount(idx, weights=conf, minlength=bins)
    correct_sum = np.bincount(idx, weights=correct, minlength=bins)
    return float(np.abs(correct_sum - conf_sum).sum() / len(y))  # |acc - conf| * n / N


def confident_accuracy(probs: np.ndarray, labels: np.ndarray, threshold: float) -> float | None:
    """Accuracy over windows whose confidence is >= `threshold`; None when there are none."""
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    p, y = _checked(probs, labels)
    confident = p.max(axis=1) >= threshold
    if not confident.any():
        return None
    return float((p[confident].argmax(axis=1) == y[confident]).mean())

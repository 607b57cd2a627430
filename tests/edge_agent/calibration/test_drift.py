"""DriftMonitor: quiet on the reference distribution, loud on a shift, robust to singular stats."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.calibration.drift import DriftMonitor
from edge_agent.contract.bundle import ClassStats, Manifest

D = 8
RNG = np.random.default_rng(0)
_A = RNG.normal(size=(D, D))
COV = _A @ _A.T / D + 0.1 * np.eye(D)
MEAN = RNG.normal(size=D)
STD = np.sqrt(np.diag(COV))
REFERENCE = {"normal": (MEAN, COV), "outer_race": (MEAN + 3.0, COV)}


def samples(n: int, seed: int, shift: float = 0.0, mean: np.ndarray = MEAN) -> np.ndarray:
    return np.random.default_rng(seed).multivariate_normal(mean + shift * STD, COV, n)


def test_in_distribution_stays_below_threshold_and_scores_look_standard_normal() -> None:
    monitor = DriftMonitor(REFERENCE, "normal", window=100)
    streamed = [monitor.update(chunk) for chunk in samples(3000, seed=1).reshape(-1, 10, D)]
    scores = np.array([r.score for r in streamed if r is not None])
    assert len(scores) == 291  # readings start once the ring is full
    assert (scores < monitor.threshold).all()
    # the mean of 100 in-distribution windows sits ~1/sqrt(100) std from the reference mean
    fresh = np.array([monitor.update(samples(100, seed=s)).score for s in range(100, 200)])
    assert 0.03 < fresh.mean() < 0.2


def test_mean_shift_is_detected() -> None:
    monitor = DriftMonitor(REFERENCE, "normal", window=200)
    assert not monitor.update(samples(200, seed=2)).drifted
    reading = monitor.update(samples(200, seed=3, shift=4.0))
    assert reading.drifted and reading.score > 1.5 * monitor.threshold
    assert reading.n == 200


def test_ring_is_bounded_and_scores_only_the_last_window() -> None:
    monitor = DriftMonitor(REFERENCE, "normal", window=50)
    monitor.update(samples(500, seed=4, shift=2.0))  # old drifted data...
    for row in samples(50, seed=5):  # ...pushed out one at a time by normal data
        reading = monitor.update(row)
    assert reading is not None and monitor.n == 50
    assert not reading.drifted
    assert monitor._ring.shape == (50, D)


def test_device_baseline_score() -> None:
    """This device's normal sits off the fleet mean (not drift); the baseline score measures
    change since commissioning."""
    device_mean = MEAN + 0.8 * STD
    monitor = DriftMonitor(REFERENCE, "normal", window=200)
    first = monitor.update(samples(200, seed=6, mean=device_mean))
    assert not first.drifted and first.baseline_score is None
    monitor.set_baseline_from_recent()
    later = monitor.update(samples(200, seed=7, mean=device_mean))
    assert not later.drifted and not later.baseline_drifted
    assert later.baseline_score is not None and later.baseline_score < monitor.threshold
    moved = monitor.update(samples(200, seed=8, mean=device_mean, shift=3.0))
    assert moved.baseline_drifted and moved.baseline_score > monitor.threshold


def test_singular_reference_covariance_from_fewer_samples_than_dimensions() -> None:
    dim = 32
    rng = np.random.default_rng(9)
    few = rng.normal(size=(10, dim))  # rank-9 covariance in 32 dimensions
    stats = {"normal": ClassStats(count=10, mean=few.mean(0).tolist(), cov=np.cov(few.T).tolist())}
    monitor = DriftMonitor(stats, "normal", window=20)
    quiet = monitor.update(rng.normal(size=(20, dim)))
    assert np.isfinite(quiet.score)
    loud = monitor.update(rng.normal(size=(20, dim)) + 3.0)
    assert np.isfinite(loud.score) and loud.drifted and loud.score > quiet.score
    zero = DriftMonitor({"normal": (np.zeros(dim), np.zeros((dim, dim)))}, "normal", window=5)
    assert zero.update(np.full((5, dim), 1.0)).drifted


def test_baseline_from_a_window_smaller_than_the_dimension() -> None:
    dim = 32
    rng = np.random.default_rng(10)
    monitor = DriftMonitor({"normal": (np.zeros(dim), np.eye(dim))}, "normal", window=10)
    monitor.update(rng.normal(size=(10, dim)))
    monitor.set_baseline_from_recent()  # rank-9 covariance: shrinkage keeps it invertible
    reading = monitor.update(rng.normal(size=(10, dim)))
    assert reading.baseline_score is not None and np.isfinite(reading.baseline_score)


def test_no_reading_until_min_samples_and_reset() -> None:
    monitor = DriftMonitor(REFERENCE, "normal", window=20, min_samples=5)
    assert monitor.update(samples(4, seed=11)) is None
    assert monitor.update(samples(1, seed=12)).n == 5
    monitor.reset()
    assert monitor.n == 0 and monitor.update(samples(1, seed=13)) is None


def test_from_manifest_uses_the_bundle_threshold_and_counts() -> None:
    manifest = Manifest.model_validate(
        {
            "schema_version": 1,
            "model_name": "m",
            "model_version": "1",
            "created_utc": "2024-01-01T00:00:00+00:00",
            "class_names": ["normal", "outer_race"],
            "preprocessing": {
                "sample_rate_hz": 12000,
                "window": 1024,
                "hop": 512,
                "normalization": "zscore",
            },
            "thresholds": {"drift_score": 5.0},
            "embedding_dim": D,
            "encoders": [{"format": "fp32.onnx", "file": "e.onnx", "batch": "dynamic"}],
            "files": {"e.onnx": "0", "head.npz": "0"},
            "reference_stats": {
                "normal": {"count": 1000, "mean": MEAN.tolist(), "cov": COV.tolist()}
            },
        }
    )
    monitor = DriftMonitor.from_manifest(manifest, window=50)
    assert monitor.threshold == 5.0 and monitor.reference.count == 1000.0


def test_bad_arguments_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"no entry for normal_class 'healthy'.*'normal'"):
        DriftMonitor(REFERENCE, "healthy")
    monitor = DriftMonitor(REFERENCE, "normal", window=10)
    with pytest.raises(ValueError, match=r"\(8,\) or \(B, 8\), got \(3,\)"):
        monitor.update(np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        monitor.update(np.full(D, np.nan))
    with pytest.raises(ValueError, match="at least 2 embeddings"):
        monitor.set_baseline_from_recent()


def test_statistics_from_few_windows_are_shrunk_so_fresh_normal_scores_low():
    """128-d reference statistics from 51 windows (what a bundle once carried): the sample
    covariance is singular and its small eigenvalues are noise; fresh windows of the same
    normal must still read as normal."""
    rng = np.random.default_rng(5)
    d = 128
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    few = rng.normal(size=(51, d)) @ mix
    stats = ClassStats(count=51, mean=few.mean(0).tolist(), cov=np.cov(few.T).tolist())
    monitor = DriftMonitor({"normal": stats}, "normal", window=100, threshold=2.0)
    scores = [monitor.update(rng.normal(size=(100, d)) @ mix).score for _ in range(10)]
    assert max(scores) < 1.0, scores
    spread = np.sqrt(np.diag(mix.T @ mix))  # per-dimension std of the normal windows
    shifted = monitor.update(rng.normal(size=(100, d)) @ mix + 4.0 * spread)
    assert shifted.drifted, shifted

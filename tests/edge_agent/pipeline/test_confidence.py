"""Calibration metrics: hand-derived ECE values, a slow reference, sampled calibrated and
overconfident models, and bad input named in the error."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_agent.pipeline.confidence import confident_accuracy, expected_calibration_error


def two_class(conf: list[float], right: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Windows predicting class 0 with confidence `conf`; label 0 where `right`, else 1."""
    c = np.asarray(conf, dtype=np.float64)
    return np.stack([c, 1 - c], axis=1), np.where(right, 0, 1)


def slow_ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """The textbook definition, one bin (lo, hi] at a time."""
    conf, pred = probs.max(1), probs.argmax(1)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        if inside.any():
            gap = (pred[inside] == labels[inside]).mean() - conf[inside].mean()
            total += abs(gap) * inside.sum() / len(labels)
    return total


def test_confidence_that_matches_accuracy_has_zero_ece() -> None:
    probs, y = two_class([0.8] * 10, [True] * 8 + [False] * 2)
    assert expected_calibration_error(probs, y) == pytest.approx(0.0, abs=1e-12)


def test_overconfidence_is_the_gap_between_confidence_and_accuracy() -> None:
    probs, y = two_class([0.9] * 10, [True] * 6 + [False] * 4)
    assert expected_calibration_error(probs, y) == pytest.approx(0.3)


def test_bins_are_weighted_by_their_share_of_windows() -> None:
    # 4 windows at 0.6, half right (gap 0.1); 6 at 0.95, all right (gap 0.05)
    probs, y = two_class([0.6] * 4 + [0.95] * 6, [True, True, False, False] + [True] * 6)
    assert expected_calibration_error(probs, y) == pytest.approx(0.4 * 0.1 + 0.6 * 0.05)
    # one bin pools them: accuracy 0.8, mean confidence 0.81
    assert expected_calibration_error(probs, y, bins=1) == pytest.approx(0.01)


def test_sampled_calibrated_model_is_near_zero_and_overconfident_one_is_not() -> None:
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 100_000)
    calibrated = two_class(list(conf), list(rng.random(conf.size) < conf))
    overconfident = two_class(list(conf), list(rng.random(conf.size) < conf - 0.2))
    assert expected_calibration_error(*calibrated) < 0.01
    assert expected_calibration_error(*overconfident) == pytest.approx(0.2, abs=0.01)


@settings(max_examples=60, deadline=None)
@given(
    logits=hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 40), st.integers(1, 6)),
        elements=st.floats(-8, 8),
    ),
    seed=st.integers(0, 2**16),
    bins=st.integers(1, 20),
)
def test_matches_the_slow_reference_and_stays_in_0_1(logits, seed, bins) -> None:
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    y = np.random.default_rng(seed).integers(0, probs.shape[1], len(probs))
    ece = expected_calibration_error(probs, y, bins)
    assert 0.0 <= ece <= 1.0
    assert ece == pytest.approx(slow_ece(probs, y, bins), abs=1e-9)


def test_confident_accuracy_counts_only_windows_at_or_above_the_threshold() -> None:
    probs, y = two_class([0.7, 0.9, 0.95, 0.5, 0.6], [True, False, True, False, False])
    assert confident_accuracy(probs, y, 0.7) == pytest.approx(2 / 3)
    assert confident_accuracy(probs, y, 0.99) is None


def test_confident_accuracy_agrees_with_the_training_metrics() -> None:
    from train.metrics import classification_metrics

    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(4) * 0.3, 500)
    y = rng.integers(0, 4, 500)
    metrics = classification_metrics(probs, y, ["a", "b", "c", "d"], 0.7)
    assert confident_accuracy(probs, y, 0.7) == pytest.approx(metrics["confident_accuracy"])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 20), c=st.integers(1, 5), data=st.data())
def test_nan_or_infinite_probabilities_are_named(n, c, data) -> None:
    probs = np.full((n, c), 1.0 / c)
    bad = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    probs[data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, c - 1))] = bad
    y = np.zeros(n, dtype=np.int64)
    with pytest.raises(ValueError, match="NaN or infinite"):
        expected_calibration_error(probs, y)
    with pytest.raises(ValueError, match="NaN or infinite"):
        confident_accuracy(probs, y, 0.7)


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(0, 4), min_size=0, max_size=4))
def test_probabilities_that_are_not_a_matrix_are_named(shape) -> None:
    probs = np.full(shape, 0.5)
    if probs.ndim == 2 and probs.size:
        probs = probs[:, :, None]  # a well-formed matrix made 3-D
    with pytest.raises(ValueError, match=r"probs must be \(N windows, C classes\)"):
        expected_calibration_error(probs, np.zeros(len(probs) if probs.ndim else 0, int))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 20), extra=st.integers(-20, 20).filter(lambda k: k != 0))
def test_labels_of_the_wrong_length_are_named(n, extra) -> None:
    probs = np.full((n, 2), 0.5)
    labels = np.zeros(max(0, n + extra), dtype=np.int64)
    with pytest.raises(ValueError, match="labels must be"):
        expected_calibration_error(probs, labels)


@pytest.mark.parametrize(
    ("probs", "labels", "bins", "match"),
    [
        ([[0.5, 0.5]], [2], 15, r"class indices in \[0, 2\)"),
        ([[0.5, 0.5]], [-1], 15, r"class indices in \[0, 2\)"),
        ([[0.5, 0.5]], [0.0], 15, "integer class indices"),
        ([[1.5, -0.5]], [0], 15, r"\[0, 1\].*not logits"),
        ([[0.5, 0.5]], [0], 0, "bins must be an integer >= 1"),
        ([[0.5, 0.5]], [0], 2.5, "bins must be an integer >= 1"),
    ],
)
def test_bad_labels_values_and_bins_are_named(probs, labels, bins, match) -> None:
    with pytest.raises(ValueError, match=match):
        expected_calibration_error(np.array(probs), np.array(labels), bins)


def test_threshold_outside_0_1_is_named() -> None:
    probs, y = two_class([0.8], [True])
    for threshold in (-0.1, 1.1, float("nan")):
        with pytest.raises(ValueError, match="threshold must be in"):
            confident_accuracy(probs, y, threshold)

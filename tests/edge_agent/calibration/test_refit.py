"""Per-device calibration on synthetic drift: Gaussian class blobs, a factory head trained on
them, then a gain and an offset (sensor drift) that moves normal toward the first fault class."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edge_agent.calibration.refit import (
    balanced_accuracy,
    binomial_tail,
    calibrate,
    cv_blocks,
    fit_renormalization,
    fit_temperature,
    loss_and_gradients,
    refit_head,
)
from edge_agent.pipeline.head import Head

D, H, C = 16, 32, 4
WORLD = np.random.default_rng(0)
CLASS_MEANS = WORLD.normal(0.0, 1.5, (C, D))
DRIFT_OFFSET = 0.9 * (CLASS_MEANS[1] - CLASS_MEANS[0])
DRIFT_GAIN = WORLD.uniform(0.9, 1.3, D)


def blobs(per_class: int, seed: int, drifted: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(C), per_class)
    x = CLASS_MEANS[y] + rng.normal(0.0, 1.0, (len(y), D))
    if drifted:
        x = x * DRIFT_GAIN + DRIFT_OFFSET
    return x.astype(np.float32), y


def accuracy(head: Head, x: np.ndarray, y: np.ndarray) -> float:
    return balanced_accuracy(y, head.logits(x).argmax(axis=1))


@pytest.fixture(scope="module")
def factory() -> Head:
    """A head trained from scratch (random hidden init, zero last layer) on clean blobs."""
    rng = np.random.default_rng(1)
    w1 = (rng.normal(0.0, 1.0, (D, H)) / np.sqrt(D)).astype(np.float32)
    start = Head(w1, np.zeros(H, np.float32), np.zeros((H, C), np.float32), np.zeros(C, np.float32))
    x, y = blobs(100, seed=2)
    return refit_head(start, start, x, y, l2_to_factory=1e-4, train_hidden=True)


def test_factory_head_is_good_on_clean_data_and_worse_after_drift(factory: Head) -> None:
    x, y = blobs(100, seed=3)
    xd, yd = blobs(100, seed=3, drifted=True)
    assert accuracy(factory, x, y) > 0.97
    assert accuracy(factory, xd, yd) < 0.8


@pytest.mark.parametrize("train_hidden", [False, True])
def test_calibration_with_few_windows_recovers_accuracy_on_fresh_drifted_data(
    factory: Head, train_hidden: bool
) -> None:
    x_cal, y_cal = blobs(8, seed=10, drifted=True)
    x_new, y_new = blobs(200, seed=11, drifted=True)
    result = calibrate(factory, factory, x_cal, y_cal, train_hidden=train_hidden)
    assert result.accepted, result.reason
    assert result.accuracy_after >= result.accuracy_before
    assert (result.n_train, result.n_holdout) == (32, 32)  # every window cross-validated
    before, after = accuracy(factory, x_new, y_new), accuracy(result.head, x_new, y_new)
    assert after > before + 0.15
    assert after > 0.9


@pytest.mark.parametrize("seed", range(4))
def test_shuffled_labels_are_refused_with_both_accuracies_in_the_reason(
    factory: Head, seed: int
) -> None:
    x_cal, y_cal = blobs(8, seed=20 + seed, drifted=True)
    nonsense = np.random.default_rng(seed).permutation(y_cal)
    result = calibrate(factory, factory, x_cal, nonsense)
    assert not result.accepted
    assert result.head is factory
    assert result.reason.startswith("refused")
    assert f"{result.accuracy_before:.1%}" in result.reason
    assert f"{result.accuracy_after:.1%}" in result.reason


def test_calibration_is_deterministic(factory: Head) -> None:
    x_cal, y_cal = blobs(6, seed=30, drifted=True)
    a = calibrate(factory, factory, x_cal, y_cal)
    b = calibrate(factory, factory, x_cal, y_cal)
    for key, value in a.head.to_arrays().items():
        np.testing.assert_array_equal(value, b.head.to_arrays()[key])
    assert a.reason == b.reason


def test_refit_does_not_move_far_from_factory_with_strong_regularization(factory: Head) -> None:
    x_cal, y_cal = blobs(4, seed=31, drifted=True)
    loose = refit_head(factory, factory, x_cal, y_cal, l2_to_factory=0.0)
    tight = refit_head(factory, factory, x_cal, y_cal, l2_to_factory=10.0)
    moved = lambda h: float(np.abs(h.w2 - factory.w2).sum())  # noqa: E731
    assert moved(tight) < 0.1 * moved(loose)
    np.testing.assert_array_equal(loose.w1, factory.w1)  # hidden layer frozen by default


@pytest.mark.parametrize("per_class", [1, 3, 5, 10])
def test_tiny_label_sets_are_accepted_when_they_help(factory: Head, per_class: int) -> None:
    """The foreign-machine case: drift makes the factory head wrong, a few labels fix it."""
    x_cal, y_cal = blobs(per_class, seed=70 + per_class, drifted=True)
    x_new, y_new = blobs(200, seed=71, drifted=True)
    result = calibrate(factory, factory, x_cal, y_cal)
    assert result.accepted, result.reason
    assert accuracy(result.head, x_new, y_new) > accuracy(factory, x_new, y_new)
    if per_class == 1:
        assert result.n_holdout == 0 and "not cross-validated" in result.reason
    else:
        assert result.n_holdout == len(y_cal)


def test_a_refit_that_predicts_unseen_windows_worse_is_refused(
    factory: Head, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the refit learned, the check compares it with the current head on windows it
    did not fit: here every refit collapses to one class (as a badly overfit head would)."""
    import edge_agent.calibration.refit as calibration

    def collapsed(current: Head, *args, **kwargs) -> Head:
        b2 = np.array([10.0, 0.0, 0.0, 0.0], np.float32)
        return replace(current, w2=np.zeros_like(current.w2), b2=b2)

    monkeypatch.setattr(calibration, "refit_head", collapsed)
    x, y = blobs(3, seed=80, drifted=True)
    result = calibrate(factory, factory, x, y)
    assert not result.accepted and result.head is factory
    assert result.accuracy_after == 0.25 < result.accuracy_before
    assert "worse than the current head" in result.reason


def test_labeling_one_class_at_a_time_gives_the_same_head_as_all_at_once(factory: Head) -> None:
    x, y = blobs(5, seed=81, drifted=True)
    first = y < 2
    split_day = calibrate(factory, factory, x[first], y[first])
    assert split_day.accepted  # classes 0 and 1
    later = calibrate(split_day.head, factory, x, y)  # classes 2 and 3 join the set
    at_once = calibrate(factory, factory, x, y)
    assert later.accepted and at_once.accepted
    for key, value in at_once.head.to_arrays().items():
        np.testing.assert_allclose(later.head.to_arrays()[key], value, rtol=1e-5, atol=1e-6)


def test_a_single_labeled_class_is_refused_and_says_what_to_do(factory: Head) -> None:
    x, y = blobs(10, seed=33, drifted=True)
    normal = y == 0
    result = calibrate(factory, factory, x[normal], y[normal])
    assert not result.accepted and result.head is factory
    assert "only class 0 is labeled" in result.reason and "renormalize" in result.reason


def test_cv_blocks_keep_neighbour_windows_together_in_time_order() -> None:
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2])
    t = np.array([9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 5])  # given newest first
    blocks = cv_blocks(y, t)
    assert blocks[-1] == -1  # a single window of class 2: cannot be cross-validated
    for c in (0, 1):
        rows = np.flatnonzero(y == c)
        by_time = rows[np.argsort(t[rows])]
        assert len(set(blocks[rows])) == 5
        assert (np.diff(blocks[by_time]) >= 0).all()  # contiguous in time


def test_gradients_match_finite_differences() -> None:
    rng = np.random.default_rng(4)
    params = {
        "w1": rng.normal(size=(5, 6)),
        "b1": rng.normal(size=6),
        "w2": rng.normal(size=(6, 3)),
        "b2": rng.normal(size=3),
    }
    anchors = {k: rng.normal(size=v.shape) for k, v in params.items()}
    x, y, w = rng.normal(size=(7, 5)), rng.integers(0, 3, 7), rng.uniform(0.5, 2.0, 7)
    _, grads = loss_and_gradients(params, anchors, x, y, w, 1.7, 0.3)
    eps = 1e-6
    for name, value in params.items():
        numeric = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            plus = {**params, name: value.copy()}
            minus = {**params, name: value.copy()}
            plus[name][idx] += eps
            minus[name][idx] -= eps
            numeric[idx] = (
                loss_and_gradients(plus, anchors, x, y, w, 1.7, 0.3)[0]
                - loss_and_gradients(minus, anchors, x, y, w, 1.7, 0.3)[0]
            ) / (2 * eps)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-5, atol=1e-7, err_msg=name)


def test_renormalization_maps_device_normal_to_reference_and_restores_accuracy(
    factory: Head,
) -> None:
    clean, y_clean = blobs(300, seed=40)
    ref = clean[y_clean == 0]
    device, y_device = blobs(300, seed=41, drifted=True)
    head = fit_renormalization(factory, device[y_device == 0], ref.mean(0), np.cov(ref.T))
    mapped = head.adapt(device[y_device == 0])
    np.testing.assert_allclose(mapped.mean(0), ref.mean(0), atol=1e-4)
    np.testing.assert_allclose(mapped.std(0, ddof=1), ref.std(0, ddof=1), rtol=1e-3)
    assert accuracy(head, device, y_device) > accuracy(factory, device, y_device) + 0.15


def test_temperature_fit_lowers_confidence_of_an_overconfident_head(factory: Head) -> None:
    x, y = blobs(50, seed=50, drifted=True)
    sharp = factory.with_temperature(0.1)
    fitted = fit_temperature(sharp, x, y)
    assert fitted.temperature > 0.5
    assert (fitted.logits(x).argmax(1) == sharp.logits(x).argmax(1)).all()


def test_binomial_tail_matches_direct_sum() -> None:
    from math import comb

    direct = sum(comb(8, i) * 0.25**i * 0.75 ** (8 - i) for i in range(6, 9))
    assert binomial_tail(6, 8, 0.25) == pytest.approx(direct)
    assert binomial_tail(0, 8, 0.25) == 1.0
    assert 0.0 < binomial_tail(1500, 3000, 0.5) < 1.0


def test_bad_inputs_name_the_problem(factory: Head) -> None:
    x, y = blobs(3, seed=60)
    with pytest.raises(ValueError, match=r"shape \(N >= 1, 16\)"):
        calibrate(factory, factory, x[:, :5], y)
    with pytest.raises(ValueError, match=r"class indices in \[0, 4\), got \[7\]"):
        calibrate(factory, factory, x, np.where(y == 3, 7, y))
    with pytest.raises(ValueError, match="one entry per window"):
        calibrate(factory, factory, x, y, order=np.arange(3))

"""How far a device's labels reach: its radius, which windows it covers, how it is stored."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edge_agent.calibration.headstore import CommitMeta, HeadStore
from edge_agent.calibration.reach import PER_CLASS, LabelReach
from edge_agent.calibration.refit import calibrate
from edge_agent.pipeline.head import Head
from tests.edge_agent.calibration.test_device_template import device


def test_the_radius_is_the_farthest_labeled_window_from_its_nearest_labeled_neighbour() -> None:
    views = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [10.0, 0.0], [10.0, 0.5]])
    reach = LabelReach.of(views, np.array([0, 0, 0, 1, 1]))
    assert reach.radius == pytest.approx(2.0)  # [3, 0] to [1, 0]; class 1 lies 0.5 apart
    covered = reach.covers(np.array([[5.0, 0.0], [5.1, 0.0], [10.0, 2.0], [-2.0, 0.0]]))
    assert covered.tolist() == [True, False, True, True]


def test_across_classes_is_not_within_a_class() -> None:
    """Two classes far apart, each labeled tightly: the space between them is no one's."""
    views = np.array([[0.0], [0.1], [10.0], [10.1]])
    reach = LabelReach.of(views, np.array([0, 0, 1, 1]))
    assert reach.radius == pytest.approx(0.1)
    assert reach.covers(np.array([[5.0], [0.05]])).tolist() == [False, True]


def test_a_class_labeled_once_reaches_half_way_to_the_nearest_other_label() -> None:
    views = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 10.0]])
    reach = LabelReach.of(views, np.array([0, 1, 2]))
    assert reach.radius == pytest.approx(5.0)  # [0, 10] lies 10 from [0, 0]; the others 4 apart
    assert reach.covers(np.array([[0.0, 4.9], [0.0, -4.9], [9.1, 0.0]])).tolist() == [
        True,
        True,
        False,
    ]
    one = LabelReach.of(views[:1], np.array([0]))  # a single window: itself only
    assert one.radius == 0.0 and one.covers(np.array([[0.0, 0.0], [0.0, 0.1]])).tolist() == [
        True,
        False,
    ]


def test_a_large_class_keeps_its_windows_spread_evenly() -> None:
    rng = np.random.default_rng(0)
    views = rng.normal(size=(1003, 8))
    labels = np.r_[np.zeros(1000, int), np.ones(3, int)]
    reach = LabelReach.of(views, labels)
    assert len(reach.views) == PER_CLASS + 3
    np.testing.assert_array_equal(reach.views[0], views[0].astype(np.float32))  # first and last
    np.testing.assert_array_equal(reach.views[PER_CLASS - 1], views[999].astype(np.float32))
    assert reach.covers(views[1000:]).all()


@settings(max_examples=50, deadline=None)
@given(
    views=arrays(np.float32, (6, 4), elements=st.floats(-1, 1, width=32)),
    labels=arrays(np.int64, 6, elements=st.integers(0, 2)),
)
def test_every_labeled_window_lies_within_reach(views, labels) -> None:
    assert LabelReach.of(views, labels).covers(views).all()


@pytest.mark.parametrize(
    ("views", "radius", "match"),
    [
        (np.zeros((0, 4)), 1.0, "finite views"),
        (np.array([[0.0, np.nan]]), 1.0, "finite views"),
        (np.zeros(4), 1.0, "finite views"),
        (np.zeros((1, 4)), -1.0, "radius"),
        (np.zeros((1, 4)), float("inf"), "radius"),
    ],
)
def test_a_malformed_reach_is_refused_by_field(views, radius, match) -> None:
    with pytest.raises(ValueError, match=match):
        LabelReach(views, radius)


def test_a_refit_carries_the_reach_of_its_labels_and_never_inherits_one(factory) -> None:
    emb, views, y, t = device(8, seed=2)
    head = calibrate(factory, factory, emb, y, views=views, order=t).head
    assert head.reach is not None and head.reach.covers(views).all()
    expected = LabelReach.of(views, y)
    np.testing.assert_array_equal(head.reach.views, expected.views)
    assert head.reach.radius == pytest.approx(expected.radius)
    _, far, _, _ = device(50, seed=9)
    assert not head.reach.covers(far + 3.0).any()  # another machine's spectra
    again = calibrate(head, factory, emb + 4.0, y, order=t)  # labeled without views
    assert again.accepted and again.head.reach is None


def test_the_reach_is_saved_verified_and_rolled_back_with_its_head(factory, tmp_path) -> None:
    emb, views, y, t = device(8, seed=2)
    head = calibrate(factory, factory, emb, y, views=views, order=t).head
    store = HeadStore(tmp_path / "heads")
    store.init_from_factory(factory, "1")
    store.commit(head, CommitMeta(n_samples=len(y)))
    stored = HeadStore(tmp_path / "heads").current()[1].reach
    assert stored is not None and stored.radius == head.reach.radius
    np.testing.assert_array_equal(stored.views, head.reach.views)
    store.rollback()
    assert store.current()[1].reach is None


def test_a_head_file_with_half_a_reach_is_refused_by_name(factory, tmp_path) -> None:
    emb, views, y, t = device(8, seed=2)
    arrays_ = calibrate(factory, factory, emb, y, views=views, order=t).head.to_arrays()
    del arrays_["reach_radius"]
    np.savez(tmp_path / "head.npz", **arrays_)
    with pytest.raises(ValueError, match="reach_radius"):
        Head.load(tmp_path / "head.npz")

"""Pool windows labeled by their envelope spectra: only clear lines, only classes the task has,
the clearest first, never a window of unknown speed."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.contract.preprocess import frame
from edge_agent.physics.bearing_sim import SKF_6205, Conditions, simulate
from edge_agent.physics.evidence import STRONGEST_DB
from edge_agent.physics.view import default_band, line_view
from train.line_labels import clear_line_labels, line_scores, record_line_labels
from train.splits import WindowSet

FS, W = 12_000, 2048
CLASSES = ["normal", "inner_race", "outer_race", "ball"]


@pytest.fixture(scope="module")
def windows() -> WindowSet:
    """12 windows each of a healthy, an inner-race and an outer-race bearing at 1,797 rpm; the
    faults from mild to clear (severity rises through the record)."""
    parts, labels = [], []
    for label, fault in enumerate(["normal", "inner_race", "outer_race"]):
        for severity in (0.1, 0.3, 0.6):
            x = simulate(Conditions(fault=fault, severity=severity), 4 * W / FS, FS, seed=label)
            parts.append(frame(x, W, W))
            labels += [label] * 4
    x = np.concatenate(parts)[:, None, :]
    return WindowSet(x, np.array(labels), [], np.full(len(x), 1797.0 / 60))


def test_clear_lines_label_the_fault_windows_right_and_leave_healthy_ones(windows) -> None:
    found, labels = clear_line_labels(windows, CLASSES, SKF_6205, FS, per_class=100)
    assert len(found) > 0 and set(labels) == {1, 2}
    np.testing.assert_array_equal(labels, windows.y[found])  # every label right
    assert not np.isin(found, np.flatnonzero(windows.y == 0)).any()  # no healthy window


def test_at_most_per_class_are_taken_the_clearest_first(windows) -> None:
    found, labels = clear_line_labels(windows, CLASSES, SKF_6205, FS, per_class=2)
    assert np.bincount(labels, minlength=4).tolist() == [0, 2, 2, 0]
    view = line_view(windows.x, FS, windows.shaft_hz, SKF_6205, default_band(FS))
    level = line_scores(view)[:, :3].max(axis=1)  # bpfo, bpfi, bsf
    for cls in (1, 2):
        every, _ = clear_line_labels(windows, CLASSES, SKF_6205, FS, per_class=100)
        of_class = every[windows.y[every] == cls]
        taken = found[labels == cls]
        assert level[taken].min() >= level[np.setdiff1d(of_class, taken)].max()
        assert level[taken].min() >= STRONGEST_DB


def test_no_label_without_a_speed_a_budget_or_a_class_a_line_names(windows) -> None:
    unknown = WindowSet(windows.x, windows.y, [], np.full(len(windows), np.nan))
    untracked = WindowSet(windows.x, windows.y)
    sizes = ["normal", "inner_race_007", "outer_race_007", "ball_007"]
    for ws, names, budget in (
        (unknown, CLASSES, 100),
        (untracked, CLASSES, 100),
        (windows, sizes, 100),  # a line names a location, not a defect size
        (windows, CLASSES, 0),
        (WindowSet.empty(W), CLASSES, 100),
    ):
        found, labels = clear_line_labels(ws, names, SKF_6205, FS, budget)
        assert len(found) == len(labels) == 0
    only_inner = ["normal", "inner_race"]  # an outer-race line labels nothing here
    found, labels = clear_line_labels(windows, only_inner, SKF_6205, FS, 100)
    assert set(labels) == {1} and (windows.y[found] == 1).all()


def test_a_window_of_unknown_speed_among_known_ones_is_skipped(windows) -> None:
    speeds = windows.shaft_hz.copy()
    speeds[windows.y == 1] = np.nan
    found, labels = clear_line_labels(
        WindowSet(windows.x, windows.y, [], speeds), CLASSES, SKF_6205, FS, 100
    )
    assert set(labels) == {2} and (windows.y[found] == 2).all()


SPEEDS = [np.nan, np.inf, -30.0, 0.0, 1e-3, 5.0, 29.95, 1e6]
DAMAGE = ["none", "nan", "inf", "flat", "clipped", "huge"]


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    cases=st.lists(st.tuples(st.sampled_from(SPEEDS), st.sampled_from(DAMAGE)), max_size=4),
    per_class=st.integers(0, 3),
)
def test_any_window_and_speed_gives_labels_within_bounds_never_an_error(
    windows, seed, cases, per_class
) -> None:
    """Corrupt windows and nonsense speeds beside real fault windows: never an exception, at
    most per_class labels of a class the task has, never a window without a usable speed."""
    rng = np.random.default_rng(seed)
    x, speeds = [windows.x[:6]], [windows.shaft_hz[:6]]  # 6 real windows first
    for speed, damage in cases:
        w = rng.standard_normal(W).astype(np.float32)
        w = {
            "nan": np.where(np.arange(W) == 7, np.nan, w),
            "inf": np.where(np.arange(W) == 7, np.inf, w),
            "flat": np.zeros(W),
            "clipped": np.clip(w * 100, -1, 1),
            "huge": w * 1e30,
        }.get(damage, w)
        x.append(np.asarray(w, np.float32)[None, None, :])
        speeds.append(np.array([speed]))
    ws = WindowSet(
        np.concatenate(x), np.zeros(6 + len(cases), np.int64), [], np.concatenate(speeds)
    )
    found, labels = clear_line_labels(ws, CLASSES, SKF_6205, FS, per_class)
    assert len(found) == len(labels) == len(set(found.tolist()))
    assert set(labels.tolist()) <= {1, 2, 3}
    assert all(np.sum(labels == c) <= per_class for c in (1, 2, 3))
    usable = np.isfinite(ws.shaft_hz) & (ws.shaft_hz > 0)
    assert usable[found].all()
    named = WindowSet(ws.x, ws.y, [f"r{i % 2}" for i in range(len(ws))], ws.shaft_hz)
    by_record, record_labels = record_line_labels(named, CLASSES, SKF_6205, FS, per_class)
    every = dict(zip(*clear_line_labels(named, CLASSES, SKF_6205, FS, len(ws)), strict=True))
    assert all(every[i] == c for i, c in zip(by_record, record_labels, strict=True))
    assert all(np.sum(record_labels == c) <= per_class for c in (1, 2, 3))


def with_records(windows: WindowSet) -> WindowSet:
    """The fixture's windows as five records: two inner-race ones (4 and 8 windows), an outer-race
    one (8), a record of 6 healthy and then 4 outer-race windows (the line in 40 % of it) and a
    healthy one."""
    names = {
        "ir-a": [12, 13, 14, 15],
        "ir-b": list(range(16, 24)),
        "or-b": list(range(28, 36)),
        "mixed": [0, 1, 2, 3, 4, 5, 24, 25, 26, 27],
        "healthy": list(range(6, 12)),
    }
    order = [i for idx in names.values() for i in idx]
    ids = [name for name, idx in names.items() for _ in idx]
    return WindowSet(windows.x[order], windows.y[order], ids, windows.shaft_hz[order])


def test_record_labels_come_from_records_mostly_showing_the_line_and_are_right(windows) -> None:
    ws = with_records(windows)
    assert len(clear_line_labels(ws, CLASSES, SKF_6205, FS, 100)[0]) == 24  # mixed's 4 too
    found, labels = record_line_labels(ws, CLASSES, SKF_6205, FS, per_class=100)
    np.testing.assert_array_equal(labels, ws.y[found])
    taken = {ws.record_ids[i] for i in found}
    assert taken == {"ir-a", "ir-b", "or-b"}  # not the record whose line shows in 40 %
    assert np.bincount(labels, minlength=4).tolist() == [0, 12, 8, 0]


def test_record_labels_take_turns_over_records_each_clearest_first(windows) -> None:
    ws = with_records(windows)
    found, labels = record_line_labels(ws, CLASSES, SKF_6205, FS, per_class=6)
    inner = found[labels == 1]
    assert [ws.record_ids[i] for i in inner].count("ir-a") == 3  # 3 of each, not 6 of ir-b
    assert [ws.record_ids[i] for i in inner].count("ir-b") == 3
    level = line_scores(line_view(ws.x, FS, ws.shaft_hz, SKF_6205, default_band(FS)))[:, 1]
    for record in ("ir-a", "ir-b"):
        own = np.array([i for i in range(len(ws)) if ws.record_ids[i] == record])
        chosen = np.array([i for i in inner if ws.record_ids[i] == record])
        assert level[chosen].min() >= level[np.setdiff1d(own, chosen)].max()


def test_record_labels_need_record_names_and_a_budget(windows) -> None:
    ws = with_records(windows)
    for unnamed, budget in ((windows, 100), (ws, 0)):
        found, labels = record_line_labels(unnamed, CLASSES, SKF_6205, FS, budget)
        assert len(found) == len(labels) == 0

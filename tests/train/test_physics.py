"""The recipe's physics view: windows carry their record's shaft speed, the head is kept only
where it proves reliable on the labeled data, and fusion leaves windows of unknown speed alone."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edge_agent.physics.view import N_FEATURES
from train.config import ConfigError, load_config
from train.data import build_split
from train.physics import PhysicsFusion, fit_physics, window_view
from train.records import Record
from train.splits import WindowSet, time_blocks, windows_of

SMALL = {
    "data": "sim-reference",
    "labels_per_class": 20,
    "unlabeled_windows": 120,
    "sim_seconds_per_record": 2.0,
}


@pytest.fixture(scope="module")
def sim():
    cfg = load_config(None, None, **SMALL)
    return cfg, build_split(cfg)


def test_windows_carry_their_record_speed(sim) -> None:
    _, split = sim
    assert np.allclose(split.labeled.shaft_hz, 1500 / 60)  # the lab rig
    test = split.test.shaft_hz
    assert test is not None and np.isfinite(test).all()
    assert 20.0 <= test.min() < test.max() <= 30.0  # production: 1200-1800 rpm
    record = Record("r", np.zeros(12_000, np.float32), 12_000, "normal", {"rpm": 1797.0})
    blocks = time_blocks(record, 0, 1024)
    assert {s.shaft_hz for s in blocks.values()} == {1797.0 / 60}
    no_rpm = Record("r", np.zeros(12_000, np.float32), 12_000, "normal", {"rpm": "n/a"})
    assert np.isnan(
        windows_of(time_blocks(no_rpm, 0, 1024)["train"], 1024, 512, "zscore").shaft_hz
    ).all()


def test_concat_keeps_speeds_only_when_every_part_has_them(sim) -> None:
    _, split = sim
    both = WindowSet.concat([split.labeled, split.val], 2048)
    assert both.shaft_hz is not None and len(both.shaft_hz) == len(both)
    untracked = WindowSet(split.val.x, split.val.y)
    assert WindowSet.concat([split.labeled, untracked], 2048).shaft_hz is None


def test_the_head_is_kept_on_the_simulator_and_fuses_right(sim) -> None:
    cfg, split = sim
    fusion, report = fit_physics(cfg, split.labeled, split.val, 4)
    assert fusion is not None and report["used"], report
    assert report["cv_accuracy"] >= 0.95 and report["val_accuracy"] >= 0.95
    # the lines alone (a uniform model) name the fault on production records at other speeds
    uniform = np.full((len(split.test), 4), 0.25)
    fused = fusion.fuse(uniform, split.test)
    assert (fused.argmax(1) == split.test.y).mean() > 0.9


def two_classes(ws: WindowSet) -> WindowSet:
    """The normal and inner-race windows only (labels 0 and 1): a two-class task."""
    keep = np.flatnonzero(ws.y < 2)
    ids = [ws.record_ids[i] for i in keep] if ws.record_ids else []
    return WindowSet(ws.x[keep], ws.y[keep], ids, ws.shaft_hz[keep])


def test_a_two_class_task_gets_a_head_with_both_classes(sim) -> None:
    cfg, split = sim  # scikit-learn keeps one row of weights for two classes
    fusion, report = fit_physics(cfg, two_classes(split.labeled), two_classes(split.val), 2)
    assert fusion is not None and report["used"], report
    assert fusion.head.num_classes == 2 and fusion.head.weights.shape == (2, N_FEATURES)
    test = two_classes(split.test)
    fused = fusion.fuse(np.full((len(test), 2), 0.5), test)
    assert (fused.argmax(1) == test.y).mean() > 0.9


def test_it_is_refused_where_it_does_not_hold_and_says_why(sim) -> None:
    cfg, split = sim
    rng = np.random.default_rng(0)
    shuffled = replace(split.labeled, y=rng.permutation(split.labeled.y))
    fusion, report = fit_physics(cfg, shuffled, split.val, 4)
    assert fusion is None and "cross-validated accuracy" in report["reason"]
    no_speed = replace(split.labeled, shaft_hz=None)
    assert "no shaft speed" in fit_physics(cfg, no_speed, split.val, 4)[1]["reason"]
    off = cfg.model_copy(update={"physics": False})
    assert "physics = false" in fit_physics(off, split.labeled, split.val, 4)[1]["reason"]


def test_windows_of_unknown_speed_keep_the_model_probabilities(sim) -> None:
    cfg, split = sim
    fusion, _ = fit_physics(cfg, split.labeled, split.val, 4)
    assert isinstance(fusion, PhysicsFusion)
    ws = split.test
    speeds = ws.shaft_hz.copy()
    speeds[::2] = np.nan
    half = replace(ws, shaft_hz=speeds)
    view = window_view(half, cfg.sample_rate_hz, cfg.bearing, fusion.head.band_hz)
    assert view.shape == (len(ws), N_FEATURES) and np.isnan(view[::2]).all()
    model = np.tile([0.1, 0.6, 0.2, 0.1], (len(ws), 1))
    fused = fusion.fuse(model, half)
    assert np.allclose(fused[::2], model[::2])
    assert not np.allclose(fused[1::2], model[1::2])


def test_an_unknown_bearing_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"^bearing: .*unknown bearing designation"):
        load_config(None, None, bearing="9999")

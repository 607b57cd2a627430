"""The physics view (defect-line levels at the shaft speed) and its head fused with the model's:
the right line stands out at any speed and on any machine, bad windows read "no line", and the
bundle and the agent use the head only as far as they can."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_agent.agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.contract.bundle import BundleError, read_manifest, verify
from edge_agent.mqtt.memory import MemoryLink
from edge_agent.physics.bearing_sim import SKF_6205, BearingSimulator, Conditions
from edge_agent.physics.evidence import HARMONICS, LINES
from edge_agent.physics.view import N_FEATURES, PhysicsHead, default_band, line_view
from tests.edge_agent.bundle_fixture import (
    CLASS_NAMES,
    SEVERITY,
    bundle_with,
    simulator_source,
    write_config,
)

FS = 12_000
BAND = default_band(FS)
FIRST_HARMONIC = {name: i * len(HARMONICS) for i, name in enumerate(LINES)}  # column of 1x


def fault_windows(fault: str, rpm: float, machine: int, n: int = 6) -> np.ndarray:
    sim = BearingSimulator(
        Conditions(rpm=rpm, fault=fault, severity=0.5), FS, seed=machine + 50, machine_seed=machine
    )
    return sim.read(n * 2048).reshape(n, 2048)


@pytest.mark.parametrize(("fault", "line"), [("inner_race", "bpfi"), ("outer_race", "bpfo")])
@pytest.mark.parametrize(("rpm", "machine"), [(1200.0, 1), (1500.0, 2), (1800.0, 3)])
def test_the_fault_line_stands_out_at_any_speed_and_on_any_machine(fault, line, rpm, machine):
    view = line_view(fault_windows(fault, rpm, machine), FS, rpm / 60, SKF_6205, BAND)
    assert view.shape == (6, N_FEATURES) and view.dtype == np.float32
    first = view[:, [FIRST_HARMONIC[name] for name in ("bpfo", "bpfi")]]
    own = FIRST_HARMONIC[line]
    other = FIRST_HARMONIC["bpfi" if line == "bpfo" else "bpfo"]
    assert np.median(view[:, own]) > 10.0, first  # > 3x its neighbourhood
    assert (view[:, own] > view[:, other]).all(), first


def test_a_healthy_machine_shows_no_line() -> None:
    view = line_view(fault_windows("normal", 1500.0, 4, n=20), FS, 25.0, SKF_6205, BAND)
    assert np.median(view[:, list(FIRST_HARMONIC.values())]) < 8.0


def test_one_speed_per_window_and_a_designation_work() -> None:
    x = np.concatenate(
        [fault_windows("inner_race", 1200.0, 1, 2), fault_windows("inner_race", 1800.0, 1, 2)]
    )
    speeds = np.array([20.0, 20.0, 30.0, 30.0])
    per_window = line_view(x[:, None, :], FS, speeds, "6205", BAND)
    bpfi = [FIRST_HARMONIC["bpfi"] + h for h in range(len(HARMONICS))]
    assert np.median(per_window[:, FIRST_HARMONIC["bpfi"]]) > 10.0
    wrong = line_view(x, FS, 25.0, "6205", BAND)  # 20 % off: the lines fall outside +-3 %
    assert wrong[:, bpfi].mean() < per_window[:, bpfi].mean() - 3.0
    none = line_view(x[:0, None, :], FS, 25.0, "6205", BAND)  # a split with no validation
    assert none.shape == (0, N_FEATURES)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        (2, 512),
        elements=st.one_of(
            st.floats(-1e6, 1e6, width=32), st.just(np.nan), st.just(np.inf), st.just(0.0)
        ),
    )
)
def test_any_window_gives_finite_levels_and_broken_ones_read_no_line(x) -> None:
    view = line_view(x, FS, 25.0, SKF_6205, BAND)
    assert view.shape == (2, N_FEATURES) and np.isfinite(view).all()
    for row, window in zip(view, x, strict=True):
        if not np.isfinite(window).all() or np.ptp(window) == 0:
            assert not row.any()


# -- the head ----------------------------------------------------------------------------------


def head(weights=None, bias=None, temperature: float = 1.0, classes: int = 3) -> PhysicsHead:
    w = np.zeros((classes, N_FEATURES)) if weights is None else weights
    b = np.zeros(classes) if bias is None else bias
    return PhysicsHead(np.asarray(w), np.asarray(b), BAND, temperature)


def test_a_neutral_head_leaves_the_model_alone_and_a_strong_one_decides() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    view = np.zeros((2, N_FEATURES))
    assert np.allclose(head().fuse(probs, view), probs)
    w = np.zeros((3, N_FEATURES))
    w[1, FIRST_HARMONIC["bpfi"]] = 1.0  # 20 dB of BPFI -> +20 for inner race
    view[:, FIRST_HARMONIC["bpfi"]] = 20.0
    fused = head(w).fuse(probs, view)
    assert (fused.argmax(1) == 1).all() and np.allclose(fused.sum(1), 1.0)
    softer = head(w, temperature=10.0).fuse(probs, view)
    assert (softer.max(1) < fused.max(1)).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weights": np.zeros((3, 5))}, "weights"),
        ({"bias": np.zeros(2)}, "bias"),
        ({"weights": np.full((3, N_FEATURES), np.nan)}, "finite"),
        ({"temperature": 0.0}, "temperature"),
    ],
)
def test_a_malformed_head_is_refused(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        head(**kwargs)


def test_the_head_round_trips_and_refuses_features_it_cannot_compute() -> None:
    h = head(np.arange(3 * N_FEATURES).reshape(3, -1) / 10, np.array([1.0, 2.0, 3.0]), 2.0)
    back = PhysicsHead.from_dict(json.loads(json.dumps(h.to_dict())))
    assert np.array_equal(back.weights, h.weights) and back.temperature == 2.0
    with pytest.raises(ValueError, match="cannot compute"):
        PhysicsHead.from_dict({**h.to_dict(), "features": "envelope-lines-v9"})


# -- in a bundle, on the agent -----------------------------------------------------------------


def outer_race_physics() -> dict:
    """A head that says outer race whatever the window (bias only): who listens is visible."""
    bias = np.full(len(CLASS_NAMES), -30.0)
    bias[CLASS_NAMES.index("outer_race")] = 30.0
    return head(bias=bias, classes=len(CLASS_NAMES)).to_dict()


def test_a_bundle_head_for_other_classes_is_refused(agent_bundle, tmp_path) -> None:
    folder = bundle_with(agent_bundle, tmp_path / "tiny-physics", physics=head(classes=5).to_dict())
    with pytest.raises(BundleError, match="physics"):
        verify(folder)


def run_windows(tmp_path: Path, bundle: Path, n: int, **sections) -> Agent:
    source = simulator_source([{"at_s": 0.0, "fault": "normal", "severity": SEVERITY}])
    agent = Agent(load_config(write_config(tmp_path / "dev", bundle, 1, source=source, **sections)))
    agent.link = MemoryLink()
    agent.source.start()
    while agent.windows_total < n:
        agent.channels[0].buffer.push(agent.source.read(0.5))
        agent._drain(None)
    return agent


def test_the_agent_fuses_the_physics_view_when_it_knows_the_bearing_and_speed(
    agent_bundle, tmp_path, caplog
) -> None:
    folder = bundle_with(agent_bundle, tmp_path / "tiny-physics", physics=outer_race_physics())
    assert read_manifest(folder).physics is not None
    bearing = {"designation": "6205", "shaft_rpm": 1500.0}
    with run_windows(tmp_path / "with", folder, 30, bearing=bearing) as agent:
        assert agent.channels[0].decisions.state == "outer_race"
    caplog.set_level(logging.WARNING)
    with run_windows(tmp_path / "without", folder, 30) as agent:  # no [bearing]: model only
        assert agent.channels[0].decisions.state == "normal"
    assert "add a [bearing] section" in caplog.text

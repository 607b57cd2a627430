"""Physics evidence on a live channel: the stream, who decides (basis), and the agent's events."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.agent.agent import Agent
from edge_agent.calibration.reach import LabelReach
from edge_agent.config import BearingConfig, load_config
from edge_agent.mqtt.memory import MemoryLink
from edge_agent.physics.bearing_sim import BearingSimulator, Conditions
from edge_agent.physics.stream import PERSIST, EvidenceStream
from tests.edge_agent.bundle_fixture import (
    HOP,
    SAMPLE_RATE_HZ,
    SEED,
    SEVERITY,
    WINDOW,
    simulator_source,
    write_config,
)

BEARING = {"designation": "6205", "shaft_rpm": 1797.0}


def stream_of(fault: str, seconds: float, **bearing) -> EvidenceStream:
    stream = EvidenceStream(BearingConfig(**(BEARING | bearing)), SAMPLE_RATE_HZ)
    sim = BearingSimulator(Conditions(fault=fault, severity=SEVERITY), SAMPLE_RATE_HZ, seed=4,
                           machine_seed=SEED)  # fmt: skip
    x = sim.read(int(seconds * SAMPLE_RATE_HZ))
    stream.feed(x[:WINDOW], WINDOW / SAMPLE_RATE_HZ)
    for end in range(WINDOW + HOP, len(x) + 1, HOP):
        stream.feed(x[end - HOP : end], end / SAMPLE_RATE_HZ)
    return stream


def test_the_known_speed_is_configured_measured_or_estimated_in_that_order() -> None:
    configured = EvidenceStream(BearingConfig(**BEARING), SAMPLE_RATE_HZ)
    configured.measured_shaft_hz = 10.0
    assert configured.known_shaft_hz() == pytest.approx(1797.0 / 60)
    free = EvidenceStream(BearingConfig(designation="6205"), SAMPLE_RATE_HZ)
    assert free.known_shaft_hz() is None  # nothing read yet
    free.measured_shaft_hz = 29.5  # a tachometer channel
    assert free.known_shaft_hz() == 29.5
    estimated = stream_of("inner_race", 3.0, shaft_rpm=None)
    assert estimated.latest is not None
    assert estimated.known_shaft_hz() == pytest.approx(1797.0 / 60, rel=0.02)


@pytest.mark.parametrize("fault", ["outer_race", "inner_race"])
def test_a_defect_becomes_a_clear_line_of_its_class(fault):
    stream = stream_of(fault, 2.0 + PERSIST + 0.5)
    assert stream.latest is not None and stream.latest.strongest == fault
    assert stream.clear_class == fault


def test_a_healthy_bearing_has_no_clear_line_and_the_model_decides():
    stream = stream_of("normal", 2.0 + PERSIST + 0.5)
    assert stream.clear_class is None
    assert stream.basis("outer_race", factory_head=True, labeled=False) == ("model", None)


@pytest.mark.parametrize(
    ("follow", "factory_head", "labeled", "decides"),
    [
        ("unlabeled", True, False, "evidence"),
        ("unlabeled", False, False, "evidence"),  # calibrated, the window beyond the labels
        ("unlabeled", False, True, "model"),  # the operator's labels vouch for the head here
        ("uncalibrated", True, False, "evidence"),
        ("uncalibrated", False, False, "model"),
        ("never", True, False, "model"),
        ("never", False, False, "model"),
    ],
)
def test_who_decides_follows_calibration_the_labels_and_the_config(
    follow, factory_head, labeled, decides
):
    stream = stream_of("outer_race", 2.0 + PERSIST + 0.5, follow_evidence=follow)
    assert stream.basis("outer_race", factory_head, labeled) == ("both", None)
    override = "outer_race" if decides == "evidence" else None
    assert stream.basis("normal", factory_head, labeled) == (decides, override)


def test_bearing_config_names_the_problem():
    with pytest.raises(ValueError, match="known: 6203, 6204, 6205"):
        BearingConfig(designation="7205")
    with pytest.raises(ValueError, match=r"bearing\.designation or all of"):
        BearingConfig(n_balls=9, shaft_rpm=1797.0)


def test_fault_events_carry_the_evidence_and_who_decided(tmp_path, agent_bundle):
    schedule = [
        {"at_s": 0.0, "fault": "normal", "severity": SEVERITY},
        {"at_s": 6.0, "fault": "outer_race", "severity": SEVERITY},
    ]
    path = write_config(tmp_path / "dev", agent_bundle, 1, simulator_source(schedule),
                        bearing=BEARING)  # fmt: skip
    with Agent(load_config(path)) as agent:
        agent.link = MemoryLink()
        agent.source.start()
        while agent.windows_total < int(12.0 * SAMPLE_RATE_HZ / HOP):
            agent.channels[0].buffer.push(agent.source.read(1.0))
            agent._drain(None)
    events = agent.link.events
    fault = next(e for e in events if e.state == "outer_race" and e.kind == "state_change")
    assert fault.basis == "model" and fault.evidence is not None  # raised within 0.1 s
    confirm = next(e for e in events if e.kind == "evidence")  # the line follows in seconds
    assert confirm.severity == "info" and "confirms outer_race: BPFO line" in confirm.message
    assert confirm.evidence["strongest"] == "outer_race"
    assert confirm.evidence["lines"]["bpfo"]["score_db"] > 10
    assert np.isclose(confirm.evidence["shaft_hz"], 1797.0 / 60)


def test_an_uncalibrated_head_that_misses_the_fault_is_overruled_by_a_clear_line(
    tmp_path, agent_bundle
):
    """Day one on a foreign machine: the factory head calls everything normal; the envelope
    spectrum shows an outer-race line, so the published state follows it and says so."""
    from dataclasses import replace

    schedule = [{"at_s": 0.0, "fault": "outer_race", "severity": SEVERITY}]
    path = write_config(tmp_path / "dev", agent_bundle, 1, simulator_source(schedule),
                        bearing=BEARING)  # fmt: skip
    with Agent(load_config(path)) as agent:
        blind = replace(agent.channels[0].head, b2=np.array([50.0, 0.0, 0.0], np.float32))
        agent.channels[0].head = agent.model.factory = blind  # a factory head that says "normal"
        agent.link = MemoryLink()
        agent.source.start()
        while agent.windows_total < int(8.0 * SAMPLE_RATE_HZ / HOP):
            agent.channels[0].buffer.push(agent.source.read(1.0))
            agent._drain(None)
    states = [(e.state, e.basis) for e in agent.link.events if e.kind == "state_change"]
    assert states[0] == ("normal", "model")
    assert ("outer_race", "evidence") in states
    fault = next(e for e in agent.link.events if e.state == "outer_race")
    assert "decided by the envelope spectrum" in fault.message


@pytest.mark.parametrize(
    ("reach", "published"),
    [
        (None, "normal"),  # refitted on labels without spectral views: the labels vouch
        (LabelReach(np.zeros((1, 512), np.float32), 1e9), "normal"),  # every window like a label
        (LabelReach(np.zeros((1, 512), np.float32), 0.0), "outer_race"),  # none: the line decides
    ],
)
def test_a_calibrated_head_is_overruled_by_a_clear_line_only_beyond_its_labels(
    tmp_path, agent_bundle, reach, published
):
    """A head refitted on this device says "normal"; an outer-race line stands out. Where its
    labels reach, the operator's word stands; beyond them (another bearing, size or load than
    the labeled ones) the line decides, at the config's default."""
    from dataclasses import replace

    schedule = [{"at_s": 0.0, "fault": "outer_race", "severity": SEVERITY}]
    path = write_config(tmp_path / "dev", agent_bundle, 1, simulator_source(schedule),
                        bearing=BEARING)  # fmt: skip
    with Agent(load_config(path)) as agent:
        channel = agent.channels[0]
        channel.head = replace(channel.head, b2=np.array([50.0, 0.0, 0.0], np.float32), reach=reach)
        assert not channel.factory_head
        agent.link = MemoryLink()
        agent.source.start()
        while agent.windows_total < int(8.0 * SAMPLE_RATE_HZ / HOP):
            channel.buffer.push(agent.source.read(1.0))
            agent._drain(None)
    states = [(e.state, e.basis) for e in agent.link.events if e.kind == "state_change"]
    assert states[0] == ("normal", "model")
    assert states[-1][0] == published
    assert (("outer_race", "evidence") in states) == (published == "outer_race")
    if published == "outer_race":
        fault = next(e for e in agent.link.events if e.state == "outer_race")
        assert "unlike every window labeled on this device" in fault.message


@pytest.mark.parametrize("calibrated", [False, True])
def test_a_clear_line_corrects_a_wrong_fault_class_at_once_only_on_the_factory_head(
    tmp_path, agent_bundle, calibrated
):
    """A head calls an outer-race defect inner race. Uncalibrated: the line moves the state to
    outer race within seconds, not after the 60 s dwell a sideways change otherwise needs. A
    head calibrated here, the windows beyond its labels: the line decides each window, but the
    state changes sideways only after the dwell (a line that comes and goes on another fault,
    as on CWRU's 0.021" ball bearings, does not flip it)."""
    from dataclasses import replace

    schedule = [{"at_s": 0.0, "fault": "outer_race", "severity": SEVERITY}]
    path = write_config(tmp_path / "dev", agent_bundle, 1, simulator_source(schedule),
                        bearing=BEARING)  # fmt: skip
    with Agent(load_config(path)) as agent:
        channel = agent.channels[0]
        wrong = replace(channel.head, b2=np.array([0.0, 50.0, 0.0], np.float32))
        if calibrated:  # a refitted head whose labels reach none of these windows
            channel.head = replace(wrong, reach=LabelReach(np.zeros((1, 512), np.float32), 0.0))
        else:
            channel.head = agent.model.factory = wrong  # says inner_race, confidently
        agent.link = MemoryLink()
        agent.source.start()
        while agent.windows_total < int(10.0 * SAMPLE_RATE_HZ / HOP):
            channel.buffer.push(agent.source.read(1.0))
            agent._drain(None)
        steered = channel.basis
    changes = [(e.state, e.basis) for e in agent.link.events if e.kind == "state_change"]
    assert changes[0] == ("inner_race", "model")
    assert steered == "evidence"  # the line decides the windows either way
    assert changes[1:2] == ([] if calibrated else [("outer_race", "evidence")])

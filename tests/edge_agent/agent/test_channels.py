"""Several bearings on one agent: own states, own faults, own MQTT subtrees, one backend call."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.agent.agent import Agent
from edge_agent.config import ConfigError, load_config
from tests.edge_agent.agent.test_agent import NO_DRIFT, running, send
from tests.edge_agent.bundle_fixture import (
    SEVERITY,
    simulator_source,
    write_config,
)

NORMAL = [{"at_s": 0.0, "fault": "normal", "severity": SEVERITY}]
INNER = [{"at_s": 0.0, "fault": "inner_race", "severity": SEVERITY}]
FLAT = [  # the cable of this sensor comes off after 3 s
    {"at_s": 0.0, "fault": "normal", "severity": SEVERITY},
    {"at_s": 3.0, "gain": 1e-9, "noise_floor_g": 0.0},
]


def channel(name: str, input: int, schedule: list[dict], **fields) -> dict:
    return {"name": name, "input": input, "asset": f"pump-{name}", "schedule": schedule, **fields}


def make_agent(tmp_path, bundle, port, channels: list[dict], **overrides) -> Agent:
    overrides.setdefault("decisions", NO_DRIFT)
    path = write_config(
        tmp_path / "dev", bundle, port, source=simulator_source(NORMAL), channels=channels,
        **overrides,
    )  # fmt: skip
    return Agent(load_config(path))


def run_offline(agent: Agent, seconds: float) -> list:
    """Drive the agent's window path on its source without a broker; the published events."""
    from edge_agent.mqtt.memory import MemoryLink

    agent.link = MemoryLink()
    agent.source.start()
    rate = agent.source.sample_rate_hz
    hop = agent.model.spec.hop
    while agent.windows_total < len(agent.channels) * int(seconds * rate / hop):
        agent.push(agent.source.read(1.0))
        agent._drain()
    return agent.link.events


def test_two_channels_reach_different_states_at_once(tmp_path, agent_bundle):
    agent = make_agent(
        tmp_path, agent_bundle, 1, [channel("de", 0, NORMAL), channel("nde", 1, INNER)]
    )
    with agent:
        events = run_offline(agent, 4.0)
        de, nde = agent.channels
        assert (de.decisions.state, nde.decisions.state) == ("normal", "inner_race")
        assert de.windows_total == nde.windows_total > 0
    by_asset = {(e.asset, e.state) for e in events if e.kind == "state_change"}
    assert ("pump-de", "normal") in by_asset and ("pump-nde", "inner_race") in by_asset
    assert ("pump-de", "inner_race") not in by_asset and ("pump-nde", "normal") not in by_asset
    # each channel keeps its own state under state_dir/channels/<name>
    state = tmp_path / "dev" / "state" / "channels"
    assert (state / "de" / "heads").is_dir() and (state / "nde" / "heads").is_dir()


def test_a_sensor_fault_on_one_channel_leaves_the_other_running(tmp_path, agent_bundle):
    agent = make_agent(
        tmp_path, agent_bundle, 1, [channel("de", 0, INNER), channel("nde", 1, FLAT)]
    )
    with agent:
        events = run_offline(agent, 6.0)
        de, nde = agent.channels
        assert nde.decisions.state == "sensor_fault"
        assert de.decisions.state == "inner_race"
    faults = [e for e in events if e.kind == "sensor_fault"]
    assert faults and {e.asset for e in faults} == {"pump-nde"}
    late = [e for e in events if e.asset == "pump-de" and e.kind != "state_change"]
    assert late == [], [e.message for e in late]


def test_per_channel_sensor_and_thresholds_override_the_top_level(tmp_path, agent_bundle):
    quiet = {"sensitivity_mv_per_g": 100.0, "full_scale_volts": 5.0, "min_rms_g": 5.0}
    agent = make_agent(
        tmp_path,
        agent_bundle,
        1,
        [channel("de", 0, NORMAL, uncertain_below=0.9), channel("nde", 1, NORMAL, sensor=quiet)],
    )
    with agent:
        run_offline(agent, 2.0)
        de, nde = agent.channels
        assert de.decisions.uncertain_below == 0.9
        assert nde.decisions.state == "sensor_fault"  # its min_rms_g calls the signal dead
        assert de.decisions.state != "sensor_fault"


def test_config_refuses_repeated_channel_names_inputs_and_assets(tmp_path, agent_bundle):
    for clash in ("name", "input", "asset"):
        a, b = channel("de", 0, NORMAL), channel("nde", 1, NORMAL)
        b[clash] = a[clash]
        path = write_config(
            tmp_path / clash, agent_bundle, 1, source=simulator_source(NORMAL), channels=[a, b]
        )
        with pytest.raises(ConfigError, match=f"channels.{clash}: each channel needs its own"):
            load_config(path)


def test_each_channel_has_its_own_subtree_and_commands(tmp_path, agent_bundle, mosquitto, collect):
    collector = collect(mosquitto.port, "faultwatch/s1/#")
    agent = make_agent(
        tmp_path,
        agent_bundle,
        mosquitto.port,
        [channel("de", 0, NORMAL), channel("nde", 1, INNER)],
        telemetry_interval_s=0.3,
        commissioning={"automatic": False},
    )
    de_base, nde_base = "faultwatch/s1/pump-de/dev-test/", "faultwatch/s1/pump-nde/dev-test/"
    with agent, running(agent):
        collector.wait_for("faultwatch/s1/a1/dev-test/status", lambda p: p["status"] == "online")
        assert collector.wait_for(de_base + "state", lambda p: p["state"] == "normal")
        assert collector.wait_for(nde_base + "state", lambda p: p["state"] == "inner_race")
        assert collector.wait_for(nde_base + "telemetry", lambda p: p["windows_total"] > 0)
        status = send(collector, "status", {"id": "s1"})["data"]  # on the gateway's subtree
        assert set(status["channels"]) == {"de", "nde"}
        assert status["channels"]["nde"]["asset"] == "pump-nde"
        collector.publish(nde_base + "cmd/commission", b'{"id": "c1"}')
        done = collector.wait_for(nde_base + "cmd_result", lambda p: p["id"] == "c1")
        assert done["ok"] and "learning this device's normal" in done["message"]
        de, nde = agent.channels
        assert nde.monitor.commissioning.learning and not de.monitor.commissioning.learning
        refused = send(collector, "commission", {"id": "c2"})  # the gateway's own subtree
        assert not refused["ok"] and "pump-de, pump-nde" in refused["message"]


def test_a_replayed_column_with_nan_faults_only_its_channel(tmp_path, agent_bundle):
    """A two-column recording whose second sensor delivers NaN from 2 s (an ADC fault)."""
    from edge_agent.config import SimulatorSourceConfig
    from edge_agent.sources import SourceChannel, make_source

    sim = SimulatorSourceConfig.model_validate(simulator_source(INNER))
    source = make_source(sim, channels=[SourceChannel(0), SourceChannel(1, schedule=[])])
    with source:
        x = np.concatenate([source.read(1.0).samples for _ in range(48)])  # 4.1 s, (n, 2)
    x[24_000:, 1] = np.nan
    np.save(tmp_path / "two.npy", x)
    replay = {"type": "file", "path": str(tmp_path / "two.npy"), "sample_rate_hz": 12_000,
              "realtime": False}  # fmt: skip
    channels = [
        {"name": "de", "input": 0, "asset": "pump-de"},
        {"name": "nde", "input": 1, "asset": "pump-nde"},
    ]
    path = write_config(tmp_path / "dev", agent_bundle, 1, source=replay, channels=channels,
                        decisions=NO_DRIFT)  # fmt: skip
    with Agent(load_config(path)) as agent:
        events = run_offline(agent, 3.5)
        assert [ch.decisions.state for ch in agent.channels] == ["inner_race", "sensor_fault"]
    fault = next(e for e in events if e.kind == "sensor_fault")
    assert fault.asset == "pump-nde" and "(nan)" in fault.message

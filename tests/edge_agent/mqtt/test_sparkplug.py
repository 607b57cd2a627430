"""The Sparkplug B dialect on a real mosquitto: what a Sparkplug host would decode off the wire."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest

from edge_agent.config import MqttConfig, SparkplugConfig
from edge_agent.contract.events import FaultEvent, StateMessage, Telemetry
from edge_agent.mqtt.outbox import Outbox
from edge_agent.mqtt.sparkplug_b import BDSEQ_FILE
from edge_agent.mqtt.sparkplug_payload import decode, metric_value, parse_topic
from edge_agent.mqtt.spb_payload_pb2 import Payload

REPO = Path(__file__).resolve().parents[3]
SITE = dict(site="s1", device="gw1")


def spb_config(port: int, **sparkplug) -> MqttConfig:
    return MqttConfig(
        **SITE, asset="pump-1", port=port, keepalive_s=5, dialect="sparkplug_b",
        sparkplug=SparkplugConfig(group_id="plant", **sparkplug),
    )  # fmt: skip


def event(asset: str = "pump-1", state: str = "ball") -> FaultEvent:
    return FaultEvent(
        **SITE, asset=asset, kind="state_change", severity="alarm", state=state,
        class_name=state, confidence=0.9, probabilities={"normal": 0.1, state: 0.9},
    )  # fmt: skip


def telemetry(asset: str = "pump-1", windows: int = 1) -> Telemetry:
    return Telemetry(
        **SITE, asset=asset, rms_g=0.5, peak_g=2.0, crest_factor=4.0, kurtosis=3.1,
        inference_ms=2.0, windows_total=windows, dropped_samples=0, overruns=0, outbox_pending=0,
        velocity_rms_mm_s=1.2, iso_zone="A",
    )  # fmt: skip


class Wire:
    """What a Sparkplug host sees: each node message decoded, metric names resolved by alias."""

    def __init__(self, collector) -> None:
        self.collector = collector

    def messages(self) -> list[tuple[str, str | None, Payload, dict[str, object]]]:
        """(kind, device, payload, {name: value}) in arrival order, STATE left out."""
        aliases: dict[tuple[str | None, int], str] = {}
        out = []
        for topic, body, _ in list(self.collector.messages):
            parsed = parse_topic(topic)
            if parsed is None or "raw" not in body:
                continue
            _, kind, _, device = parsed
            payload = decode(body["raw"])
            named = {}
            for m in payload.metrics:
                if kind in ("NBIRTH", "DBIRTH"):
                    aliases[(device, m.alias)] = m.name
                named[m.name or aliases.get((device, m.alias), f"?{m.alias}")] = metric_value(m)
            out.append((kind, device, payload, named))
        return out

    def of(self, kind: str, device: str | None = None) -> list[tuple[Payload, dict]]:
        return [(p, n) for k, d, p, n in self.messages() if k == kind and d == device]

    def wait(self, wait_until, kind: str, device: str | None = None, count: int = 1, t=10.0):
        assert wait_until(lambda: len(self.of(kind, device)) >= count, t), (
            f"fewer than {count} {kind} {device or ''}: {[m[:2] for m in self.messages()]}"
        )
        return self.of(kind, device)


def kill_socket(link) -> None:
    """Drop the TCP connection without an MQTT DISCONNECT (as a crash or a cable would)."""
    link.transport._client.socket().shutdown(socket.SHUT_RDWR)


def node_seqs(wire: Wire) -> list[int]:
    return [p.seq for kind, _, p, _ in wire.messages() if kind != "NDEATH"]


def test_births_come_first_and_data_uses_aliases(
    mosquitto, collect, make_link, tmp_path, wait_until
):
    wire = Wire(collect(mosquitto.port, "spBv1.0/#"))
    link = make_link(
        spb_config(mosquitto.port), Outbox(tmp_path / "outbox.sqlite3"), assets=["pump-2"]
    )
    wire.wait(wait_until, "DBIRTH", "pump-2")
    link.publish_state(StateMessage(**SITE, asset="pump-2", state="normal", confidence=0.8))
    link.publish_telemetry(telemetry("pump-1"))
    sent = event("pump-2", "inner_race")
    link.publish_event(sent)
    wire.wait(wait_until, "DDATA", "pump-2", count=2)
    kinds = [(k, d) for k, d, _, _ in wire.messages()]
    assert kinds[:3] == [("NBIRTH", None), ("DBIRTH", "pump-1"), ("DBIRTH", "pump-2")]
    # the event's classes are new: a rebirth declares Probability/<class> before it is used
    births = wire.of("NBIRTH")
    assert len(births) == 2 and [n["bdSeq"] for _, n in births] == [0, 0]
    assert births[0][1]["Node Control/Rebirth"] is False
    assert "Probability/inner_race" in wire.of("DBIRTH", "pump-2")[1][1]
    seqs = [(k, p.seq) for k, _, p, _ in wire.messages()]
    assert seqs[0] == ("NBIRTH", 0) and all(
        s == (0 if k == "NBIRTH" else prev + 1) for (_, prev), (k, s) in pairwise(seqs)
    )
    _, dbirth = wire.of("DBIRTH", "pump-2")[0]
    assert {"State", "Confidence", "Condition/RMS g", "Drift Score", "Command/ping"} <= set(dbirth)
    data = [p for p, _ in wire.of("DDATA", "pump-2")]
    assert all(not m.name and m.alias for p in data for m in p.metrics)  # aliases only
    by_event = next(n for _, n in wire.of("DDATA", "pump-2") if "Event/JSON" in n)
    assert FaultEvent.model_validate_json(by_event["Event/JSON"]) == sent
    assert by_event["Probability/inner_race"] == pytest.approx(0.9)
    assert by_event["State"] == "inner_race" and by_event["Confidence"] == pytest.approx(0.9)
    assert not any(m.is_historical for p in data for m in p.metrics)  # sent live
    assert wait_until(lambda: wire.of("DDATA", "pump-1"), 5)
    _, condition = wire.of("DDATA", "pump-1")[0]
    assert condition["Condition/Velocity RMS mm/s"] == pytest.approx(1.2)


def test_the_will_is_an_ndeath_whose_bdseq_matches_and_grows_per_connect(
    mosquitto, collect, make_link, tmp_path, wait_until
):
    wire = Wire(collect(mosquitto.port, "spBv1.0/#"))
    link = make_link(spb_config(mosquitto.port), Outbox(tmp_path / "outbox.sqlite3"))
    wire.wait(wait_until, "DBIRTH", "pump-1")
    kill_socket(link)
    (_, death), = wire.wait(wait_until, "NDEATH")  # fmt: skip  # the broker sent the will
    births = wire.wait(wait_until, "NBIRTH", count=2)
    assert death["bdSeq"] == births[0][1]["bdSeq"] == 0
    assert births[1][1]["bdSeq"] == 1 and births[1][0].seq == 0
    assert (tmp_path / BDSEQ_FILE).read_text().strip() == "1"
    kill_socket(link)
    deaths = wire.wait(wait_until, "NDEATH", count=2)
    assert deaths[1][1]["bdSeq"] == 1


def test_bdseq_survives_a_restart_and_a_clean_close_says_ndeath(
    mosquitto, collect, make_link, tmp_path, wait_until
):
    wire = Wire(collect(mosquitto.port, "spBv1.0/#"))
    first = make_link(spb_config(mosquitto.port), Outbox(tmp_path / "outbox.sqlite3"))
    wire.wait(wait_until, "NBIRTH")
    first.close(flush_timeout_s=1)
    (_, goodbye), = wire.wait(wait_until, "NDEATH")  # fmt: skip
    assert goodbye["bdSeq"] == 0
    first.outbox.close()
    make_link(spb_config(mosquitto.port), Outbox(tmp_path / "outbox.sqlite3"))  # same state
    births = wire.wait(wait_until, "NBIRTH", count=2)
    assert [n["bdSeq"] for _, n in births] == [0, 1]


CHILD = """
import sys, time
from edge_agent.config import MqttConfig, SparkplugConfig
from edge_agent.mqtt.link import MqttLink
from edge_agent.mqtt.outbox import Outbox
cfg = MqttConfig(port=int(sys.argv[1]), site="s1", asset="pump-1", device="gw1", keepalive_s=5,
                 dialect="sparkplug_b", sparkplug=SparkplugConfig(group_id="plant"))
link = MqttLink(cfg, Outbox(sys.argv[2]), lambda command, asset: None, reconnect_min_delay_s=0.1)
while not link.connected:
    time.sleep(0.02)
print("connected", flush=True)
time.sleep(60)
"""


def test_ndeath_arrives_when_the_process_is_killed(mosquitto, collect, tmp_path, wait_until):
    wire = Wire(collect(mosquitto.port, "spBv1.0/#"))
    (tmp_path / BDSEQ_FILE).write_text("41\n")  # an earlier life of this gateway
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(mosquitto.port), str(tmp_path / "outbox.sqlite3")],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "connected"
        (_, birth), = wire.wait(wait_until, "NBIRTH")  # fmt: skip
        assert wire.of("NDEATH") == []
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        (death, named), = wire.wait(wait_until, "NDEATH")  # fmt: skip
    finally:
        if child.poll() is None:
            child.kill()
    assert named["bdSeq"] == birth["bdSeq"] == 42
    assert not death.HasField("seq")  # an NDEATH carries no seq


def test_seq_wraps_after_255(mosquitto, collect, make_link, tmp_path, wait_until):
    wire = Wire(collect(mosquitto.port, "spBv1.0/#"))
    link = make_link(spb_config(mosquitto.port), Outbox(tmp_path / "outbox.sqlite3"))
    wire.wait(wait_until, "DBIRTH", "pump-1")
    for i in range(300):
        assert link.publish_telemetry(telemetry(windows=i))
    wire.wait(wait_until, "DDATA", "pump-1", count=300)
    seqs = node_seqs(wire)
    assert seqs == [i % 256 for i in range(len(seqs))] and len(seqs) == 302  # NBIRTH, DBIRTH
    assert [n["Telemetry/Windows"] for _, n in wire.of("DDATA", "pump-1")] == list(range(300))


def command_payload(name: str, value, datatype: int = 12) -> bytes:
    payload = Payload(timestamp=int(time.time() * 1000))
    metric = payload.metrics.add(name=name, datatype=datatype)
    if isinstance(value, bool):
        metric.boolean_value = value
    else:
        metric.string_value = value
    return payload.SerializeToString()


def test_rebirth_on_ncmd(mosquitto, collect, make_link, tmp_path, wait_until):
    collector = collect(mosquitto.port, "spBv1.0/#")
    wire = Wire(collector)
    link = make_link(spb_config(mosquitto.port), Outbox(tmp_path / "outbox.sqlite3"))
    wire.wait(wait_until, "DBIRTH", "pump-1")
    link.publish_state(StateMessage(**SITE, asset="pump-1", state="outer_race"))
    wire.wait(wait_until, "DDATA", "pump-1")
    collector.publish("spBv1.0/plant/NCMD/gw1", command_payload("Node Control/Rebirth", True))
    births = wire.wait(wait_until, "NBIRTH", count=2)
    rebirth = wire.wait(wait_until, "DBIRTH", "pump-1", count=2)[1][1]
    assert births[1][0].seq == 0 and births[1][1]["bdSeq"] == births[0][1]["bdSeq"]
    assert rebirth["State"] == "outer_race"  # the current value, carried by the new birth
    assert wire.of("NDEATH") == []


def test_dcmd_reaches_submit_and_is_answered_on_ddata(
    mosquitto, collect, make_link, tmp_path, wait_until
):
    from tests.edge_agent.mqtt.fake_agent import FakeAgent

    collector = collect(mosquitto.port, "spBv1.0/#")
    wire = Wire(collector)
    agent = FakeAgent()
    make_link(
        spb_config(mosquitto.port), Outbox(tmp_path / "outbox.sqlite3"), agent, assets=["pump-2"]
    )
    wire.wait(wait_until, "DBIRTH", "pump-2")
    body = json.dumps({"id": "c7"})
    collector.publish("spBv1.0/plant/DCMD/gw1/pump-2", command_payload("Command/ping", body))
    (_, reply), = wire.wait(wait_until, "DDATA", "pump-2")  # fmt: skip
    assert [(c.name, c.id, a) for c, a in agent.received] == [("ping", "c7", "pump-2")]
    result = json.loads(reply["Command/Result"])
    assert result["id"] == "c7" and result["ok"] is True
    # NCMD: the gateway's asset, answered on NDATA; a bad body is refused with the reason
    collector.publish("spBv1.0/plant/NCMD/gw1", command_payload("Command/status", '{"id": "n1"}'))
    collector.publish("spBv1.0/plant/NCMD/gw1", command_payload("Command/calibrate", "{}"))
    replies = wire.wait(wait_until, "NDATA", count=2)
    results = {json.loads(n["Command/Result"]).get("id"): n["Command/Result"] for _, n in replies}
    assert agent.received[1][0].name == "status" and agent.received[1][1] == "pump-1"
    assert json.loads(results["n1"])["ok"] is True
    refused = json.loads(results[None])
    assert "label" in refused["reason"] and "Command/calibrate" in refused["topic"]
    assert len(agent.received) == 2


def test_historical_events_after_a_primary_host_outage(
    mosquitto, collect, make_link, tmp_path, wait_until
):
    collector = collect(mosquitto.port, "spBv1.0/#")
    wire = Wire(collector)

    def host(online: bool, stamp: int) -> None:
        state = json.dumps({"online": online, "timestamp": stamp}).encode()
        collector.publish("spBv1.0/STATE/scada1", state, retain=True)

    link = make_link(
        spb_config(mosquitto.port, primary_host_id="scada1"), Outbox(tmp_path / "outbox.sqlite3")
    )
    assert wait_until(lambda: link.connected, 5)
    early = event(state="ball")
    link.publish_event(early)
    time.sleep(0.5)
    assert wire.messages() == []  # no birth, no data before the primary host is online
    host(True, 1)
    wire.wait(wait_until, "DBIRTH", "pump-1")
    assert wait_until(lambda: link.pending == 0, 5)
    live = event(state="inner_race")
    link.publish_event(live)
    wire.wait(wait_until, "DDATA", "pump-1", count=2)
    host(False, 2)
    wire.wait(wait_until, "NDEATH")
    stored = [event(state="outer_race") for _ in range(3)]
    for e in stored:
        link.publish_event(e)
    time.sleep(0.5)
    assert len(wire.of("DDATA", "pump-1")) == 2 and link.pending == 3  # held in the outbox
    host(True, 3)
    data = wire.wait(wait_until, "DDATA", "pump-1", count=5)
    kinds = [k for k, _, _, _ in wire.messages()]
    assert kinds.index("NBIRTH", kinds.index("NDEATH")) < len(kinds) - 3  # births, then data
    by_id = {FaultEvent.model_validate_json(n["Event/JSON"]).event_id: p for p, n in data}
    historical = {i for i, p in by_id.items() if all(m.is_historical for m in p.metrics)}
    assert historical == {early.event_id} | {e.event_id for e in stored}
    assert live.event_id in by_id and live.event_id not in historical
    assert wait_until(lambda: link.pending == 0, 5)


def test_agent_with_two_channels_as_sparkplug_devices(mosquitto, collect, tmp_path, agent_bundle):
    from tests.conftest import poll_until as wait_until
    from tests.edge_agent.agent.test_agent import running
    from tests.edge_agent.agent.test_channels import INNER, NORMAL, channel, make_agent

    collector = collect(mosquitto.port, "spBv1.0/#")
    wire = Wire(collector)
    mqtt_table = {
        "host": "127.0.0.1", "port": mosquitto.port, "site": "s1", "asset": "a1",
        "device": "dev-test", "dialect": "sparkplug_b", "sparkplug": {"group_id": "plant"},
    }  # fmt: skip
    agent = make_agent(
        tmp_path, agent_bundle, mosquitto.port,
        [channel("de", 0, NORMAL), channel("nde", 1, INNER)], mqtt=mqtt_table,
    )  # fmt: skip
    with agent, running(agent):
        wire.wait(wait_until, "DBIRTH", "pump-nde", t=30)
        assert wire.of("DBIRTH", "pump-de")
        assert not wire.of("DBIRTH", "a1")  # the gateway's own asset is no channel's here

        def events(device: str) -> list[FaultEvent]:
            return [
                FaultEvent.model_validate_json(n["Event/JSON"])
                for _, n in wire.of("DDATA", device)
                if n.get("Event/JSON")
            ]

        assert wait_until(lambda: any(e.state == "inner_race" for e in events("pump-nde")), 60)
        body = command_payload("Command/ping", '{"id": "p1"}')
        collector.publish("spBv1.0/plant/DCMD/dev-test/pump-de", body)
        assert wait_until(
            lambda: any("Command/Result" in n for _, n in wire.of("DDATA", "pump-de")), 20
        )
    assert all(e.asset == "pump-nde" for e in events("pump-nde"))
    assert not any(e.state == "inner_race" for e in events("pump-de"))
    replies = [n["Command/Result"] for _, n in wire.of("DDATA", "pump-de") if "Command/Result" in n]
    reply = replies[0]
    assert json.loads(reply)["id"] == "p1" and json.loads(reply)["ok"] is True
    kinds = [k for k, _, _, _ in wire.messages()]
    assert kinds[0] == "NBIRTH" and kinds[-1] == "NDEATH"  # a clean stop says goodbye


def test_no_device_data_goes_out_between_the_nbirth_and_its_dbirth(tmp_path) -> None:
    """The outbox's sender may emit a stored event while a rebirth is half sent: it is held
    until the device's DBIRTH is on the wire (a host drops data of an unborn device)."""
    from types import SimpleNamespace

    from edge_agent.mqtt.sparkplug_b import SparkplugB

    sent = []
    transport = SimpleNamespace(
        outbox=SimpleNamespace(path=tmp_path / "outbox.sqlite3"),
        publish=lambda out, **_: sent.append(out) or True,
        store=lambda out, severity, key: sent.append(out),
        wake=lambda: None,
    )
    session = SparkplugB(spb_config(1883), transport, submit=lambda *a: None)
    nbirth, dbirth = session.births()
    session.send(event())
    (ddata,) = sent
    assert session.finish(ddata.topic, ddata.payload, "e1") is None  # nothing born yet
    assert session.finish(nbirth.topic, nbirth.payload, None) is not None
    assert session.finish(ddata.topic, ddata.payload, "e1") is None  # the DBIRTH is not out
    assert session.finish(dbirth.topic, dbirth.payload, None) is not None
    out = session.finish(ddata.topic, ddata.payload, "e1")
    assert out is not None and decode(out).seq == 2  # NBIRTH 0, DBIRTH 1, then the data

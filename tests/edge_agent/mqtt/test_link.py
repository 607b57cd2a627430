"""MqttLink against a real mosquitto: delivery, status, last will, outages, crashes, commands."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_agent.config import MqttConfig, TlsConfig
from edge_agent.contract.commands import Command, CommandResult
from edge_agent.contract.events import SCHEMA_FOLDER, FaultEvent, StateMessage, Telemetry
from edge_agent.mqtt.json_v1 import topics
from edge_agent.mqtt.outbox import Outbox
from faultwatch.scada import subscribe_events
from tests.edge_agent.mqtt.fake_agent import FakeAgent

REPO = Path(__file__).resolve().parents[3]

# Runs an agent's link in a child process so the test can SIGKILL it.
CHILD = """
import sys, time
from edge_agent.config import MqttConfig
from edge_agent.contract.events import FaultEvent
from edge_agent.mqtt.link import MqttLink
from edge_agent.mqtt.outbox import Outbox
port, outbox_path, n_events = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
cfg = MqttConfig(port=port, site="plant", asset="pump7", device="dev1", keepalive_s=5)
link = MqttLink(cfg, Outbox(outbox_path), lambda command, asset: None,
                reconnect_min_delay_s=0.1)
if n_events == 0:
    while not link.connected:
        time.sleep(0.02)
    print("connected", flush=True)
for i in range(n_events):
    event = FaultEvent(kind="state_change", severity="alarm", site="plant", asset="pump7",
                       device="dev1", state="outer_race", message=f"event {i}")
    link.publish_event(event)
    print("stored", event.event_id, flush=True)
print("done", flush=True)
time.sleep(60)
"""


DEVICE = dict(site="plant", asset="pump7", device="dev1")


def config(port: int, **overrides) -> MqttConfig:
    return MqttConfig(**(DEVICE | dict(port=port, keepalive_s=5) | overrides))


def telemetry(windows_total: int) -> Telemetry:
    return Telemetry(
        **DEVICE,
        rms_g=0.5,
        peak_g=2.0,
        crest_factor=4.0,
        kurtosis=3.1,
        inference_ms=1.2,
        windows_total=windows_total,
        dropped_samples=0,
        overruns=0,
        outbox_pending=0,
    )


def answer(command: Command) -> CommandResult:
    if command.name == "rollback_head":
        raise RuntimeError("no earlier head stored")
    return CommandResult(id=command.id, ok=True, message=f"{command.name}: pong")


def event(i: int, severity: str = "alarm") -> FaultEvent:
    return FaultEvent(
        **DEVICE,
        kind="state_change",
        severity=severity,
        previous_state="normal",
        state="outer_race",
        class_name="outer_race",
        probabilities={"normal": 0.1, "outer_race": 0.9},
        confidence=0.9,
        message=f"event {i}",
    )


def start_child(port: int, outbox_path: Path, n_events: int) -> tuple[subprocess.Popen, list[str]]:
    """Start CHILD and read its output up to `done`/`connected`; returns (process, stored ids)."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(port), str(outbox_path), str(n_events)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    ids = []
    for line in child.stdout:  # type: ignore[union-attr]
        if line.startswith("stored"):
            ids.append(line.split()[1])
        if line.strip() in ("done", "connected") and (n_events == 0 or line.strip() == "done"):
            break
    assert child.poll() is None, "the child agent exited early"
    return child, ids


def test_topics_are_built_from_prefix_site_asset_device():
    t = topics(MqttConfig(topic_prefix="fw", site="s1", asset="fan", device="d9"))
    assert t.event == "fw/s1/fan/d9/event"
    assert t.status == "fw/s1/fan/d9/status"
    assert t.cmd_subscription == "fw/s1/fan/d9/cmd/#"
    assert t.cmd("ping") == "fw/s1/fan/d9/cmd/ping"
    assert t.cmd_result == "fw/s1/fan/d9/cmd_result"
    assert t.error == "fw/s1/fan/d9/error"


def test_events_arrive_valid_and_status_is_retained_online_then_offline(
    mosquitto, collect, tmp_path, wait_until, make_link
):
    cfg = config(mosquitto.port)
    t = topics(cfg)
    raw = collect(mosquitto.port, t.base + "#")
    with subscribe_events("127.0.0.1", mosquitto.port) as scada:
        link = make_link(cfg, Outbox(tmp_path / "outbox.sqlite3"))
        assert wait_until(lambda: link.connected)
        sent = [event(i) for i in range(5)]
        for e in sent:
            link.publish_event(e)
        received = scada.wait_for_events(5, timeout_s=5)
        assert [e.event_id for e in received] == [e.event_id for e in sent]
        assert received[0] == sent[0]  # the full model survives the wire
        assert wait_until(lambda: link.pending == 0)
        link.publish_state(StateMessage(**DEVICE, state="outer_race"))
        assert link.publish_telemetry(telemetry(windows_total=10))
        raw.wait_for(t.telemetry, lambda p: p["windows_total"] == 10)

        # A late subscriber sees the retained status and state at once.
        late = collect(mosquitto.port, t.base + "+")
        assert late.wait_for(t.status, lambda p: True)["status"] == "online"
        assert late.wait_for(t.state, lambda p: True)["state"] == "outer_race"
        link.close()
    assert raw.wait_for(t.status, lambda p: p["status"] == "offline")["outbox_pending"] == 0
    assert link.counters.events_acked == 5

    # What goes on the wire has exactly the fields of the published JSON Schema.
    schema = json.loads((SCHEMA_FOLDER / "event.schema.json").read_text())
    for payload in raw.on(t.event):
        assert set(payload) == set(schema["properties"]) == set(schema["required"])


def test_last_will_says_offline_when_the_agent_is_killed(mosquitto, collect, tmp_path):
    t = topics(config(mosquitto.port))
    raw = collect(mosquitto.port, t.status)
    child, _ = start_child(mosquitto.port, tmp_path / "outbox.sqlite3", n_events=0)
    try:
        raw.wait_for(t.status, lambda p: p["status"] == "online")
        child.send_signal(signal.SIGKILL)
        will = raw.wait_for(t.status, lambda p: p["status"] == "offline", timeout_s=5)
    finally:
        child.kill()
        child.wait()
    assert "last will" in will["last_error"]


def test_broker_outage_loses_no_event_and_keeps_order(
    persistent_mosquitto, tmp_path, wait_until, make_link
):
    broker = persistent_mosquitto
    # A persistent SCADA session: the broker queues events for it while it is away.
    scada = subscribe_events("127.0.0.1", broker.port, client_id="scada-1", clean_session=False)
    with scada:
        link = make_link(config(broker.port), Outbox(tmp_path / "outbox.sqlite3"), max_inflight=4)
        assert wait_until(lambda: link.connected)
        sent = [event(i) for i in range(40)]
        os.kill(broker.pid, signal.SIGSTOP)  # the broker reads nothing more, acknowledges nothing
        for e in sent[:10]:
            link.publish_event(e)
        assert wait_until(lambda: link.counters.events_sent == 4)  # max_inflight: sent, unacked
        broker.stop()  # mid-stream: four events in flight, six more waiting
        assert wait_until(lambda: not link.connected)
        for e in sent[10:30]:
            link.publish_event(e)
        assert link.pending >= 20
        broker.start()
        for e in sent[30:]:
            link.publish_event(e)
        received = scada.wait_for_events(40, timeout_s=15)
        assert [e.event_id for e in received] == [e.event_id for e in sent]  # all, in order
        assert wait_until(lambda: link.pending == 0)
        assert link.counters.connects >= 2


def test_events_stored_by_a_killed_agent_are_delivered_by_the_next_one(
    mosquitto, tmp_path, wait_until, make_link
):
    outbox_path = tmp_path / "outbox.sqlite3"
    mosquitto.stop()
    child, stored = start_child(mosquitto.port, outbox_path, n_events=10)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    with Outbox(outbox_path) as reopened:
        assert [json.loads(r.payload)["event_id"] for r in reopened.pending(100)] == stored

    mosquitto.start()
    outbox = Outbox(outbox_path)
    with subscribe_events("127.0.0.1", mosquitto.port) as scada:
        link = make_link(config(mosquitto.port), outbox)
        received = scada.wait_for_events(10, timeout_s=10)
        assert [e.event_id for e in received] == stored
        assert wait_until(lambda: link.pending == 0)
        link.close()


def test_commands_get_results_and_bad_ones_get_errors(
    mosquitto, collect, tmp_path, wait_until, make_link
):
    cfg = config(mosquitto.port, max_command_bytes=256)
    t = topics(cfg)
    raw = collect(mosquitto.port, t.base + "#")
    raw.publish(t.cmd("ping"), b'{"id": "0"}', retain=True)  # would re-run on every reconnect
    agent = FakeAgent(answer)
    link = make_link(cfg, Outbox(tmp_path / "outbox.sqlite3"), agent)
    assert raw.wait_for(t.error, lambda p: "retained" in p["reason"])["topic"] == t.cmd("ping")
    raw.publish(t.cmd("ping"), b"", retain=True)  # clears it

    raw.publish(t.cmd("ping"), b'{"id": "1"}')
    assert raw.wait_for(t.cmd_result, lambda p: p["id"] == "1")["ok"] is True

    bad = {
        "big": (t.cmd("ping"), b'{"id": "2", "pad": "' + b"x" * 400 + b'"}', "max_command_bytes"),
        "json": (t.cmd("ping"), b'{"id": ', "not JSON"),
        "name": (t.cmd("reboot"), b'{"id": "4"}', "unknown command 'reboot'"),
        "fields": (t.cmd("calibrate"), b'{"id": "5", "lable": "x"}', "calibrate.lable"),
        "utf8": (t.cmd("ping"), b"\xff\xfe", "not UTF-8"),
    }
    for topic, payload, _ in bad.values():
        raw.publish(topic, payload)
    for topic, _, reason in bad.values():
        error = raw.wait_for(t.error, lambda p, r=reason: r in p["reason"])
        assert error["topic"] == topic
    assert raw.wait_for(t.error, lambda p: "calibrate.lable" in p["reason"])["id"] == "5"

    raw.publish(t.cmd("rollback_head"), b'{"id": "6"}')  # the handler raises
    failed = raw.wait_for(t.cmd_result, lambda p: p["id"] == "6")
    assert failed["ok"] is False and "no earlier head stored" in failed["message"]

    # The link survived all of that.
    raw.publish(t.cmd("status"), b'{"id": "8"}')
    assert raw.wait_for(t.cmd_result, lambda p: p["id"] == "8")["ok"] is True
    link.publish_event(event(0))
    assert wait_until(lambda: link.pending == 0)
    assert link.counters.commands_refused == len(bad) + 1
    assert link.counters.commands_failed == 1
    assert link.counters.commands_ok == 2
    assert [(c.id, asset) for c, asset in agent.received] == [(i, "pump7") for i in "168"]
    link.close()


def test_close_is_bounded_when_the_broker_is_down_and_keeps_the_events(
    mosquitto, tmp_path, make_link
):
    mosquitto.stop()
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    link = make_link(config(mosquitto.port), outbox)
    link.publish_event(event(0))
    started = time.monotonic()
    link.close(flush_timeout_s=0.3)
    assert time.monotonic() - started < 3
    assert len(outbox) == 1
    assert not link.publish_telemetry(telemetry(windows_total=1))  # QoS 0, not durable


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_link_verifies_the_broker_with_a_private_ca(tmp_path, wait_until, make_link):
    from faultwatch.broker import MosquittoBroker, find_mosquitto

    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (apt install mosquitto)")
    ca, key, crt = tmp_path / "ca.crt", tmp_path / "server.key", tmp_path / "server.crt"
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    ec_key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1"
    for command in (
        f"req -x509 {ec_key} -keyout ca.key -out ca.crt -subj /CN=test-ca",
        f"req {ec_key} -keyout server.key -out server.csr -subj /CN=127.0.0.1",
        "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt "
        "-days 1 -extfile san.ext",
    ):
        subprocess.run(["openssl", *command.split()], cwd=tmp_path, check=True, capture_output=True)
    with MosquittoBroker(extra_config=f"cafile {ca}\ncertfile {crt}\nkeyfile {key}\n") as broker:
        cfg = config(broker.port, tls=TlsConfig(ca_file=ca))
        link = make_link(cfg, Outbox(tmp_path / "outbox.sqlite3"))
        assert wait_until(lambda: link.connected)
        link.publish_event(event(0))
        assert wait_until(lambda: link.pending == 0)  # the broker acknowledged it over TLS
        link.close()

"""The SCADA subscriber and `faultwatch scada listen` against a real mosquitto."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from typer.testing import CliRunner

from edge_agent.contract.events import FaultEvent, StatusMessage, encode
from faultwatch.broker import free_port
from faultwatch.cli import main as faultwatch_main
from faultwatch.scada import app, subscribe_events

runner = CliRunner()


def fault(device: str, i: int) -> FaultEvent:
    return FaultEvent(
        site="plant",
        asset="pump7",
        device=device,
        kind="state_change",
        severity="alarm",
        state="outer_race",
        class_name="outer_race",
        confidence=0.93,
        message=f"event {i}",
    )


def publisher(port: int) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def send(client: mqtt.Client, topic: str, payload: bytes, retain: bool = False) -> None:
    client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)


def test_subscriber_deduplicates_events_and_tracks_state_and_status(mosquitto, wait_until):
    pub = publisher(mosquitto.port)
    status = StatusMessage(
        site="plant",
        asset="pump7",
        device="d1",
        status="online",
        started_utc="2025-05-01T00:00:00Z",
    )
    send(pub, "faultwatch/plant/pump7/d1/status", encode(status), retain=True)
    with subscribe_events("127.0.0.1", mosquitto.port) as scada:
        first, second = fault("d1", 0), fault("d2", 1)
        for event in (first, first, second, first):  # at-least-once delivery repeats events
            send(pub, f"faultwatch/plant/pump7/{event.device}/event", encode(event))
        send(pub, "faultwatch/plant/pump7/d1/event", b'{"not": "an event"}')
        events = scada.wait_for_events(2, timeout_s=5)
        assert [e.event_id for e in events] == [first.event_id, second.event_id]
        assert scada.statuses["plant/pump7/d1"].status == "online"  # retained, seen at once
        assert wait_until(lambda: scada.invalid == 1)  # the last message sent
        assert scada.duplicates == 2
        assert len(scada.events) == 2
    pub.disconnect()


@contextmanager
def repeating(port: int, events: list[FaultEvent]) -> Iterator[None]:
    """Publish `events` every 0.1 s meanwhile: the CLI under test subscribes at some point."""
    pub, stop = publisher(port), threading.Event()

    def keep_sending() -> None:
        while not stop.is_set():
            for event in events:
                send(pub, f"faultwatch/plant/pump7/{event.device}/event", encode(event))
            stop.wait(0.1)

    sender = threading.Thread(target=keep_sending)
    sender.start()
    try:
        yield
    finally:
        stop.set()
        sender.join()
        pub.disconnect()


def test_listen_prints_events_and_exits_after_count(mosquitto):
    port = str(mosquitto.port)
    with repeating(mosquitto.port, [fault("dev1", i) for i in range(3)]):
        result = runner.invoke(app, ["listen", "--port", port, "--count", "3", "--timeout-s", "10"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "plant/pump7/dev1" in line]
    assert len([line for line in lines if "state=outer_race" in line]) == 3
    assert "confidence=0.93" in lines[0] and "alarm" in lines[0]
    assert "3 events (" in result.output


def test_listen_json_lines_are_the_events(mosquitto):
    event = fault("dev1", 0)
    with repeating(mosquitto.port, [event]):
        result = runner.invoke(
            app, ["listen", "--port", str(mosquitto.port), "--count", "1", "--json"]
        )
    assert result.exit_code == 0, result.output
    assert FaultEvent.model_validate(json.loads(result.output.strip())) == event


def test_listen_times_out_with_exit_code_1(mosquitto):
    result = runner.invoke(
        app, ["listen", "--port", str(mosquitto.port), "--count", "2", "--timeout-s", "0.3"]
    )
    assert result.exit_code == 1
    assert "timed out after 0.3 s with 0 of 2 events" in result.output


def test_listen_explains_a_broker_that_is_not_there():
    result = runner.invoke(app, ["listen", "--port", str(free_port()), "--timeout-s", "1"])
    assert result.exit_code == 1
    assert "cannot connect to the MQTT broker at 127.0.0.1:" in result.output
    assert "Traceback" not in result.output


def test_listen_rejects_a_zero_count():
    result = runner.invoke(app, ["listen", "--count", "0"])
    assert result.exit_code == 2
    assert "--count" in result.output


def test_mounted_as_faultwatch_scada(capsys):
    with pytest.raises(SystemExit) as info:
        faultwatch_main(["scada", "listen", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "faultwatch scada listen" in out and "--count" in out


def test_listen_sparkplug_shows_events_and_state(mosquitto, tmp_path):
    from edge_agent.config import MqttConfig, SparkplugConfig
    from edge_agent.mqtt.link import MqttLink
    from edge_agent.mqtt.outbox import Outbox

    cfg = MqttConfig(
        port=mosquitto.port, site="plant", asset="pump7", device="dev1", dialect="sparkplug_b",
        sparkplug=SparkplugConfig(group_id="plant"),
    )  # fmt: skip
    link = MqttLink(cfg, Outbox(tmp_path / "outbox.sqlite3"), lambda command, asset: None)
    stop = threading.Event()
    sent = fault("dev1", 0)

    def repeat() -> None:  # the listener joins after the births: it must ask for a rebirth
        while not stop.wait(0.3):
            link.publish_event(sent)  # the same event_id: shown once

    sender = threading.Thread(target=repeat, daemon=True)
    sender.start()
    try:
        result = runner.invoke(
            app, ["listen", "--sparkplug", "--port", str(mosquitto.port), "--count", "1",
                  "--timeout-s", "15"],
        )  # fmt: skip
    finally:
        stop.set()
        sender.join()
        link.close(flush_timeout_s=0)
    assert result.exit_code == 0, result.output
    assert "spBv1.0/+/+/#" in result.output
    lines = [line for line in result.output.splitlines() if "plant/pump7/dev1" in line]
    assert any("state=outer_race" in line and "confidence=0.93" in line for line in lines)
    assert "status  plant/pump7/dev1: online" in result.output  # from the DBIRTH it asked for
    assert "1 events (" in result.output

"""The demo broker (mosquitto, else embedded amqtt) carries the agent's traffic."""

from __future__ import annotations

import socket
import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.config import MqttConfig
from edge_agent.contract.events import FaultEvent
from edge_agent.mqtt.link import MqttLink
from edge_agent.mqtt.outbox import Outbox
from faultwatch.broker import find_mosquitto, start_broker
from faultwatch.scada import subscribe_events


def kinds() -> list:
    no_mosquitto = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed")
    return [pytest.param("mosquitto", marks=no_mosquitto), "amqtt"]


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("kind", kinds())
def test_broker_relays_retained_and_live_messages_then_stops(kind):
    broker = start_broker(kind=kind)
    assert broker.kind == kind and broker.port > 0
    try:
        client = mqtt.Client(CallbackAPIVersion.VERSION2)
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        client.publish("demo/retained", b"kept", qos=1, retain=True).wait_for_publish(5)
        got: dict[str, bytes] = {}
        both = threading.Event()

        def on_message(c, u, msg):
            got[msg.topic] = msg.payload
            if len(got) == 2:
                both.set()

        client.on_message = on_message
        client.subscribe("demo/#", qos=1)
        client.publish("demo/live", b"now", qos=1).wait_for_publish(5)
        assert both.wait(5), got
        assert got == {"demo/retained": b"kept", "demo/live": b"now"}
        client.disconnect()
        client.loop_stop()
    finally:
        broker.stop()
    assert not accepts(broker.port)


@pytest.mark.parametrize("kind", kinds())
def test_agent_link_delivers_events_through_the_demo_broker(kind, tmp_path):
    with start_broker(kind=kind) as broker:
        cfg = MqttConfig(
            port=broker.port,
            site="demo",
            asset="fan",
            device="d1",
            keepalive_s=5,
            protocol=broker.mqtt_protocol,
        )
        with subscribe_events("127.0.0.1", broker.port) as scada:
            link = MqttLink(
                cfg,
                Outbox(tmp_path / "o.sqlite3"),
                lambda command, asset: None,
                reconnect_min_delay_s=0.1,
            )
            sent = [
                FaultEvent(
                    site="demo",
                    asset="fan",
                    device="d1",
                    kind="drift",
                    severity="warning",
                    state="normal",
                )
                for _ in range(3)
            ]
            for event in sent:
                link.publish_event(event)
            received = scada.wait_for_events(3, timeout_s=10)
            link.close()
    assert [e.event_id for e in received] == [e.event_id for e in sent]


def test_unknown_broker_kind_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid: auto, mosquitto, amqtt"):
        start_broker(kind="hivemq")  # type: ignore[arg-type]

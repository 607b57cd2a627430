"""The message registry: one row per payload model, and what the broker receives follows it."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.config import MqttConfig
from edge_agent.contract.commands import CommandError, CommandResult
from edge_agent.contract.events import (
    FaultEvent,
    StateMessage,
    StatusMessage,
    Telemetry,
    json_schemas,
)
from edge_agent.mqtt.json_v1 import topics
from edge_agent.mqtt.messages import MESSAGES, Route, route_of
from edge_agent.mqtt.outbox import Outbox

DEVICE = dict(site="plant", asset="pump7", device="dev1")


def test_every_outbound_schema_has_a_route_and_unknown_payloads_are_refused():
    titles = {schema["title"] for name, schema in json_schemas().items() if name != "command"}
    assert {model.__name__ for model in MESSAGES} == titles
    with pytest.raises(TypeError, match=r"no route.*add a row"):
        route_of(DEVICE)  # type: ignore[arg-type]


def test_a_durable_route_must_be_acknowledged_and_not_retained():
    with pytest.raises(ValueError, match="durable"):
        Route("x", qos=1, retain=True, durable=True)
    with pytest.raises(ValueError, match="durable"):
        Route("x", qos=0, retain=False, durable=True)


class QosCollector:
    """An MQTT 5 subscriber at QoS 2 with "retain as published": what it records per message,
    (topic, qos, retain), is what the link published."""

    def __init__(self, port: int, topic_filter: str) -> None:
        self.received: list[tuple[str, int, bool]] = []
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, m: self.received.append((m.topic, m.qos, m.retain))
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(topic_filter, options=SubscribeOptions(qos=2, retainAsPublished=True))
        assert subscribed.wait(5)

    def seen(self, topic: str) -> set[tuple[int, bool]]:
        return {(qos, bool(retain)) for t, qos, retain in list(self.received) if t == topic}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_qos_and_retain_on_the_wire_follow_the_registry(
    mosquitto, collect, tmp_path, wait_until, make_link
):
    cfg = MqttConfig(**DEVICE, port=mosquitto.port, keepalive_s=5, qos_events=2)
    t = topics(cfg)
    wire = QosCollector(mosquitto.port, t.base + "#")
    try:
        link = make_link(cfg, Outbox(tmp_path / "outbox.sqlite3"))
        assert wait_until(lambda: link.connected)
        link.publish_event(FaultEvent(**DEVICE, kind="drift", severity="info", state="normal"))
        link.publish_state(StateMessage(**DEVICE, state="normal"))
        numbers = dict(rms_g=1, peak_g=1, crest_factor=1, kurtosis=3, inference_ms=1)
        counts = dict(windows_total=1, dropped_samples=0, overruns=0, outbox_pending=0)
        link.publish_telemetry(Telemetry(**DEVICE, **numbers, **counts))
        raw = collect(mosquitto.port, t.base + "#")
        raw.publish(t.cmd("ping"), b'{"id": "1"}')
        raw.publish(t.cmd("nope"), b'{"id": "2"}')
        expected = {
            t.event: MESSAGES[FaultEvent],
            t.state: MESSAGES[StateMessage],
            t.status: MESSAGES[StatusMessage],
            t.telemetry: MESSAGES[Telemetry],
            t.cmd_result: MESSAGES[CommandResult],
            t.error: MESSAGES[CommandError],
        }
        assert wait_until(lambda: all(wire.seen(topic) for topic in expected))
        for topic, route in expected.items():
            assert wire.seen(topic) == {(route.qos_for(cfg), route.retain)}, topic
        # The values themselves, as they always were (event QoS from mqtt.qos_events):
        assert wire.seen(t.event) == {(2, False)} and wire.seen(t.state) == {(1, True)}
        assert wire.seen(t.telemetry) == {(0, False)} and wire.seen(t.status) == {(1, True)}
        assert wire.seen(t.cmd_result) == wire.seen(t.error) == {(1, False)}
    finally:
        wire.close()

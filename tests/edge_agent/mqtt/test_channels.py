"""One link serving several channels (assets) over one connection, against a real mosquitto."""

from __future__ import annotations

import pytest

from edge_agent.config import MqttConfig
from edge_agent.contract.commands import CommandResult
from edge_agent.contract.events import FaultEvent, StateMessage, Telemetry
from edge_agent.mqtt.json_v1 import topics
from edge_agent.mqtt.link import MqttLink
from edge_agent.mqtt.outbox import Outbox
from tests.conftest import poll_until
from tests.edge_agent.mqtt.fake_agent import FakeAgent

SITE = dict(site="plant", device="dev1")
GATEWAY, OTHER = "pump7", "pump8"


def config(port: int) -> MqttConfig:
    return MqttConfig(**SITE, asset=GATEWAY, port=port, keepalive_s=5)


def event(asset: str) -> FaultEvent:
    return FaultEvent(**SITE, asset=asset, kind="state_change", severity="alarm", state="ball")


def telemetry(asset: str) -> Telemetry:
    return Telemetry(
        **SITE, asset=asset, rms_g=0.5, peak_g=2.0, crest_factor=4.0, kurtosis=3.1,
        inference_ms=1.0, windows_total=1, dropped_samples=0, overruns=0, outbox_pending=0,
    )  # fmt: skip


def test_each_asset_gets_its_own_subtree_for_messages_commands_and_replies(
    mosquitto, collect, tmp_path, wait_until, make_link
):
    cfg = config(mosquitto.port)
    mine, other = topics(cfg), topics(cfg, OTHER)
    raw = collect(mosquitto.port, "faultwatch/plant/+/dev1/#")
    agent = FakeAgent()
    link = make_link(cfg, Outbox(tmp_path / "outbox.sqlite3"), agent, assets=[OTHER])
    assert wait_until(lambda: link.connected)

    sent = {asset: event(asset) for asset in (GATEWAY, OTHER)}
    for asset in (GATEWAY, OTHER):
        link.publish_event(sent[asset])
        link.publish_state(StateMessage(**SITE, asset=asset, state=f"state of {asset}"))
        assert link.publish_telemetry(telemetry(asset))
    for asset, t in ((GATEWAY, mine), (OTHER, other)):
        assert raw.wait_for(t.event, lambda p: True)["event_id"] == sent[asset].event_id
        assert raw.wait_for(t.state, lambda p: True)["state"] == f"state of {asset}"
        raw.wait_for(t.telemetry, lambda p: True)
    assert wait_until(lambda: link.pending == 0)
    for t, asset in ((mine, GATEWAY), (other, OTHER)):
        for leaf in ("event", "state", "telemetry"):
            assert [p["asset"] for p in raw.on(t.base + leaf)] == [asset], leaf

    # Status (and the last will) live on the gateway's own asset only.
    assert raw.wait_for(mine.status, lambda p: True)["status"] == "online"
    assert raw.on(other.status) == []

    # Commands reach `submit` with the asset they arrived on; replies go back there.
    raw.publish(mine.cmd("ping"), b'{"id": "a"}')
    raw.publish(other.cmd("ping"), b'{"id": "b"}')
    assert raw.wait_for(mine.cmd_result, lambda p: True)["id"] == "a"
    assert raw.wait_for(other.cmd_result, lambda p: True)["id"] == "b"
    assert [(c.id, asset) for c, asset in agent.received] == [("a", GATEWAY), ("b", OTHER)]
    assert [p["id"] for p in raw.on(mine.cmd_result)] == ["a"]
    assert [p["id"] for p in raw.on(other.cmd_result)] == ["b"]

    # A refusal by the agent comes back at once on that asset's error topic.
    agent.refuse = "agent busy: 16 commands are waiting; retry later"
    raw.publish(other.cmd("status"), b'{"id": "c"}')
    refusal = raw.wait_for(other.error, lambda p: True)
    assert refusal["reason"] == agent.refuse and refusal["id"] == "c"
    assert refusal["topic"] == other.cmd("status")
    assert raw.on(mine.error) == []
    assert link.counters.commands_refused == 1 and link.counters.commands_ok == 2

    # Each asset's state is re-sent on reconnect (this broker forgets retained messages).
    mosquitto.restart()
    assert wait_until(lambda: link.connected and link.counters.connects == 2, 10)
    late = collect(mosquitto.port, "faultwatch/plant/+/dev1/state")
    for asset, t in ((GATEWAY, mine), (OTHER, other)):
        assert late.wait_for(t.state, lambda p: True)["state"] == f"state of {asset}"


def test_a_payload_for_an_asset_the_link_does_not_serve_is_a_value_error(
    mosquitto, tmp_path, wait_until, make_link
):
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    link = make_link(config(mosquitto.port), outbox, assets=[OTHER])
    assert wait_until(lambda: link.connected)
    with pytest.raises(ValueError, match=r"'fan3' is not served.*pump7, pump8"):
        link.publish_event(event("fan3"))
    with pytest.raises(ValueError, match="fan3"):
        link.publish_state(StateMessage(**SITE, asset="fan3", state="normal"))
    with pytest.raises(ValueError, match="fan3"):
        link.publish_telemetry(telemetry("fan3"))
    with pytest.raises(ValueError, match="fan3"):
        link.publish_reply(CommandResult(id="1", ok=True), "fan3")
    assert len(outbox) == 0 and link.pending == 0
    assert link.counters.commands_ok == 0 and link.counters.telemetry_dropped == 0


def test_an_asset_that_is_not_one_topic_level_is_refused(tmp_path):
    cfg = config(1883)
    for bad in ("a/b", "+", "#", ""):
        with pytest.raises(ValueError, match="single topic levels"):
            MqttLink(cfg, Outbox(tmp_path / "o.sqlite3"), lambda c, a: None, assets=[bad])


def subscribed(raw, t, tries: int = 40) -> None:
    """Ping until one is answered: the link's cmd/ subscription is in place at the broker (a
    command sent on another connection before its SUBACK would be dropped)."""
    for i in range(tries):
        raw.publish(t.cmd("ping"), f'{{"id": "warm{i}"}}'.encode())
        if poll_until(lambda i=i: any(p["id"] == f"warm{i}" for p in raw.on(t.cmd_result)), 0.5):
            return
    raise AssertionError(f"no ping answered on {t.cmd_result} in {tries} tries")


def test_a_submit_that_raises_is_answered_and_the_link_keeps_taking_commands(
    mosquitto, collect, tmp_path, wait_until, make_link
):
    cfg = config(mosquitto.port)
    t = topics(cfg, OTHER)
    raw = collect(mosquitto.port, t.base + "#")

    class Broken(FakeAgent):
        def submit(self, command, asset):
            if command.id == "boom":
                raise RuntimeError("queue gone")
            return super().submit(command, asset)

    link = make_link(cfg, Outbox(tmp_path / "outbox.sqlite3"), Broken(), assets=[OTHER])
    assert wait_until(lambda: link.connected)
    subscribed(raw, t)
    raw.publish(t.cmd("ping"), b'{"id": "boom"}')
    error = raw.wait_for(t.error, lambda p: True, timeout_s=15)
    assert error["id"] == "boom" and "RuntimeError: queue gone" in error["reason"]
    raw.publish(t.cmd("ping"), b'{"id": "next"}')
    assert raw.wait_for(t.cmd_result, lambda p: p["id"] == "next", timeout_s=15)
    assert link.counters.callback_errors == 0

"""Hostile or unlucky input on the command path: poison payloads, floods, retained commands,
a second agent with our client id. Each case once silenced a deployed agent (issue 12)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.config import MqttConfig
from edge_agent.contract.commands import COMMANDS, CommandError, CommandResult, parse_command
from edge_agent.contract.events import FaultEvent, encode
from edge_agent.mqtt.link import RATE_BURST, MqttLink, RateLimiter
from edge_agent.mqtt.outbox import Outbox
from tests.edge_agent.mqtt.fake_agent import FakeAgent

BASE = "faultwatch/plant/pump7/dev1/"


def config(port: int, **overrides) -> MqttConfig:
    fields = dict(site="plant", asset="pump7", device="dev1", port=port, keepalive_s=5)
    return MqttConfig(**(fields | overrides))


def answer(command) -> CommandResult:
    return CommandResult(id=command.id, ok=True, message=command.name)


@pytest.fixture
def link_for(tmp_path):
    """`link_for(cfg, name)` -> a started MqttLink with its own outbox whose commands a FakeAgent
    answers, closed after the test."""
    made: list[tuple[MqttLink, FakeAgent]] = []

    def make(cfg: MqttConfig, name: str = "o") -> MqttLink:
        outbox = Outbox(tmp_path / f"{name}.sqlite3")
        agent = FakeAgent(answer)
        agent.link = MqttLink(cfg, outbox, agent.submit, reconnect_min_delay_s=0.1)
        made.append((agent.link, agent))
        return agent.link

    yield make
    for link, agent in made:
        link.close(0.5)
        agent.close()


# ---- parsing: every refusal must encode --------------------------------------------------------


def test_surrogate_escape_is_refused_and_the_refusal_encodes():
    got = parse_command("ping", b'{"id": "\\ud800"}', 4096)
    assert isinstance(got, CommandError) and "surrogate" in got.reason
    assert got.id is None
    json.loads(encode(got))  # the reply is valid UTF-8 JSON


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from([*COMMANDS, "pnig", ""]),
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(st.characters(codec=None)),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=8,
    ),
)
def test_any_json_payload_gives_a_command_or_a_refusal_that_encodes(name, value):
    payload = json.dumps({"id": value, "label": value, "version": value}).encode()  # \\u escapes
    got = parse_command(name, payload, 4096)
    json.loads(encode(got) if isinstance(got, CommandError) else got.model_dump_json())


@pytest.mark.parametrize("bad", ["vv1", "1_0", "٣", "0", "v", "1.0", " 1", "1 ", "+1", "v-1"])
def test_rollback_version_is_parsed_strictly(bad):
    got = parse_command("rollback_head", json.dumps({"id": "1", "version": bad}).encode(), 4096)
    assert isinstance(got, CommandError), bad
    assert "rollback_head.version" in got.reason


@pytest.mark.parametrize("good,number", [("3", 3), ("v12", 12)])
def test_rollback_version_accepts_plain_numbers(good, number):
    got = parse_command("rollback_head", json.dumps({"id": "1", "version": good}).encode(), 4096)
    assert not isinstance(got, CommandError)
    assert int(got.version.removeprefix("v")) == number


def test_rate_limiter_allows_a_burst_then_the_rate_per_key():
    limiter = RateLimiter(per_minute=60, burst=3)
    assert [limiter.allow("ping", now=0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("status", now=0.0)  # another command name has its own bucket
    assert not limiter.allow("ping", now=0.5)
    assert limiter.allow("ping", now=1.6)  # one token per second


# ---- against a real broker --------------------------------------------------------------------


POISON = [
    ("ping", b'{"id": "\\ud800"}'),
    ("ping", b'{"id": "\\udfff\\ud800x"}'),
    ("status", b"\xff\xfe\xfa not utf-8"),
    ("ping", b'{"id": "' + b"x" * 5000 + b'"}'),  # over max_command_bytes
    ("calibrate", b'{"id": "1", "label": "\\ud83d", "files": ["\\udc00"]}'),
    ("rollback_head", b'{"id": "\\ud800", "version": "vv1"}'),
    ("reload_bundle", b'{"id": 7, "path": {"nested": [[[[[]]]]]}}'),
    ("no_such_command", b'{"id": "\\ud800"}'),
    ("ping", b"[" * 50_000),
]


def test_poison_commands_leave_the_link_answering_and_delivering(
    mosquitto, collect, link_for, wait_until
):
    collector = collect(mosquitto.port, BASE + "#")
    link = link_for(config(mosquitto.port, commands_per_minute=6000))
    assert wait_until(lambda: link.connected, 10)
    for name, payload in POISON:
        collector.publish(BASE + f"cmd/{name}", payload)
    wait_until(lambda: len(collector.on(BASE + "error")) >= len(POISON), 10)
    assert len(collector.on(BASE + "error")) == len(POISON)  # each one refused, once
    assert link.counters.callback_errors == 0
    collector.publish(BASE + "cmd/ping", b'{"id": "after"}')
    assert collector.wait_for(BASE + "cmd_result", lambda p: p["id"] == "after")["ok"]
    event = FaultEvent(kind="state_change", severity="alarm", state="outer_race", **DEVICE)
    link.publish_event(event)
    got = collector.wait_for(BASE + "event", lambda p: True)
    assert got["event_id"] == event.event_id


DEVICE = dict(site="plant", asset="pump7", device="dev1")


def test_a_ping_flood_is_rate_limited_and_other_commands_still_run(
    mosquitto, collect, link_for, wait_until
):
    collector = collect(mosquitto.port, BASE + "#")
    link = link_for(config(mosquitto.port, commands_per_minute=60))
    assert wait_until(lambda: link.connected, 10)
    for i in range(500):
        collector.client.publish(BASE + "cmd/ping", json.dumps({"id": f"p{i}"}).encode(), qos=1)
    collector.publish(BASE + "cmd/status", b'{"id": "legit"}')
    assert collector.wait_for(BASE + "cmd_result", lambda p: p["id"] == "legit", 10)["ok"]
    assert wait_until(lambda: link.counters.commands_rate_limited >= 480, 10)
    pongs = [p for p in collector.on(BASE + "cmd_result") if p["id"].startswith("p")]
    assert RATE_BURST <= len(pongs) <= RATE_BURST + 10
    limited = [e for e in collector.on(BASE + "error") if "rate limited" in e["reason"]]
    assert 1 <= len(limited) <= 3, "refusals are summarized, not echoed 500 times"


def test_a_retained_command_is_never_executed(mosquitto, collect, link_for, wait_until):
    collector = collect(mosquitto.port, BASE + "#")
    link = link_for(config(mosquitto.port))
    assert wait_until(lambda: link.connected, 10)
    collector.publish(BASE + "cmd/ping", b'{"id": "kept"}', retain=True)  # live delivery
    refusal = collector.wait_for(BASE + "error", lambda p: "retained" in p["reason"])
    assert "retain=false" in refusal["reason"]
    collector.publish(BASE + "cmd/ping", b'{"id": "live"}')
    collector.wait_for(BASE + "cmd_result", lambda p: p["id"] == "live")
    assert [p["id"] for p in collector.on(BASE + "cmd_result")] == ["live"]
    collector.publish(BASE + "cmd/ping", b"", retain=True)  # clear it


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_two_agents_with_one_client_id_are_detected(mosquitto, link_for, wait_until, protocol):
    first = link_for(config(mosquitto.port, protocol=protocol), "a")
    assert wait_until(lambda: first.connected, 10)
    second = link_for(config(mosquitto.port, protocol=protocol), "b")

    def clash_seen() -> bool:
        return any("client id clash" in (link.last_error or "") for link in (first, second))

    assert wait_until(clash_seen, 20)
    error = next(link.last_error for link in (first, second) if "clash" in (link.last_error or ""))
    assert "'faultwatch-dev1'" in error and "mqtt.device" in error


def test_a_dead_network_thread_is_restarted(mosquitto, collect, link_for, wait_until):
    collector = collect(mosquitto.port, BASE + "#")
    link = link_for(config(mosquitto.port))
    assert wait_until(lambda: link.connected, 10)
    # What an exception escaping paho's thread would leave behind:
    link.transport._client.loop_stop()
    assert wait_until(lambda: link.counters.network_restarts == 1, 5)
    assert "network thread" in link.last_error
    assert wait_until(lambda: link.connected, 10)
    collector.publish(BASE + "cmd/ping", b'{"id": "back"}')
    assert collector.wait_for(BASE + "cmd_result", lambda p: p["id"] == "back", 10)["ok"]


def test_refusal_notices_are_paced_per_command_name():
    limiter = RateLimiter(per_minute=60)
    assert limiter.notice("ping", now=100.0) == 1  # the first refusal is told at once
    assert [limiter.notice("ping", now=100.0 + i) for i in range(1, 5)] == [None] * 4
    assert limiter.notice("status", now=102.0) == 1  # another name has its own pace
    assert limiter.notice("ping", now=105.0) == 5  # counted since the last notice
    assert limiter.notice("ping", now=105.1) is None

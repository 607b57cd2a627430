"""The whole agent against a real mosquitto while things go wrong (issue 12): repeated kill -9,
a broker restart with persistence and a frozen broker. Every event the agent logged as committed
must reach a subscriber at least once, in the order it was committed; duplicates are counted.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.edge_agent.agent.test_agent import BASE, make_agent, running
from tests.edge_agent.bundle_fixture import simulator_source, write_config
from tests.edge_agent.test_storage_faults import FLAPPING, flip_flop

ROOT = Path(__file__).resolve().parents[2]


class DurableSubscriber:
    """A SCADA-like subscriber: persistent session, QoS 1, reconnects; records event ids."""

    def __init__(self, port: int) -> None:
        self.ids: list[str] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="scada-under-test", clean_session=False
        )
        self.client.reconnect_delay_set(0.1, 1)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *a: c.subscribe(BASE + "event", qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        assert subscribed.wait(5)

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.ids.append(json.loads(msg.payload)["event_id"])

    def received(self) -> list[str]:
        with self._lock:
            return list(self.ids)

    def wait_for(self, wanted: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not set(wanted) <= set(self.received()):
            time.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def check_delivery(committed: list[str], received: list[str]) -> dict[str, int]:
    """Every committed id received, first arrivals in commit order; returns the accounting."""
    missing = [i for i in committed if i not in set(received)]
    assert not missing, f"{len(missing)} of {len(committed)} committed events never arrived"
    first: dict[str, int] = {}
    for position, event_id in enumerate(received):
        first.setdefault(event_id, position)
    order = [first[i] for i in committed]
    assert order == sorted(order), "events arrived out of commit order"
    return {"committed": len(committed), "duplicates": len(received) - len(set(received))}


def committed_ids(log: str) -> list[str]:
    """Event ids the agent logged as committed to its outbox (JSON log lines)."""
    ids = []
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == "event" and record.get("outbox") == "committed":
            ids.append(record["event_id"])
    return ids


def test_kill9_loop_loses_no_committed_event(tmp_path, agent_bundle, mosquitto):
    source = simulator_source(flip_flop(60, period_s=0.5), realtime=True)
    config = write_config(
        tmp_path / "dev", agent_bundle, mosquitto.port, source, decisions=FLAPPING
    )
    subscriber = DurableSubscriber(mosquitto.port)
    command = [sys.executable, "-m", "faultwatch", "agent", "run", "--config", str(config),
               "--log-format", "json"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    rng = random.Random(12)
    committed: list[str] = []
    kills = 5
    try:
        for run in range(kills + 1):
            log_path = tmp_path / f"run{run}.log"
            with open(log_path, "w") as log:
                agent = subprocess.Popen(command, env=env, cwd=ROOT, stderr=log,
                                         stdout=subprocess.DEVNULL)  # fmt: skip
                time.sleep(rng.uniform(2.5, 4.5))
                if run < kills:
                    agent.send_signal(signal.SIGKILL)
                else:
                    agent.send_signal(signal.SIGTERM)  # the last one flushes the outbox
                agent.wait(timeout=20)
            committed += committed_ids(log_path.read_text())
        subscriber.wait_for(committed, 20)
        accounting = check_delivery(committed, subscriber.received())
    finally:
        subscriber.close()
    assert accounting["committed"] >= 2 * kills, accounting  # events really flowed
    print(f"kill -9 x{kills}: {accounting}")


def test_broker_restart_and_freeze_lose_no_event(
    tmp_path, agent_bundle, persistent_mosquitto, caplog, wait_until
):
    caplog.set_level(logging.INFO)
    broker = persistent_mosquitto
    subscriber = DurableSubscriber(broker.port)
    source = simulator_source(flip_flop(120, period_s=0.5), realtime=True)
    agent = make_agent(tmp_path, agent_bundle, broker.port, source=source, decisions=FLAPPING)
    try:
        with agent, running(agent):
            assert wait_until(lambda: len(subscriber.received()) >= 2, 15)
            broker.stop()  # restart with persistence: the subscriber's queue survives
            time.sleep(2.0)
            assert agent.link.pending > 0, "events are held while the broker is down"
            broker.start()
            assert wait_until(lambda: agent.link.pending == 0, 15)
            os.kill(broker.pid, signal.SIGSTOP)  # frozen: TCP open, nothing answered
            time.sleep(3.0)
            os.kill(broker.pid, signal.SIGCONT)
            time.sleep(2.0)
        committed = [
            r.fields["event_id"]  # type: ignore[attr-defined]
            for r in caplog.records
            if getattr(r, "fields", {}).get("outbox") == "committed"
        ]
        subscriber.wait_for(committed, 20)
        accounting = check_delivery(committed, subscriber.received())
    finally:
        subscriber.close()
    assert accounting["committed"] >= 6, accounting
    print(f"broker restart + freeze: {accounting}")


def random_payloads(n: int, seed: int) -> list[tuple[str, bytes]]:
    """Command names and payloads a fuzzer would send: bytes, broken UTF-8 and JSON, surrogate
    escapes, wrong types, huge numbers, deep nesting, absurd paths and ranges."""
    rng = random.Random(seed)
    names = ["ping", "status", "calibrate", "rollback_head", "reload_bundle", "x", "ping/extra"]
    atoms = ['"\\ud800"', '"\\udfff"', "1e999", "-0", "null", "true", '"../../etc/passwd"',
             '"' + "a" * 300 + '"', "[[[[[[[[[[]]]]]]]]]]", '{"$gt": 1}', "12345678901234567890",
             '"2025-13-45T99:00:00Z"', '"٣"', '"vv1"']  # fmt: skip
    keys = ["id", "label", "files", "version", "path", "labels_from_utc", "labels_to_utc", "x"]
    out = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.2:
            payload = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        elif kind < 0.3:
            payload = b"{" * rng.randrange(1, 3000)
        else:
            fields = {k: rng.choice(atoms) for k in rng.sample(keys, rng.randrange(1, 5))}
            text = "{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}"
            payload = text.encode()
        out.append((rng.choice(names), payload))
    return out


def test_fuzzed_commands_leave_the_agent_answering_and_publishing(
    tmp_path, agent_bundle, mosquitto, collect
):
    collector = collect(mosquitto.port, BASE + "#")
    source = simulator_source(flip_flop(120, period_s=1.0), realtime=True)
    mqtt = {"host": "127.0.0.1", "port": mosquitto.port, "site": "s1", "asset": "a1",
            "device": "dev-test", "commands_per_minute": 6000}  # fmt: skip # no rate limit here
    agent = make_agent(
        tmp_path, agent_bundle, mosquitto.port, source=source, mqtt=mqtt, decisions=FLAPPING
    )
    fuzz = random_payloads(300, seed=3)
    with agent, running(agent):
        collector.wait_for(BASE + "event", lambda e: True, 15)
        for name, payload in fuzz:
            collector.client.publish(BASE + f"cmd/{name}", payload, qos=1)
        time.sleep(1.0)
        collector.publish(BASE + "cmd/ping", b'{"id": "still-here"}')
        pong = collector.wait_for(BASE + "cmd_result", lambda p: p["id"] == "still-here", 20)
        assert pong["ok"] and pong["message"] == "pong"
        seen = len(collector.on(BASE + "event"))
        collector.wait_for(BASE + "event", lambda e: True, 1)
        deadline = time.monotonic() + 10
        while len(collector.on(BASE + "event")) <= seen and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(collector.on(BASE + "event")) > seen, "events still flow after the fuzzing"
        counters = agent.link.counters
        assert counters.callback_errors == 0
    print(f"fuzzed commands: {len(fuzz)}, refused {counters.commands_refused}")

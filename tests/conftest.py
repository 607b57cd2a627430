"""Fixtures for the messaging tests: a real mosquitto broker and a raw MQTT collector."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from faultwatch.broker import MosquittoBroker, find_mosquitto
from tests.edge_agent.bundle_fixture import agent_bundle_folder


def _require_mosquitto() -> None:
    if find_mosquitto() is None:
        pytest.skip(
            "mosquitto is not installed (apt install mosquitto): these tests need a real broker"
        )


@pytest.fixture
def mosquitto() -> Iterator[MosquittoBroker]:
    """A real mosquitto on a free 127.0.0.1 port (anonymous, persistence off), accepting clients.

    Yields the broker: `.port`; `.stop()` / `.start()` / `.restart()` keep the same port.
    """
    _require_mosquitto()
    broker = MosquittoBroker(persistence=False)
    yield broker
    broker.close()


@pytest.fixture
def persistent_mosquitto() -> Iterator[MosquittoBroker]:
    """Like `mosquitto`, but sessions and queued messages survive `.stop()` + `.start()`."""
    _require_mosquitto()
    broker = MosquittoBroker(persistence=True)
    yield broker
    broker.close()


def poll_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """Poll `predicate` every 20 ms; True as soon as it holds, False after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def wait_until() -> Callable[..., bool]:
    """`wait_until(predicate, timeout_s=5.0) -> bool`."""
    return poll_until


class RawCollector:
    """A plain paho client recording every (topic, json payload, retain flag) it receives."""

    def __init__(self, port: int, topic_filter: str) -> None:
        self.messages: list[tuple[str, dict, bool]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        self.client.subscribe(topic_filter, qos=1)
        assert subscribed.wait(5), f"no SUBACK for {topic_filter}"

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        try:
            payload = json.loads(msg.payload)
        except (ValueError, RecursionError):  # e.g. the malformed commands a test sends
            payload = {"raw": msg.payload}
        with self._lock:
            self.messages.append((msg.topic, payload, bool(msg.retain)))

    def on(self, topic: str) -> list[dict]:
        with self._lock:
            return [payload for t, payload, _ in self.messages if t == topic]

    def wait_for(
        self, topic: str, predicate: Callable[[dict], bool], timeout_s: float = 5.0
    ) -> dict:
        def first_match() -> dict | None:
            return next((p for p in self.on(topic) if predicate(p)), None)

        poll_until(lambda: first_match() is not None, timeout_s)
        found = first_match()
        assert found is not None, f"nothing matching on {topic} in {timeout_s} s: {self.messages}"
        return found

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def collect() -> Iterator[Callable[[int, str], RawCollector]]:
    """`collect(port, topic_filter)` -> a subscribed RawCollector, closed after the test."""
    made: list[RawCollector] = []

    def make(port: int, topic_filter: str) -> RawCollector:
        made.append(RawCollector(port, topic_filter))
        return made[-1]

    yield make
    for collector in made:
        collector.close()


@pytest.fixture(scope="session")
def agent_bundle(request, tmp_path_factory) -> Path:
    """A tiny trained bundle (cached between runs) for tests that run the whole agent."""
    return agent_bundle_folder(request, tmp_path_factory)


# ---- a secured broker: the deploy config with a throwaway CA ------------------------------------

DEPLOY_MOSQUITTO = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto"


def make_certs(folder: Path, *identities: str, broker_hosts: str | None = None) -> Path:
    """Run deploy/mosquitto/make-certs.sh into `folder` (its CA is made once, then reused):
    `<identity>.crt/.key` per identity, `broker.crt/.key` for `broker_hosts`. Returns `folder`."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: deploy/mosquitto/make-certs.sh needs it")
    args = ["bash", str(DEPLOY_MOSQUITTO / "make-certs.sh"), "-o", str(folder)]
    args += ["-b", broker_hosts] if broker_hosts else []
    done = subprocess.run([*args, *identities], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"make-certs.sh failed: {done.stderr}"
    return folder


@pytest.fixture
def plant_pki(tmp_path) -> Path:
    """A throwaway plant CA (made by make-certs.sh) with a broker certificate for `localhost`
    (no IP address in it) and client certificates `dev-a`, `dev-b` and `scada`."""
    return make_certs(tmp_path / "pki", "dev-a", "dev-b", "scada", broker_hosts="localhost")


@pytest.fixture
def plant_mosquitto(plant_pki) -> Iterator[MosquittoBroker]:
    """deploy/mosquitto/mosquitto.conf with its ACL as written, on a free 127.0.0.1 port and with
    `plant_pki`'s CA: mutual TLS, identities from certificate CNs. Connect to `localhost`."""
    _require_mosquitto()
    broker = MosquittoBroker(
        config=(DEPLOY_MOSQUITTO / "mosquitto.conf").read_text(),
        settings={
            "cafile": plant_pki / "ca.crt",
            "certfile": plant_pki / "broker.crt",
            "keyfile": plant_pki / "broker.key",
            "acl_file": DEPLOY_MOSQUITTO / "acl",
        },
    )
    yield broker
    broker.close()

"""deploy/mosquitto: the production config and ACL, run for real, let no one in where they don't
belong.

Every test runs deploy/mosquitto/mosquitto.conf and deploy/mosquitto/acl as written (fixture
`plant_mosquitto`), moved to a free loopback port, with a throwaway CA made by make-certs.sh
(`plant_pki`: broker certificate for `localhost`; clients dev-a, dev-b, scada).

A refused publish is observable with MQTT 5 (the PUBACK says "Not authorized"); with 3.1.1
mosquitto drops it silently. Either way "never delivered" is shown without sleeping: the same
publisher then sends an allowed message to the same subscriber, and MQTT delivers one publisher's
messages in order, so once the allowed one is in, a forbidden one would have been in before it.
"""

from __future__ import annotations

import json
import ssl
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.agent.agent import Agent
from edge_agent.config import MqttConfig, TlsConfig, load_config
from edge_agent.contract.events import FaultEvent
from edge_agent.mqtt.link import MqttLink
from edge_agent.mqtt.outbox import Outbox
from faultwatch.broker import MosquittoBroker
from tests.conftest import make_certs
from tests.conftest import poll_until as wait
from tests.edge_agent.agent.test_agent import NO_DRIFT, running
from tests.edge_agent.bundle_fixture import FAULT_SCHEDULE, simulator_source, write_config

A = "faultwatch/s1/a1/dev-a/"
B = "faultwatch/s1/a1/dev-b/"
NOT_AUTHORIZED = "Not authorized"


class Peer:
    """A paho client with a client certificate, recording what it receives and its acks."""

    def __init__(
        self,
        broker: MosquittoBroker,
        pki: Path,
        identity: str | None,
        *,
        host: str = "localhost",
        trust: Path | None = None,
        protocol: int = mqtt.MQTTv5,
    ) -> None:
        self.protocol = protocol
        self.messages: list[tuple[str, bytes]] = []
        self.pubacks: dict[int, str] = {}
        self.subacks: list[list[str]] = []
        self.connected = threading.Event()
        self.connect_error: Exception | None = None
        self._lock = threading.Lock()
        name = identity or "nobody"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"test-{name}", protocol=protocol
        )
        cert = (str(pki / f"{identity}.crt"), str(pki / f"{identity}.key")) if identity else None
        self.client.tls_set(
            ca_certs=str(trust or pki / "ca.crt"),
            certfile=cert[0] if cert else None,
            keyfile=cert[1] if cert else None,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        try:
            self.client.connect(host, broker.port, keepalive=10)
        except (OSError, ssl.SSLError) as exc:  # the TLS handshake runs inside connect()
            self.connect_error = exc
            return
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            self.connected.set()

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload))

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            self.pubacks[mid] = str(reason_code)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._lock:
            self.subacks.append([str(code) for code in reason_codes])

    def subscribe(self, topic_filter: str) -> list[str]:
        """Subscribe at QoS 1; returns the SUBACK's reason codes."""
        before = len(self.subacks)
        self.client.subscribe(topic_filter, qos=1)
        assert wait(lambda: len(self.subacks) > before), f"no SUBACK for {topic_filter}"
        return self.subacks[before]

    def publish(self, topic: str, payload: bytes = b"{}") -> str:
        """Publish at QoS 1 and wait for the PUBACK; returns its reason ("Success" on 3.1.1)."""
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(5)
        assert wait(lambda: info.mid in self.pubacks), f"no PUBACK for {topic}"
        return self.pubacks[info.mid]

    def received(self, topic: str) -> list[bytes]:
        with self._lock:
            return [payload for t, payload in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def peers(plant_mosquitto, plant_pki):
    """`peers(identity, **Peer options)` -> a Peer (connected when it could), closed after."""
    made: list[Peer] = []

    def make(identity: str | None, **options) -> Peer:
        made.append(Peer(plant_mosquitto, plant_pki, identity, **options))
        return made[-1]

    yield make
    for peer in made:
        peer.close()


def connected(peer: Peer) -> Peer:
    assert peer.connected.wait(5), f"not connected: {peer.connect_error}"
    return peer


# ---- devices stay in their own subtree ----------------------------------------------------------


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311], ids=["mqtt5", "mqtt311"])
def test_a_device_publishes_into_its_own_subtree_only(peers, protocol):
    scada = connected(peers("scada"))
    scada.subscribe("faultwatch/#")
    scada.subscribe("spBv1.0/#")
    a = connected(peers("dev-a", protocol=protocol))
    refused = "Success" if protocol == mqtt.MQTTv311 else NOT_AUTHORIZED  # 3.1.1: silent drop

    forbidden = [
        B + "event",  # another device's subtree
        B + "status",
        "faultwatch/s1/a2/dev-b/event",  # ...under any asset
        A + "cmd/calibrate",  # its own commands: only SCADA writes there
        "faultwatch/s1/a1/dev-a",  # not a leaf of its subtree
        "faultwatch/s1/a1/dev-a/something_new",
        "spBv1.0/plant/NDATA/dev-b",  # Sparkplug: another node
        "spBv1.0/plant/DDATA/dev-b/a1",
        "spBv1.0/plant/NCMD/dev-a",  # commands, even to itself
        "spBv1.0/plant/DCMD/dev-a/a1",
        "spBv1.0/STATE/scada",  # the primary host's state
    ]
    for topic in forbidden:
        assert a.publish(topic, b"forged") == refused, topic

    allowed = [A + leaf for leaf in ("status", "state", "event", "telemetry", "cmd_result")]
    allowed += ["faultwatch/s1/a2/dev-a/event", "faultwatch/s2/a9/dev-a/error"]  # any asset
    allowed += ["spBv1.0/plant/NBIRTH/dev-a", "spBv1.0/plant/DDATA/dev-a/a1"]
    for topic in allowed:
        assert a.publish(topic, b"ok") == "Success", topic
    assert wait(lambda: len(scada.messages) == len(allowed)), scada.messages
    # in order after the forbidden ones: had any got through, it would be here first
    assert [topic for topic, _ in scada.messages] == allowed


def test_a_device_can_neither_command_nor_overhear_another_only_scada_commands(peers):
    a = connected(peers("dev-a"))
    b = connected(peers("dev-b"))
    scada = connected(peers("scada"))
    b.subscribe(B + "cmd/#")
    a.subscribe(A + "cmd/#")
    # mosquitto 2.0 grants any subscription and checks read access per message delivered
    overheard = a.subscribe(B + "cmd/#")
    assert overheard in (["Granted QoS 1"], [NOT_AUTHORIZED])

    forged = json.dumps({"id": "x1", "issuer": "scada"}).encode()  # the issuer field is a claim
    assert a.publish(B + "cmd/commission", forged) == NOT_AUTHORIZED
    assert scada.publish(B + "cmd/ping", b'{"id": "s1"}') == "Success"
    assert wait(lambda: b.received(B + "cmd/ping"))
    assert b.messages == [(B + "cmd/ping", b'{"id": "s1"}')], "B got the forged command"

    assert scada.publish(A + "cmd/ping", b'{"id": "s2"}') == "Success"  # after the one to B
    assert wait(lambda: a.received(A + "cmd/ping"))
    assert a.messages == [(A + "cmd/ping", b'{"id": "s2"}')], "A overheard B's command"


def test_sparkplug_commands_and_state_reach_their_node_only(peers):
    a = connected(peers("dev-a"))
    b = connected(peers("dev-b"))
    scada = connected(peers("scada"))
    for node in (a, b):
        node.subscribe("spBv1.0/STATE/#")
    b.subscribe("spBv1.0/plant/NCMD/dev-b")
    b.subscribe("spBv1.0/plant/DCMD/dev-b/#")
    a.subscribe("spBv1.0/plant/DCMD/#")  # every node's device commands: gets only its own

    assert a.publish("spBv1.0/plant/DCMD/dev-b/a1") == NOT_AUTHORIZED
    assert scada.publish("spBv1.0/plant/DCMD/dev-b/a1", b"rebirth") == "Success"
    assert scada.publish("spBv1.0/plant/NCMD/dev-b", b"rebirth") == "Success"
    assert scada.publish("spBv1.0/plant/DCMD/dev-a/a1", b"write") == "Success"
    assert scada.publish("spBv1.0/STATE/scada", b"online") == "Success"
    assert wait(lambda: b.received("spBv1.0/STATE/scada") and a.received("spBv1.0/STATE/scada"))
    assert [t for t, _ in b.messages] == [
        "spBv1.0/plant/DCMD/dev-b/a1",
        "spBv1.0/plant/NCMD/dev-b",
        "spBv1.0/STATE/scada",
    ]
    assert [t for t, _ in a.messages] == ["spBv1.0/plant/DCMD/dev-a/a1", "spBv1.0/STATE/scada"]


def test_an_oversized_message_is_not_relayed(peers):
    # MQTT 3.1.1: mosquitto acknowledges and drops it. (With MQTT 5, mosquitto 2.0.11 answers with
    # a PUBACK reason code that paho 2.2 calls malformed: paho disconnects and re-sends it.)
    scada = connected(peers("scada"))
    scada.subscribe(A + "#")
    a = connected(peers("dev-a", protocol=mqtt.MQTTv311))
    limit = 262_144  # message_size_limit in deploy/mosquitto/mosquitto.conf
    assert a.publish(A + "event", b"x" * (limit + 1)) == "Success"
    assert a.publish(A + "event", b"x" * limit) == "Success"
    assert wait(lambda: scada.received(A + "event"))
    assert [len(p) for p in scada.received(A + "event")] == [limit]


# ---- who may connect at all --------------------------------------------------------------------


@pytest.fixture
def foreign_pki(tmp_path) -> Path:
    """Another CA, with a certificate for the very name `dev-a`."""
    return make_certs(tmp_path / "foreign", "dev-a")


@pytest.mark.parametrize(
    ("who", "logged"),
    [
        ("no certificate", "peer did not return a certificate"),
        ("certificate from another CA", "certificate verify failed"),
    ],
)
def test_a_client_without_a_plant_certificate_is_refused_at_connect(
    peers, plant_mosquitto, plant_pki, foreign_pki, who, logged
):
    if who == "no certificate":
        stranger = peers(None)
    else:  # trusts the plant's broker, presents the other CA's dev-a
        stranger = Peer(plant_mosquitto, foreign_pki, "dev-a", trust=plant_pki / "ca.crt")
    connected(peers("dev-b"))  # the broker accepts a plant certificate meanwhile
    assert not stranger.connected.wait(2), f"{who}: connected"
    stranger.close()
    log = plant_mosquitto.log_path.read_text(errors="replace")
    assert logged in log, log[-1500:]


def test_host_name_checking_refuses_a_broker_certificate_for_another_name(peers):
    # the broker's certificate names `localhost` only: 127.0.0.1 is the same broker, another name
    checked = peers("dev-a", host="127.0.0.1")
    assert isinstance(checked.connect_error, ssl.SSLCertVerificationError)
    assert "IP address mismatch" in str(checked.connect_error)
    assert connected(peers("dev-b", host="localhost"))


# ---- the real agent ----------------------------------------------------------------------------


def plant_tls(pki: Path, device: str, **options) -> TlsConfig:
    """The agent's [mqtt.tls] for `device` with its plant certificate."""
    cert, key = pki / f"{device}.crt", pki / f"{device}.key"
    return TlsConfig(ca_file=pki / "ca.crt", cert_file=cert, key_file=key, **options)


def agent_mqtt(broker: MosquittoBroker, pki: Path, device: str, **fields) -> MqttConfig:
    """The [mqtt] section of an agent that is `device` with its plant certificate."""
    return MqttConfig(host="localhost", port=broker.port, site="s1", asset="a1", device=device,
                      keepalive_s=5, tls=plant_tls(pki, device), **fields)  # fmt: skip


def test_the_agent_link_uses_its_certificate_and_checks_the_host_name(
    peers, plant_mosquitto, plant_pki, tmp_path
):
    scada = connected(peers("scada"))
    scada.subscribe("faultwatch/#")
    cfg = agent_mqtt(plant_mosquitto, plant_pki, "dev-a")
    commands = []
    link = MqttLink(
        cfg,
        Outbox(tmp_path / "a.sqlite3"),
        lambda command, asset: commands.append((command.name, asset)),
        assets=("a2",),  # a two-channel gateway: two assets, one identity
        reconnect_min_delay_s=0.1,
    )
    try:
        assert wait(lambda: scada.received(A + "status")), "no status from the agent"
        assert json.loads(scada.received(A + "status")[0])["status"] == "online"
        for asset in ("a1", "a2"):
            event = FaultEvent(site="s1", asset=asset, device="dev-a", kind="drift",
                               severity="warning", state="normal")  # fmt: skip
            link.publish_event(event)
        assert wait(lambda: scada.received("faultwatch/s1/a2/dev-a/event"))
        assert len(scada.received(A + "event")) == 1
        assert wait(lambda: link.pending == 0), "the broker did not acknowledge the events"
        assert scada.publish("faultwatch/s1/a2/dev-a/cmd/ping", b'{"id": "p1"}') == "Success"
        assert wait(lambda: commands == [("ping", "a2")]), commands
    finally:
        link.close()
    assert wait(lambda: b"offline" in scada.received(A + "status")[-1])

    # the same agent, reaching the broker by an address its certificate does not name
    for skip_verify in (False, True):
        tls = plant_tls(plant_pki, "dev-a", insecure_skip_verify=skip_verify)
        wrong_host = cfg.model_copy(update={"host": "127.0.0.1", "tls": tls})
        link = MqttLink(wrong_host, Outbox(tmp_path / f"{skip_verify}.sqlite3"),
                        lambda command, asset: None, reconnect_min_delay_s=0.1)  # fmt: skip
        try:
            assert wait(lambda: link.connected, 3) == skip_verify, f"{skip_verify=}"  # noqa: B023
        finally:
            link.close(flush_timeout_s=0)


def test_command_issuers_and_the_acl_together_guard_state_changes(
    peers, plant_mosquitto, plant_pki, tmp_path, agent_bundle
):
    """The ACL decides who may publish a command at all; `command_issuers` makes the agent also
    refuse a state change that does not name an allowed issuer, even from SCADA."""
    scada = connected(peers("scada"))
    scada.subscribe(B + "#")
    a = connected(peers("dev-a"))
    mqtt_cfg = agent_mqtt(plant_mosquitto, plant_pki, "dev-b", command_issuers=["scada"])
    path = write_config(tmp_path / "dev-b", agent_bundle, plant_mosquitto.port,
                        source=simulator_source(FAULT_SCHEDULE), decisions=NO_DRIFT,
                        mqtt=mqtt_cfg.model_dump(mode="json", exclude_none=True))  # fmt: skip
    with Agent(load_config(path)) as agent, running(agent):
        assert wait(lambda: scada.received(B + "status"), 20), "the agent did not come online"

        def reply(command_id: str) -> dict:
            def found() -> list[dict]:
                return [r for r in map(json.loads, scada.received(B + "cmd_result"))
                        if r["id"] == command_id]  # fmt: skip

            assert wait(lambda: found(), 20), f"no cmd_result for {command_id}"
            return found()[0]

        # another device claims to be SCADA: the broker drops it, the agent never sees it
        assert a.publish(B + "cmd/commission", b'{"id": "f1", "issuer": "scada"}') == (
            NOT_AUTHORIZED
        )
        assert scada.publish(B + "cmd/commission", b'{"id": "c1"}') == "Success"
        anonymous = reply("c1")
        assert not anonymous["ok"] and "no issuer is not one of" in anonymous["message"]
        calibrate = {"id": "c2", "label": "normal", "labels_from_utc": "2024-01-01T00:00:00Z",
                     "labels_to_utc": "2024-01-01T00:01:00Z", "issuer": "dev-a"}  # fmt: skip
        assert scada.publish(B + "cmd/calibrate", json.dumps(calibrate).encode()) == "Success"
        stranger = reply("c2")
        assert not stranger["ok"] and "issuer 'dev-a' is not one of" in stranger["message"]
        assert scada.publish(B + "cmd/ping", b'{"id": "p1"}') == "Success"  # reading is free
        assert reply("p1")["ok"]
        ok = {"id": "c3", "issuer": "scada"}
        assert scada.publish(B + "cmd/commission", json.dumps(ok).encode()) == "Success"
        assert reply("c3")["ok"]
        ids = [json.loads(r)["id"] for r in scada.received(B + "cmd_result")]
        assert "f1" not in ids and ids == ["c1", "c2", "p1", "c3"]

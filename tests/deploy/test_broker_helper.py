"""faultwatch.broker's access-control options: a TLS listener, an ACL and a password file, and a
production config adapted to loopback."""

from __future__ import annotations

import shutil
import subprocess
import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from faultwatch.broker import BrokerTls, MosquittoBroker, adapt_config, find_mosquitto, start_broker
from tests.conftest import make_certs
from tests.deploy.test_broker_security import wait

needs_mosquitto = pytest.mark.skipif(
    find_mosquitto() is None or shutil.which("mosquitto_passwd") is None,
    reason="needs mosquitto and mosquitto_passwd (apt install mosquitto)",
)


def connect(port: int, ca, username: str | None, password: str | None) -> tuple[mqtt.Client, str]:
    """Connect over TLS (server certificate checked, no client certificate); returns the client
    and the CONNACK's reason ("" when none came)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(ca))
    if username is not None:
        client.username_pw_set(username, password)
    answered, reason = threading.Event(), []

    def on_connect(c, u, flags, reason_code, properties) -> None:
        reason.append(str(reason_code))
        answered.set()

    client.on_connect = on_connect
    client.connect("localhost", port, keepalive=10)
    client.loop_start()
    answered.wait(5)
    return client, (reason or [""])[0]


@needs_mosquitto
def test_tls_acl_and_password_file_are_enforced(tmp_path):
    pki = make_certs(tmp_path / "pki", broker_hosts="localhost")
    passwords = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "alice", "s3cret"], check=True)
    acl = tmp_path / "acl"
    acl.write_text("user alice\ntopic readwrite demo/alice/#\n")
    tls = BrokerTls(pki / "ca.crt", pki / "broker.crt", pki / "broker.key",
                    require_certificate=False, use_identity_as_username=False)  # fmt: skip
    with start_broker(tls=tls, acl_file=acl, password_file=passwords) as broker:
        assert broker.kind == "mosquitto"
        for username, password in [("alice", "wrong"), (None, None)]:
            client, reason = connect(broker.port, pki / "ca.crt", username, password)
            client.loop_stop()
            assert reason in ("Bad user name or password", "Not authorized"), (username, reason)

        alice, reason = connect(broker.port, pki / "ca.crt", "alice", "s3cret")
        assert reason == "Success"
        got: list[str] = []
        alice.on_message = lambda c, u, msg: got.append(msg.topic)
        alice.subscribe("demo/#", qos=1)
        other = alice.publish("demo/bob/x", b"1", qos=1)
        mine = alice.publish("demo/alice/x", b"1", qos=1)
        other.wait_for_publish(5)
        mine.wait_for_publish(5)
        assert wait(lambda: got), "alice got nothing on her own topic"
        alice.disconnect()
        alice.loop_stop()
    assert got == ["demo/alice/x"]


def test_adapt_config_moves_the_listener_to_loopback_and_replaces_settings(tmp_path):
    text = "listener 8883\ncafile /etc/ca.crt\nuser mosquitto\nlog_dest syslog\nmax_qos 1\n"
    adapted = adapt_config(text, 4242, tmp_path, {"cafile": tmp_path / "ca.crt", "acl_file": "a"})
    lines = adapted.splitlines()
    assert lines[:3] == ["listener 4242 127.0.0.1", f"cafile {tmp_path}/ca.crt", "max_qos 1"]
    assert "acl_file a" in lines and "log_dest stderr" in lines
    assert "user mosquitto" not in lines and "log_dest syslog" not in lines
    with pytest.raises(ValueError, match="exactly one listener, got 2"):
        adapt_config(text + "listener 1883\n", 1, tmp_path)
    with pytest.raises(ValueError, match="sets user itself"):
        adapt_config(text, 1, tmp_path, {"user": "root"})


def test_security_options_refuse_what_they_cannot_honour(tmp_path):
    with pytest.raises(ValueError, match="need kind='mosquitto', got 'amqtt'"):
        start_broker(kind="amqtt", acl_file=tmp_path / "acl")
    with pytest.raises(ValueError, match="put acl_file in settings="):
        MosquittoBroker(config="listener 1\n", acl_file=tmp_path / "acl")
    with pytest.raises(ValueError, match="needs require_certificate=True"):
        BrokerTls(tmp_path, tmp_path, tmp_path, require_certificate=False).config_lines()

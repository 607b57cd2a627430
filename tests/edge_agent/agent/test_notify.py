"""sd_notify over a real AF_UNIX datagram socket, as systemd's side would receive it."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from edge_agent.agent.notify import notify, watchdog_interval_s


@pytest.fixture
def systemd_socket(tmp_path, monkeypatch):
    """A bound datagram socket standing in for systemd; NOTIFY_SOCKET points at it."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_ready_watchdog_and_status_arrive(systemd_socket):
    assert notify(READY=1, STATUS="state=normal windows/s=11.7")
    assert systemd_socket.recv(4096) == b"READY=1\nSTATUS=state=normal windows/s=11.7"
    assert notify(WATCHDOG=1)
    assert systemd_socket.recv(4096) == b"WATCHDOG=1"
    assert notify(STOPPING=1)
    assert systemd_socket.recv(4096) == b"STOPPING=1"


def test_abstract_namespace_socket(monkeypatch):
    name = f"faultwatch-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify(READY=1)
        assert sock.recv(4096) == b"READY=1"


def test_no_op_without_systemd_and_no_crash_when_it_is_gone(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify(READY=1) is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    assert notify(WATCHDOG=1) is False  # logged, never raised


def test_watchdog_interval_is_half_the_timeout_for_this_process(monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")  # WatchdogSec=30
    assert watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval_s() is None  # meant for another process
    monkeypatch.delenv("WATCHDOG_PID")
    monkeypatch.setenv("WATCHDOG_USEC", "garbage")
    assert watchdog_interval_s() is None


def test_a_receiver_that_stopped_reading_never_blocks_the_agent(tmp_path, monkeypatch):
    """Its queue fills up (a frozen receiver): later notifications are dropped, at once."""
    import time

    path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    start = time.monotonic()
    sent = [notify(WATCHDOG=1) for _ in range(5000)]
    assert time.monotonic() - start < 10.0
    assert sent[0] and not sent[-1]  # the first went out; once full, they are dropped
    receiver.close()

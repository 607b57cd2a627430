"""A full, read-only or stalled disk under the agent's state directory (issue 12): inference and
live publishing go on, a `storage` fault is raised, and everything recovers when the disk does.

The agent's state directory is a small tmpfs (root only; the test skips with the reason
elsewhere), filled up for the full disk; an I/O error is SQLite's own error, injected below it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.mqtt import spool as spool_module
from edge_agent.mqtt.outbox import Outbox, OutboxStorageError
from edge_agent.mqtt.spool import EventSpool
from tests.edge_agent.agent.test_agent import BASE, make_agent, running
from tests.edge_agent.bundle_fixture import SEVERITY, simulator_source

# ---- the outbox and the spool alone -----------------------------------------------------------


def test_outbox_file_is_private(tmp_path):
    Outbox(tmp_path / "o.sqlite3").put("t", b"x", 1, "info")
    for name in ("o.sqlite3", "o.sqlite3-wal"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name


def test_outbox_sheds_by_bytes_by_the_severity_policy(tmp_path):
    outbox = Outbox(tmp_path / "o.sqlite3", max_events=100, max_bytes=1000)
    outbox.put("t", b"a" * 400, 1, "info", "i1")
    outbox.put("t", b"b" * 400, 1, "alarm", "a1")
    outbox.put("t", b"c" * 400, 1, "warning", "w1")  # over 1000 bytes: the info goes
    assert [r.event_id for r in outbox.pending()] == ["a1", "w1"]
    assert outbox.put("t", b"d" * 400, 1, "info", "i2") is None  # less severe than all stored
    assert outbox.put("t", b"e" * 5000, 1, "alarm", "huge") is None  # can never fit
    assert outbox.stored_bytes == 800 and outbox.dropped_total == 3


class StalledOutbox(Outbox):
    """An outbox whose writes block until `release` is set, like a disk whose fsync hangs."""

    release = threading.Event()

    def put(self, *args, **kwargs):
        self.release.wait(30)
        return super().put(*args, **kwargs)


def test_a_stalled_disk_does_not_block_the_caller_and_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(spool_module, "STALL_S", 0.3)
    outbox = StalledOutbox(tmp_path / "o.sqlite3")
    spool = EventSpool(outbox, commit_wait_s=0.2)
    try:
        start = time.monotonic()
        items = [spool.submit("t", b"x", 1, "alarm", f"e{i}") for i in range(5)]
        assert time.monotonic() - start < 1.5, "submit waited for the stalled disk"
        assert not any(item.committed.is_set() for item in items)
        time.sleep(0.4)
        assert "has not finished" in spool.problem()
        assert [p.event_id for p in spool.in_memory()] == [f"e{i}" for i in range(5)]
        outbox.release.set()
        deadline = time.monotonic() + 5
        while spool.problem() is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert all(item.committed.wait(5) for item in items)
        assert spool.problem() is None and len(outbox) == 5 and not spool.in_memory()
    finally:
        outbox.release.set()
        spool.close()


class FailingOutbox(Outbox):
    """An outbox on a disk that fails every write while `failing` is set (an I/O error)."""

    failing = True

    def put(self, *args, **kwargs):
        if self.failing:
            raise OutboxStorageError("outbox: storing an event failed (disk I/O error)")
        return super().put(*args, **kwargs)


def test_events_in_memory_survive_a_failing_disk_and_are_written_when_it_recovers(tmp_path):
    outbox = FailingOutbox(tmp_path / "o.sqlite3")
    spool = EventSpool(outbox, commit_wait_s=0.1, retry_s=0.1, max_memory_events=3)
    try:
        for i, severity in enumerate(["alarm", "info", "warning", "alarm"]):
            spool.submit("t", b"x", 1, severity, f"e{i}")
        assert "I/O error" in spool.problem()
        assert [p.event_id for p in spool.in_memory()] == ["e0", "e2", "e3"]  # the info shed
        assert spool.dropped_in_memory == 1
        delivered = spool.in_memory()[0]
        spool.delivered(delivered)  # published directly while the disk failed: never written
        outbox.failing = False
        deadline = time.monotonic() + 5
        while spool.in_memory() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [r.event_id for r in outbox.pending()] == ["e2", "e3"]
        assert spool.problem() is None
    finally:
        spool.close()


# ---- the whole agent on a small tmpfs ---------------------------------------------------------


def _can_mount() -> str | None:
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    return None


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path) -> Path:
    """Write a file until the file system is full; returns it."""
    filler = folder / "filler"
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
    return filler


def test_outbox_opens_on_a_full_disk_and_works_once_space_returns(tmp_path):
    if reason := _can_mount():
        pytest.skip(reason)
    with tmpfs(tmp_path / "state", "1m") as state:
        with Outbox(state / "o.sqlite3") as outbox:
            outbox.put("t", b"kept", 1, "alarm", "before")
        filler = fill(state)
        outbox = Outbox(state / "o.sqlite3")  # what a restarting agent does: it must not fail
        with pytest.raises(OutboxStorageError, match="free space"):
            outbox.put("t", b"x", 1, "alarm", "during")
        filler.unlink()
        outbox.put("t", b"x", 1, "alarm", "after")
        assert [r.event_id for r in outbox.pending()] == ["before", "after"]
        outbox.close()


# every change announced at once, so a test sees a steady stream of events
FLAPPING = {"k": 3, "n": 5, "drift_window": 20, "drift_threshold": 1e9, "min_dwell_s": 0.0,
            "uncertain_after_s": 0.0, "max_events_per_hour": 3600}  # fmt: skip


def flip_flop(seconds: float, period_s: float = 0.6) -> list[dict]:
    """A schedule alternating normal and inner race, so events keep coming."""
    steps, at, i = [], 0.0, 0
    while at < seconds:
        fault = "inner_race" if i % 2 else "normal"
        steps.append({"at_s": round(at, 2), "fault": fault, "severity": SEVERITY})
        at, i = at + period_s, i + 1
    return steps


class FlakyDisk:
    """Wraps the outbox's SQLite connection: every write fails with SQLite's own I/O error while
    `failing` is set, as a dying SD card would."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db, self.failing = db, False

    def execute(self, sql: str, *args):
        if self.failing and sql.split()[0].upper() in {"BEGIN", "INSERT", "DELETE"}:
            raise sqlite3.OperationalError("disk I/O error")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self.db, name)


def storage_events(collector) -> list[dict]:
    return [e for e in collector.on(BASE + "event") if e["kind"] == "storage"]


@pytest.mark.parametrize("breakage", ["full", "io-error"])
def test_agent_keeps_publishing_through_a_broken_state_disk_and_recovers(
    breakage, tmp_path, agent_bundle, mosquitto, collect, wait_until, caplog
):
    if reason := _can_mount():
        pytest.skip(reason)
    caplog.set_level(logging.INFO)
    collector = collect(mosquitto.port, BASE + "#")
    with tmpfs(tmp_path / "state", "2m") as state:
        source = simulator_source(flip_flop(120), realtime=True)
        agent = make_agent(tmp_path, agent_bundle, mosquitto.port, source=source,
                           state_dir=str(state), decisions=FLAPPING)  # fmt: skip
        with agent, running(agent):
            assert wait_until(lambda: len(collector.on(BASE + "event")) >= 2, 15)
            disk = agent.outbox._db = FlakyDisk(agent.outbox._db)
            if breakage == "full":
                filler = fill(state)
            else:
                disk.failing = True
            fault = collector.wait_for(BASE + "event", lambda e: e["kind"] == "storage", 15)
            assert fault["severity"] == "warning" and "storage fault" in fault["message"]
            status = collector.wait_for(BASE + "status", lambda s: s["storage_error"], 10)
            assert "outbox" in status["storage_error"]
            before = len(collector.on(BASE + "event"))
            assert wait_until(lambda: len(collector.on(BASE + "event")) >= before + 3, 15), (
                "state changes are still delivered while the disk is broken"
            )
            assert agent.windows_total > 0 and agent.link.counters.sent_from_memory >= 3
            if breakage == "full":
                filler.unlink()
            else:
                disk.failing = False
            ok = collector.wait_for(
                BASE + "event", lambda e: e["kind"] == "storage" and e["severity"] == "info", 20
            )
            assert "works again" in ok["message"]
            n = len(collector.on(BASE + "event"))
            assert wait_until(lambda: len(collector.on(BASE + "event")) >= n + 2, 15)
        assert [e["severity"] for e in storage_events(collector)] == ["warning", "info"]
    committed = [r for r in caplog.records if "outbox=committed" in r.getMessage()]
    assert committed, "events are committed again after the recovery"

"""The outbox keeps every committed event across crashes, in order, within its bound."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.config import OutboxConfig
from edge_agent.contract.events import SEVERITY_RANK
from edge_agent.mqtt.outbox import Outbox, OutboxError

REPO = Path(__file__).resolve().parents[3]
FAST_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None  # fsync is free on tmpfs

WRITER = """
import sys
from edge_agent.mqtt.outbox import Outbox
outbox = Outbox(sys.argv[1])
for i in range(100000):
    seq = outbox.put("t/event", b"payload %d" % i, 1, "alarm", event_id="e%06d" % i)
    print(seq, flush=True)
"""


def test_rows_come_back_in_order_until_acked(tmp_path):
    outbox = Outbox(tmp_path / "o.sqlite3")
    seqs = [outbox.put("t/event", f"p{i}".encode(), 1, "warning") for i in range(5)]
    assert seqs == sorted(seqs) and len(outbox) == 5
    rows = outbox.pending(limit=3)
    assert [r.seq for r in rows] == seqs[:3]
    assert rows[0].payload == b"p0" and rows[0].topic == "t/event" and rows[0].qos == 1
    assert [r.seq for r in outbox.pending(after_seq=seqs[2])] == seqs[3:]
    assert outbox.ack(seqs[1]) is True
    assert outbox.ack(seqs[1]) is False  # already gone
    assert outbox.ack_many(seqs[2:4]) == 2
    assert [r.seq for r in outbox.pending()] == [seqs[0], seqs[4]]
    assert len(outbox) == 2


def test_the_same_event_id_is_stored_once(tmp_path):
    outbox = Outbox(tmp_path / "o.sqlite3")
    first = outbox.put("t/event", b"x", 1, "alarm", event_id="abc")
    assert outbox.put("t/event", b"x", 1, "alarm", event_id="abc") == first
    assert len(outbox) == 1


def test_rows_survive_reopening_and_new_seqs_keep_growing(tmp_path):
    path = tmp_path / "o.sqlite3"
    with Outbox(path) as outbox:
        last = [outbox.put("t/event", b"x", 1, "info") for _ in range(3)][-1]
        outbox.ack(last)  # AUTOINCREMENT: an acked seq is never reused
    with Outbox(path) as outbox:
        assert len(outbox) == 2
        assert outbox.put("t/event", b"y", 1, "info") > last


def test_file_is_in_wal_mode(tmp_path):
    path = tmp_path / "o.sqlite3"
    Outbox(path).put("t", b"x", 1, "info")
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_full_outbox_drops_the_oldest_least_severe_event_and_counts_it(tmp_path, caplog):
    outbox = Outbox(tmp_path / "o.sqlite3", max_events=4)
    ids = {}
    for name, severity in [("a1", "alarm"), ("i1", "info"), ("w1", "warning"), ("i2", "info")]:
        ids[name] = outbox.put("t", name.encode(), 1, severity, event_id=name)
    outbox.put("t", b"a2", 1, "alarm", event_id="a2")
    assert [r.event_id for r in outbox.pending()] == ["a1", "w1", "i2", "a2"]  # i1 went first
    assert outbox.dropped_total == 1
    assert "dropped info event i1" in caplog.text

    outbox.put("t", b"a3", 1, "alarm", event_id="a3")
    outbox.put("t", b"a4", 1, "alarm", event_id="a4")
    assert [r.event_id for r in outbox.pending()] == ["a1", "a2", "a3", "a4"]
    # An info event never pushes out an alarm: it is the one dropped.
    assert outbox.put("t", b"i3", 1, "info", event_id="i3") is None
    assert [r.event_id for r in outbox.pending()] == ["a1", "a2", "a3", "a4"]
    assert outbox.dropped_total == 4


def test_drop_oldest_ignores_severity(tmp_path):
    outbox = Outbox(tmp_path / "o.sqlite3", max_events=2, when_full="drop_oldest")
    for name, severity in [("a1", "alarm"), ("i1", "info"), ("i2", "info")]:
        outbox.put("t", b"x", 1, severity, event_id=name)
    assert [r.event_id for r in outbox.pending()] == ["i1", "i2"]
    assert outbox.dropped_total == 1


@settings(max_examples=25, deadline=None)
@given(
    severities=st.lists(st.sampled_from(list(SEVERITY_RANK)), max_size=20),
    max_events=st.integers(1, 6),
)
def test_bounded_outbox_matches_a_slow_reference(severities, max_events):
    """Reference: keep a list; when full, drop the (lowest rank, oldest) or the new event."""
    with tempfile.TemporaryDirectory(dir=FAST_DIR) as folder:
        outbox = Outbox(Path(folder) / "o.sqlite3", max_events=max_events)
        kept: list[tuple[int, int]] = []  # (rank, order)
        dropped = 0
        for order, severity in enumerate(severities):
            rank = SEVERITY_RANK[severity]
            outbox.put("t", b"x", 1, severity, event_id=str(order))
            if len(kept) >= max_events:
                dropped += 1
                victim = min(kept)
                if rank < victim[0]:
                    continue
                kept.remove(victim)
            kept.append((rank, order))
        assert [r.event_id for r in outbox.pending(limit=100)] == [str(o) for _, o in kept]
        assert len(outbox) == len(kept) <= max_events
        assert outbox.dropped_total == dropped
        outbox.close()


def test_concurrent_puts_from_threads_lose_nothing(tmp_path):
    outbox = Outbox(tmp_path / "o.sqlite3")

    def writer(k: int) -> None:
        for i in range(25):
            outbox.put("t", b"x", 1, "info", event_id=f"{k}-{i}")

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = outbox.pending(limit=1000)
    assert len(outbox) == len(rows) == 100
    assert len({r.event_id for r in rows}) == 100
    assert [r.seq for r in rows] == sorted(r.seq for r in rows)


def test_every_committed_event_survives_kill_9(tmp_path):
    path = tmp_path / "o.sqlite3"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    committed = [int(writer.stdout.readline()) for _ in range(40)]  # type: ignore[union-attr]
    os.kill(writer.pid, signal.SIGKILL)  # while it keeps writing
    writer.wait()
    with Outbox(path) as reopened:
        stored = {r.seq for r in reopened.pending(limit=100_000)}
        assert set(committed) <= stored
        assert len(reopened) == len(stored) >= 40


def test_from_config_puts_a_relative_path_in_the_state_dir(tmp_path):
    cfg = OutboxConfig(path=Path("spool/outbox.sqlite3"), max_events=10, when_full="drop_oldest")
    outbox = Outbox.from_config(cfg, tmp_path)
    assert outbox.path == tmp_path / "spool" / "outbox.sqlite3" and outbox.path.exists()
    assert (outbox.max_events, outbox.when_full) == (10, "drop_oldest")


def test_bad_arguments_and_a_corrupt_file_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="unknown severity 'critical'"):
        Outbox(tmp_path / "a.sqlite3").put("t", b"x", 1, "critical")
    with pytest.raises(ValueError, match="when_full 'drop_newest'"):
        Outbox(tmp_path / "b.sqlite3", when_full="drop_newest")  # type: ignore[arg-type]
    corrupt = tmp_path / "corrupt.sqlite3"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError, match="move it aside"):
        Outbox(corrupt)

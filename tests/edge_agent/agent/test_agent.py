"""The agent end to end: a real tiny bundle, the simulator/replay sources, a real mosquitto.

Also the embedding log and calibration set it keeps for on-device calibration.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.agent import agent as service
from edge_agent.agent.agent import Agent
from edge_agent.calibration.embedding_log import CalibrationSet, EmbeddingLog
from edge_agent.config import load_config
from edge_agent.contract.bundle import pack
from edge_agent.mqtt.memory import MemoryLink
from edge_agent.physics.bearing_sim import BearingSimulator, Conditions
from edge_agent.sources import SourceError
from tests.edge_agent.bundle_fixture import (
    CLASS_NAMES,
    EMBEDDING_DIM,
    FAULT_SCHEDULE,
    HOP,
    SAMPLE_RATE_HZ,
    SEED,
    SEVERITY,
    WINDOW,
    simulator_source,
    write_config,
)

BASE = "faultwatch/s1/a1/dev-test/"
NO_DRIFT = {"k": 3, "n": 5, "drift_window": 20, "drift_threshold": 1e9}


def make_agent(tmp_path: Path, bundle: Path, port: int, **overrides) -> Agent:
    overrides.setdefault("source", simulator_source(FAULT_SCHEDULE))
    overrides.setdefault("decisions", NO_DRIFT)
    return Agent(load_config(write_config(tmp_path / "dev", bundle, port, **overrides)))


@contextmanager
def running(agent: Agent, **limits) -> Iterator[threading.Event]:
    """Run the agent in a thread; on exit stop it (like SIGTERM) and wait for the flush."""
    stop = threading.Event()
    failures: list[BaseException] = []

    def target() -> None:
        try:
            agent.run(stop, **limits)
        except BaseException as exc:  # surfaced in the test
            failures.append(exc)

    thread = threading.Thread(target=target, name="agent-under-test", daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=15)
        assert not thread.is_alive(), "agent did not stop within 15 s of the stop event"
        assert not failures, failures


def send(collector, name: str, payload: dict | bytes, timeout_s: float = 20.0) -> dict:
    """Publish a command, return its cmd_result (matched by id)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    collector.publish(BASE + f"cmd/{name}", body)
    assert isinstance(payload, dict)
    return collector.wait_for(
        BASE + "cmd_result", lambda p: p["id"] == payload["id"], timeout_s=timeout_s
    )


def events(collector) -> list[dict]:
    return collector.on(BASE + "event")


# ---- the window path --------------------------------------------------------------------------


def test_fault_and_flat_sensor_reach_a_subscriber_and_systemd(
    tmp_path, agent_bundle, mosquitto, collect, monkeypatch
):
    notify_path = tmp_path / "notify.sock"
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(str(notify_path))
    systemd.settimeout(0.5)
    datagrams: list[str] = []
    reading = threading.Event()

    def read_like_systemd() -> None:  # systemd reads at once; a full queue would drop pings
        while not reading.is_set():
            try:
                datagrams.append(systemd.recv(4096).decode())
            except TimeoutError:
                continue

    reader = threading.Thread(target=read_like_systemd, daemon=True)
    reader.start()
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_path))
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    collector = collect(mosquitto.port, "faultwatch/#")
    agent = make_agent(tmp_path, agent_bundle, mosquitto.port)
    windows = int(8.0 * SAMPLE_RATE_HZ / HOP)  # normal 0-3 s, inner race 3-6 s, flat 6-8 s
    with agent:
        summary = agent.run(max_windows=windows)
        assert len(agent.outbox) == 0, "the stop flushed the outbox"

    assert summary["windows_total"] == windows
    collector.wait_for(BASE + "event", lambda p: p["state"] == "sensor_fault")
    got = events(collector)
    states = [(e["kind"], e["severity"], e["previous_state"], e["state"]) for e in got]
    assert states == [
        ("state_change", "info", "unknown", "normal"),
        ("state_change", "alarm", "normal", "inner_race"),
        ("sensor_fault", "warning", "inner_race", "sensor_fault"),
    ]
    fault = got[1]
    assert fault["class_name"] == "inner_race" and fault["confidence"] >= 0.7
    assert set(fault["probabilities"]) == set(CLASS_NAMES)
    assert fault["model_name"] == "tiny" and fault["head_version"] == "1"
    assert fault["window_stats"]["rms_g"] > 0.01
    # windows end where the schedule says: the fault was called within a second of 3 s
    start = stream_start(got[0])
    assert 3.0 < _t(fault["window_end_utc"]) - start < 4.0
    assert "flat_line" in got[2]["message"] and got[2]["probabilities"] == {}

    # a SCADA client connecting afterwards sees the retained state and the offline status
    late = collect(mosquitto.port, BASE + "#")
    state = late.wait_for(BASE + "state", lambda p: True)
    assert state["state"] == "sensor_fault" and state["last_event_id"] == got[2]["event_id"]
    assert late.wait_for(BASE + "status", lambda p: True)["status"] == "offline"

    reading.set()
    reader.join(timeout=2)
    systemd.close()
    assert "READY=1" in "\n".join(datagrams)
    assert any(d.startswith("STOPPING=1") for d in datagrams)
    assert any("STATUS=state=" in d for d in datagrams)
    assert "WATCHDOG=1" in datagrams  # every 50 ms (half of WATCHDOG_USEC)


def stream_start(first_event: dict) -> float:
    """Stream start (s): the first decision comes k=3 windows after the stream began."""
    return _t(first_event["window_end_utc"]) - (WINDOW - 1 + 2 * HOP) / SAMPLE_RATE_HZ


def _t(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_replayed_file_with_nan_gives_sensor_fault_and_stops_at_the_end(
    tmp_path, agent_bundle, mosquitto, collect
):
    sim = BearingSimulator(Conditions(severity=SEVERITY), SAMPLE_RATE_HZ, seed=SEED)
    signal = sim.read(3 * SAMPLE_RATE_HZ)
    signal[SAMPLE_RATE_HZ : 2 * SAMPLE_RATE_HZ] = np.nan  # one second of NaN from the ADC path
    recording = tmp_path / "rec.npy"
    np.save(recording, signal)
    source = {"type": "file", "path": str(recording), "sample_rate_hz": SAMPLE_RATE_HZ}
    source |= {"realtime": False}
    collector = collect(mosquitto.port, BASE + "#")
    with make_agent(tmp_path, agent_bundle, mosquitto.port, source=source) as agent:
        summary = agent.run(max_seconds=30)  # the end of the file stops it long before
    assert summary["windows_total"] == 1 + (len(signal) - WINDOW) // HOP
    collector.wait_for(BASE + "event", lambda p: p["previous_state"] == "sensor_fault")
    kinds = [(e["previous_state"], e["state"]) for e in events(collector)]
    assert kinds[:2] == [("unknown", "normal"), ("normal", "sensor_fault")]
    assert "(nan)" in events(collector)[1]["message"]
    assert kinds[2] == ("sensor_fault", "normal")  # back once the NaNs have passed


class FlakySource:
    """Wraps a real source: read() fails once after `fail_after` chunks, start() once after."""

    def __init__(self, inner, fail_after: int) -> None:
        self.inner, self.fail_after = inner, fail_after
        self.name, self.sample_rate_hz = inner.name, inner.sample_rate_hz
        self.reads = self.starts = 0

    def start(self) -> None:
        self.starts += 1
        if self.starts == 2:
            raise SourceError("USB interface not found (still unplugged)")
        self.inner.start()

    def read(self, timeout_s: float):
        self.reads += 1
        if self.reads == self.fail_after:
            raise SourceError("sounddevice: the input stream stopped (interface unplugged)")
        return self.inner.read(timeout_s)

    def stop(self) -> None:
        self.inner.stop()


def test_a_failing_source_is_reported_and_restarted(
    tmp_path, agent_bundle, mosquitto, collect, monkeypatch
):
    real_make_source = service.make_source
    made: list[FlakySource] = []

    def flaky(*args, **kwargs):
        made.append(FlakySource(real_make_source(*args, **kwargs), fail_after=40))
        return made[-1]

    monkeypatch.setattr(service, "make_source", flaky)
    monkeypatch.setattr(service, "SOURCE_RETRY_S", (0.05, 0.2))
    collector = collect(mosquitto.port, BASE + "event")
    schedule = [{"at_s": 0.0, "fault": "normal"}]
    agent = make_agent(tmp_path, agent_bundle, mosquitto.port, source=simulator_source(schedule))
    with agent, running(agent):
        collector.wait_for(BASE + "event", lambda p: p["previous_state"] == "sensor_fault", 15)
    got = [(e["kind"], e["previous_state"], e["state"]) for e in events(collector)]
    assert got[:3] == [
        ("state_change", "unknown", "normal"),
        ("sensor_fault", "normal", "sensor_fault"),
        ("state_change", "sensor_fault", "normal"),  # re-announced after the restart
    ]
    assert "interface unplugged" in events(collector)[1]["message"]
    assert made[0].starts == 3  # first start, a failed retry, the successful one


def test_commissioning_then_drift_and_health_on_every_window(tmp_path, agent_bundle):
    """The device learns its own normal (12 s here), stores it, then a fault is both a drift
    (on every window, whatever the head says) and a health alarm; the fleet distance is fed
    only windows decided normal, every second one (no overlap)."""
    schedule = [
        {"at_s": 0.0, "fault": "normal", "severity": SEVERITY},
        {"at_s": 14.0, "fault": "inner_race", "severity": SEVERITY},
    ]
    decisions = {"k": 3, "n": 5, "drift_window": 40}
    commissioning = {"period_s": 10.0, "min_windows": 20}
    agent = make_agent(tmp_path, agent_bundle, 1, decisions=decisions, commissioning=commissioning,
                       source=simulator_source(schedule))  # fmt: skip
    with agent:
        agent.link = MemoryLink()
        agent.source.start()
        monitor = agent.channels[0].monitor
        assert monitor.commissioning.learning and monitor.commissioning.baseline is None
        while agent.windows_total < int(13.0 * SAMPLE_RATE_HZ / HOP):
            agent.channels[0].buffer.push(agent.source.read(1.0))
            agent._drain(None)
        normal_windows = (13.0 * SAMPLE_RATE_HZ - WINDOW) / HOP - 3  # after the k=3 to decide
        assert 0.4 * normal_windows <= monitor.fleet._seen <= 0.5 * normal_windows + 4
        assert monitor.commissioning.baseline is not None  # 10 s, >= 20 windows
        assert (tmp_path / "dev" / "state" / "baseline.npz").is_file()
        assert (tmp_path / "dev" / "state" / "health.json").is_file()
        assert monitor.status()["iso_zone"] in ("A", "B")
        quiet = [e for e in agent.link.events if e.kind in ("drift", "health")]
        assert quiet == [], [e.message for e in quiet]
        while agent.windows_total < int(20.0 * SAMPLE_RATE_HZ / HOP):
            agent.channels[0].buffer.push(agent.source.read(1.0))
            agent._drain(None)
    found = {(e.kind, e.severity) for e in agent.link.events if e.kind in ("drift", "health")}
    assert ("drift", "warning") in found and ("health", "alarm") in found
    drift = next(e for e in agent.link.events if e.kind == "drift")
    assert "since this device was commissioned" in drift.message and drift.drift_score > 2
    # a restart keeps the baseline; the commission command learns again
    again = make_agent(tmp_path, agent_bundle, 1, decisions=decisions, commissioning=commissioning,
                       source=simulator_source(schedule))  # fmt: skip
    with again:
        assert again.channels[0].monitor.commissioning.baseline is not None
        assert not again.channels[0].monitor.commissioning.learning
        assert "learning this device's normal" in again.channels[0].monitor.commission()
        assert again.channels[0].monitor.commissioning.learning


# ---- commands over the broker -----------------------------------------------------------------


def test_commands_ping_malformed_calibrate_rollback_and_stop(
    tmp_path, agent_bundle, mosquitto, collect
):
    collector = collect(mosquitto.port, BASE + "#")
    agent = make_agent(tmp_path, agent_bundle, mosquitto.port, telemetry_interval_s=0.3)
    with agent:
        with running(agent):
            collector.wait_for(BASE + "status", lambda p: p["status"] == "online")
            pong = send(collector, "ping", {"id": "p1"})
            assert pong["ok"] and pong["message"] == "pong" and pong["data"]["uptime_s"] > 0

            before = send(collector, "status", {"id": "s1"})["data"]["windows_total"]
            collector.publish(BASE + "cmd/ping", b"{not json")
            error = collector.wait_for(BASE + "error", lambda p: True)
            assert "not JSON" in error["reason"]
            assert collector.wait_for(BASE + "telemetry", lambda p: p["windows_total"] > 0)
            after = send(collector, "status", {"id": "s2"})["data"]
            assert after["windows_total"] > before, "windows kept flowing after the bad command"

            # the schedule: normal 0-3 s, inner race 3-6 s, then flat: nothing more is logged
            collector.wait_for(BASE + "event", lambda p: p["state"] == "sensor_fault", 20)
            first = _t(after["embedding_log"]["first_utc"])
            start = first - (WINDOW - 1) / SAMPLE_RATE_HZ
            normal = calibrate_range(collector, "c1", "normal", start + 0.5, start + 2.9)
            assert not normal["ok"] and "only class 0 is labeled" in normal["message"]
            assert normal["data"]["set_counts"] == {"normal": normal["data"]["added"]}  # kept
            fault = calibrate_range(collector, "c2", "inner_race", start + 3.5, start + 5.9)
            figures = fault["data"]
            assert figures["set_counts"]["inner_race"] > 20
            assert figures["n_holdout"] > 10 and 0 <= figures["accuracy_before"] <= 1
            assert fault["ok"] == figures["accepted"], fault
            assert figures["accepted"], f"refit of a separable set was refused: {fault}"
            assert figures["accuracy_after"] >= figures["accuracy_before"]
            assert figures["head_version"] == 2  # v1 factory, v2 calibrated on both classes
            # the log kept each window's spectral view: a device template was fitted and judged
            assert re.search(r"device template (kept|dropped)", fault["message"]), fault
            kept = "device template kept" in fault["message"]
            status = send(collector, "status", {"id": "s2b"})["data"]
            assert status["template"] == ("device" if kept else None)  # the tiny bundle has none
            labeled = figures["set_counts"]["normal"] + figures["set_counts"]["inner_race"]
            assert status["labels_reach"]["windows"] == labeled > 0
            assert status["labels_reach"]["radius"] > 0
            assert (tmp_path / "dev" / "state" / "calibration_set.npz").is_file()

            bad = calibrate_range(collector, "c3", "cage", start, start + 1)
            assert not bad["ok"] and "valid: normal, inner_race, outer_race" in bad["message"]

            back = send(collector, "rollback_head", {"id": "r1", "version": "1"})
            assert back["ok"] and back["data"] == {"previous_version": 2, "head_version": 3}
            status = send(collector, "status", {"id": "s3"})["data"]
            assert status["head_version"] == 3 and status["template"] is None  # back to v1
            assert status["labels_reach"] is None  # the factory head: the evidence decides
            nothing = send(collector, "reload_bundle", {"id": "b1", "path": str(tmp_path)})
            assert not nothing["ok"] and "kept the running bundle" in nothing["message"]
            archive = pack(agent_bundle, tmp_path / "tiny-1.tar.gz")
            reload = send(collector, "reload_bundle", {"id": "b2", "path": str(archive)})
            assert reload["ok"], reload
            assert reload["data"] == {"model_name": "tiny", "model_version": "1", "head_version": 3}

            sim = BearingSimulator(Conditions(fault="outer_race", severity=SEVERITY), seed=SEED)
            rec = tmp_path / "outer.npy"
            np.save(rec, sim.read(2 * SAMPLE_RATE_HZ))
            no_rate = send(
                collector, "calibrate", {"id": "f0", "label": "outer_race", "files": [str(rec)]}
            )
            assert not no_rate["ok"] and "do not carry their sample rate" in no_rate["message"]
            by_file = send(
                collector,
                "calibrate",
                {"id": "f1", "label": "outer_race", "files": [str(rec)], "rate_hz": SAMPLE_RATE_HZ},
            )
            assert by_file["ok"], by_file
            assert (
                by_file["data"]["set_counts"]["outer_race"]
                == 1 + (2 * SAMPLE_RATE_HZ - WINDOW) // HOP
            )
            assert by_file["data"]["head_version"] == 4
            again = send(collector, "commission", {"id": "m1"})
            assert again["ok"] and "learning this device's normal" in again["message"]
            status = send(collector, "status", {"id": "s4"})["data"]
            assert status["condition"]["learning"] is True
            missing = send(
                collector, "calibrate", {"id": "f2", "label": "normal", "files": ["/no/such.wav"]}
            )
            assert not missing["ok"] and "replay file not found" in missing["message"]
            past = {"id": "f3", "label": "outer_race", "files": [str(rec)], "end_s": 5.0}
            past = send(collector, "calibrate", past | {"rate_hz": SAMPLE_RATE_HZ})
            assert not past["ok"] and "past the recording's 2.000 s" in past["message"]
            assert send(collector, "ping", {"id": "p2"})["ok"]
        assert len(agent.outbox) == 0
    offline = collector.wait_for(BASE + "status", lambda p: p["status"] == "offline")
    assert offline["outbox_pending"] == 0


def calibrate_range(collector, request_id: str, label: str, t_from: float, t_to: float) -> dict:
    from datetime import datetime, timezone

    def iso(t: float) -> str:
        return datetime.fromtimestamp(t, timezone.utc).isoformat()

    payload = {"id": request_id, "label": label}
    payload |= {"labels_from_utc": iso(t_from), "labels_to_utc": iso(t_to)}
    return send(collector, "calibrate", payload)


# ---- embedding log and calibration set --------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    capacity=st.integers(1, 40),
    chunks=st.lists(st.tuples(st.integers(0, 30), st.booleans()), max_size=8),
    bounds=st.tuples(st.integers(-5, 200), st.integers(-5, 200)),
    view_bands=st.sampled_from([0, 2]),
)
def test_embedding_log_keeps_the_newest_rows_and_selects_by_time(
    capacity, chunks, bounds, view_bands
):
    log = EmbeddingLog(capacity, dim=3, view_bands=view_bands)
    written = 0
    for n, with_views in chunks:
        t = np.arange(written, written + n, dtype=np.float64)
        emb = np.repeat(t[:, None], 3, axis=1).astype(np.float32)
        views = np.repeat(t[:, None] / 256, view_bands, axis=1) if with_views else None
        log.append(emb, t, (t % 4).astype(np.int16) - 1, views)
        written += n
    kept = np.arange(max(0, written - capacity), written, dtype=np.float64)
    assert len(log) == len(kept)
    lo, hi = min(bounds), max(bounds)
    emb, t, labels, views = log.select(lo, hi)
    expected = kept[(kept >= lo) & (kept <= hi)]
    np.testing.assert_array_equal(t, expected)
    np.testing.assert_array_equal(emb[:, 0], expected)
    np.testing.assert_array_equal(labels, (expected % 4) - 1)
    assert views.shape == (len(expected), view_bands)
    starts = np.cumsum([0] + [n for n, _ in chunks])
    viewed = {
        float(r) for (n, w), s in zip(chunks, starts, strict=False) if w for r in range(s, s + n)
    }
    for row, when in zip(views, expected, strict=True):
        if when in viewed:  # the window's own view, to float16 precision
            np.testing.assert_allclose(row, when / 256, rtol=1e-3)
        else:  # appended without a view: NaN, never another window's
            assert np.isnan(row).all()


def test_calibration_set_persists_replaces_relabels_and_ignores_another_model(tmp_path):
    path = tmp_path / "calibration_set.npz"
    first = CalibrationSet(path, "1", CLASS_NAMES, EMBEDDING_DIM)
    emb = np.ones((4, EMBEDDING_DIM), np.float32)
    first.add(emb, np.array([1.0, 2.0, 3.0, 4.0]), np.zeros(4, int))
    first.add(emb[:2], np.array([3.0, 4.0]), np.ones(2, int))  # relabel two windows
    again = CalibrationSet(path, "1", CLASS_NAMES, EMBEDDING_DIM)
    assert again.counts() == {"normal": 2, "inner_race": 2}
    assert sorted(again.t.tolist()) == [1.0, 2.0, 3.0, 4.0]
    other = CalibrationSet(path, "2", CLASS_NAMES, EMBEDDING_DIM)
    assert len(other) == 0, "embeddings of another model version must not be reused"
    path.write_bytes(b"garbage")
    assert len(CalibrationSet(path, "1", CLASS_NAMES, EMBEDDING_DIM)) == 0

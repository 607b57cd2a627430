"""`faultwatch agent ...` through Typer's CliRunner and as a real process; the systemd unit."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_agent.cli import app
from edge_agent.contract.bundle import pack
from edge_agent.physics.bearing_sim import BearingSimulator, Conditions
from tests.edge_agent.bundle_fixture import (
    FAULT_SCHEDULE,
    HOP,
    SAMPLE_RATE_HZ,
    SEED,
    SEVERITY,
    WINDOW,
    agent_bundle_folder,
    simulator_source,
    write_config,
)

ROOT = Path(__file__).resolve().parents[2]
BASE = "faultwatch/s1/a1/dev-test/"
NO_DRIFT = {"k": 3, "n": 5, "drift_window": 20, "drift_threshold": 1e9}


@pytest.fixture(scope="session")
def agent_bundle(request, tmp_path_factory) -> Path:
    return agent_bundle_folder(request, tmp_path_factory)


COMMANDS = [
    "run", "check-config", "verify-bundle", "calibrate", "renormalize", "heads", "rollback",
    "commission",
]  # fmt: skip
runner = CliRunner()


def recording(path: Path, fault: str, seconds: float, run_seed: int = SEED) -> Path:
    """A float32 NPY recording in g of the fixture machine."""
    sim = BearingSimulator(
        Conditions(fault=fault, severity=SEVERITY),  # type: ignore[arg-type]
        SAMPLE_RATE_HZ,
        seed=run_seed,
        machine_seed=SEED,
    )
    np.save(path, sim.read(int(seconds * SAMPLE_RATE_HZ)))
    return path


def replay_config(tmp_path: Path, bundle: Path, seconds: float = 2.0, **overrides) -> Path:
    rec = recording(tmp_path / "rec.npy", "normal", seconds)
    source = {"type": "file", "path": str(rec), "sample_rate_hz": SAMPLE_RATE_HZ}
    source["realtime"] = False
    overrides.setdefault("decisions", NO_DRIFT)
    return write_config(tmp_path / "dev", bundle, port=1, source=source, **overrides)


def tampered_copy(bundle: Path, dest: Path) -> Path:
    copy = dest / "tampered"
    shutil.copytree(bundle, copy)
    head = copy / "head.npz"
    data = bytearray(head.read_bytes())
    data[-10] ^= 0xFF
    head.write_bytes(bytes(data))
    return copy


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


# ---- run --------------------------------------------------------------------------------------


def test_run_replays_a_file_to_the_end_with_json_logs(tmp_path, agent_bundle):
    config = replay_config(tmp_path, agent_bundle, seconds=2.0)
    result = runner.invoke(app, ["run", "--config", str(config), "--log-format", "json"])
    assert result.exit_code == 0, result.output
    windows = 1 + (2 * SAMPLE_RATE_HZ - WINDOW) // HOP
    assert f"stopped after {windows} windows" in result.stdout
    logs = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    events = [entry for entry in logs if entry.get("event") == "event"]
    assert [(e["previous"], e["state"]) for e in events] == [("unknown", "normal")]
    assert any(entry.get("event") == "agent_stopped" for entry in logs)


def test_run_refuses_a_tampered_bundle(tmp_path, agent_bundle):
    bad = tampered_copy(agent_bundle, tmp_path)
    config = replay_config(tmp_path, agent_bundle, inference={"bundle": str(bad)})
    result = runner.invoke(app, ["run", "--config", str(config)])
    assert result.exit_code == 1
    assert "checksum mismatch for head.npz" in result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_run_with_a_broken_config_names_the_field(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text('state_dir = "s"\n[device]\nid = "x"\ntype = "toaster"\n')
    result = runner.invoke(app, ["run", "--config", str(config)])
    assert result.exit_code == 1
    assert "device.type: Input should be" in result.stderr


# ---- check-config and verify-bundle -----------------------------------------------------------


def test_check_config_summary_with_the_bundle(tmp_path, agent_bundle):
    config = replay_config(tmp_path, agent_bundle)
    result = runner.invoke(app, ["check-config", str(config), "--bundle"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: ")
    assert "dev-test (dev)" in result.output
    assert "tiny 1: 3 classes, 12000 Hz, window 1024, hop 512" in result.output


def test_check_config_lists_every_error_and_bundle_mismatches(tmp_path, agent_bundle):
    config = write_config(tmp_path / "a", agent_bundle, 0, decisions={"k": 6, "n": 5})
    result = runner.invoke(app, ["check-config", str(config)])
    assert result.exit_code == 1
    assert "mqtt.port: Input should be greater than or equal to 1" in result.output
    assert "decisions: k (6) must not exceed n (5)" in result.output

    source = simulator_source([], sample_rate_hz=48_000)
    mismatch = write_config(tmp_path / "b", agent_bundle, 1883, source=source)
    assert runner.invoke(app, ["check-config", str(mismatch)]).exit_code == 0  # alone it is fine
    result = runner.invoke(app, ["check-config", str(mismatch), "--bundle"])
    assert result.exit_code == 1
    assert "source.sample_rate_hz: 48000 Hz does not match the bundle's 12000 Hz" in result.output


def test_verify_bundle_folder_archive_and_tampered(tmp_path, agent_bundle):
    result = runner.invoke(app, ["verify-bundle", str(agent_bundle)])
    assert result.exit_code == 0, result.output
    assert "tiny 1" in result.output
    assert "normal*, inner_race, outer_race" in result.output
    assert "12000 Hz, window 1024, hop 512, zscore" in result.output
    assert "fp32.onnx" in result.output and "int8.onnx" in result.output
    assert "parity      passed" in result.output
    archive = pack(agent_bundle, tmp_path / "tiny-1.tar.gz")
    assert runner.invoke(app, ["verify-bundle", str(archive)]).exit_code == 0

    bad = runner.invoke(app, ["verify-bundle", str(tampered_copy(agent_bundle, tmp_path))])
    assert bad.exit_code == 1
    assert "checksum mismatch for head.npz" in bad.stderr


# ---- calibrate, heads, rollback ---------------------------------------------------------------


def test_offline_calibration_then_heads_and_rollback(tmp_path, agent_bundle):
    config = str(replay_config(tmp_path, agent_bundle))
    normal = recording(tmp_path / "normal.npy", "normal", 2.0, run_seed=SEED + 1)
    inner = recording(tmp_path / "inner.npy", "inner_race", 2.0, run_seed=SEED + 2)

    rate = ["--rate-hz", str(SAMPLE_RATE_HZ)]
    wrong = runner.invoke(app, ["calibrate", "-c", config, "--label", "cage", *rate, str(normal)])
    assert wrong.exit_code == 1
    assert "unknown label 'cage'; valid: normal, inner_race, outer_race" in wrong.stderr
    no_rate = runner.invoke(app, ["calibrate", "-c", config, "--label", "normal", str(normal)])
    assert no_rate.exit_code == 1 and "normal.npy: .npy files do not carry" in no_rate.stderr

    # one class at a time: the first call keeps its labels, the second refits on both
    first = runner.invoke(app, ["calibrate", "-c", config, "--label", "normal", *rate, str(normal)])
    assert first.exit_code == 1, first.output
    assert "labeled 'normal'" in first.output and "calibration set: normal 45" in first.output
    assert "only class 0 is labeled" in first.stderr and "labels are kept" in first.stderr
    args = ["calibrate", "-c", config, "--label", "inner_race", *rate, str(inner)]
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "cross-validated accuracy" in second.output
    assert "calibration set: normal 45, inner_race 45" in second.output
    assert "accepted: head v2 is now current" in second.output
    assert re.search(r"device template (kept|dropped): cross-validated", second.output)

    listing = runner.invoke(app, ["heads", "--config", config])
    assert listing.exit_code == 0, listing.output
    rows = [line for line in listing.output.splitlines() if re.search(r" v\d ", line)]
    assert len(rows) == 2
    assert "factory" in rows[0] and "calibration" in rows[1] and "*" in rows[1]

    back = runner.invoke(app, ["rollback", "--config", config, "--version", "1"])
    assert back.exit_code == 0, back.output
    assert "head v2 -> v3 (rolled back from v2 to v1)" in back.output
    missing = runner.invoke(app, ["rollback", "--config", config, "--version", "99"])
    assert missing.exit_code == 1
    assert "no head version 99" in missing.stderr


def test_calibrate_labels_only_the_stretch_of_a_longer_recording(tmp_path, agent_bundle):
    """A 4 s recording, normal then inner race: --start-s 2 labels the fault's half only."""
    config = str(replay_config(tmp_path, agent_bundle))
    rate = ["--rate-hz", str(SAMPLE_RATE_HZ)]
    normal = recording(tmp_path / "normal.npy", "normal", 2.0, run_seed=SEED + 1)
    halves = [
        np.load(recording(tmp_path / "a.npy", "normal", 2.0, run_seed=SEED + 3)),
        np.load(recording(tmp_path / "b.npy", "inner_race", 2.0, run_seed=SEED + 2)),
    ]
    both = tmp_path / "normal-then-inner.npy"
    np.save(both, np.concatenate(halves))
    first = runner.invoke(app, ["calibrate", "-c", config, "--label", "normal", *rate, str(normal)])
    assert "calibration set: normal 45" in first.output
    args = ["calibrate", "-c", config, "--label", "inner_race", *rate]
    late = runner.invoke(app, [*args, "--start-s", "2", str(both)])
    assert late.exit_code == 0, late.output  # normal windows labeled inner race: refused
    assert "45 windows from 1 file(s) labeled 'inner_race'" in late.output  # as a 2 s file
    assert "calibration set: normal 45, inner_race 45" in late.output
    past = runner.invoke(app, [*args, "--end-s", "9", str(both)])
    assert past.exit_code == 1 and "past the recording's 4.000 s" in past.stderr
    short = runner.invoke(app, [*args, "--start-s", "3.9", str(both)])
    assert short.exit_code == 1 and "holds no whole window" in short.stderr


def test_renormalize_maps_an_offset_device_onto_the_reference(tmp_path, agent_bundle):
    config = str(replay_config(tmp_path, agent_bundle))
    normal = recording(tmp_path / "normal.npy", "normal", 2.0, run_seed=SEED + 3)
    rate = ["--rate-hz", str(SAMPLE_RATE_HZ)]
    result = runner.invoke(app, ["renormalize", "-c", config, *rate, str(normal)])
    assert result.exit_code == 0, result.output
    match = re.search(
        r"head v(\d+): .* from (\d+) normal windows; .* ([\d.]+) -> ([\d.]+)", result.output
    )
    assert match, result.output
    before, after = float(match.group(3)), float(match.group(4))
    assert after < before and after < 0.5  # the device's normal now sits on the reference mean
    from edge_agent.calibration.headstore import HeadStore
    from edge_agent.config import load_config

    store = HeadStore(load_config(Path(config)).state_dir / "heads")
    latest = store.history()[-1]
    assert latest.version == int(match.group(1)) and "re-normalization" in latest.note
    assert store.current()[1].emb_scale is not None
    short = recording(tmp_path / "short.npy", "normal", 0.2, run_seed=SEED + 4)
    refused = runner.invoke(app, ["renormalize", "-c", config, *rate, str(short)])
    assert refused.exit_code == 1 and "needs at least 20 windows" in refused.stderr


def test_heads_with_a_missing_config(tmp_path):
    result = runner.invoke(app, ["heads", "--config", str(tmp_path / "nope.toml")])
    assert result.exit_code == 1
    assert "no such config file" in result.stderr


# ---- a real process: kill -9, restart, replay -------------------------------------------------


def stored_event_ids(db: Path) -> list[str]:
    if not db.exists():
        return []
    conn = sqlite3.connect(db, timeout=5)
    try:
        return [row[0] for row in conn.execute("SELECT event_id FROM outbox ORDER BY seq")]
    except sqlite3.OperationalError:  # the agent has not created the table yet
        return []
    finally:
        conn.close()


AGENT_RUN = [sys.executable, "-m", "faultwatch", "agent", "run"]


def start_agent(config: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [*AGENT_RUN, "--config", str(config), "--max-seconds", "60"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_kill_9_keeps_events_in_the_outbox_and_a_restart_delivers_them(
    tmp_path, agent_bundle, mosquitto, collect, wait_until
):
    port = mosquitto.port
    mosquitto.stop()  # the broker is down: events pile up in the outbox
    config = write_config(
        tmp_path / "dev", agent_bundle, port, simulator_source(FAULT_SCHEDULE), decisions=NO_DRIFT
    )
    db = tmp_path / "dev" / "state" / "outbox.sqlite3"
    log = tmp_path / "agent.log"
    first = start_agent(config, log)
    try:
        assert wait_until(lambda: len(stored_event_ids(db)) >= 3, 40), log.read_text()[-3000:]
    finally:
        first.kill()  # kill -9: no flush, no offline status
        first.wait(10)
    stored = stored_event_ids(db)

    mosquitto.start()
    collector = collect(port, BASE + "#")
    second = start_agent(config, log)
    try:
        delivered = lambda: {e["event_id"] for e in collector.on(BASE + "event")}  # noqa: E731
        assert wait_until(lambda: set(stored) <= delivered(), 40), log.read_text()[-3000:]
        assert wait_until(lambda: not set(stored) & set(stored_event_ids(db)), 10)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0, log.read_text()[-3000:]
    replayed = [e for e in collector.on(BASE + "event") if e["event_id"] in stored]
    assert [e["state"] for e in replayed][:3] == ["normal", "inner_race", "sensor_fault"]
    assert stored_event_ids(db) == []
    offline = collector.wait_for(BASE + "status", lambda p: p["status"] == "offline")
    assert offline["outbox_pending"] == 0
    assert "SIGTERM received: stopping" in log.read_text()


# ---- deploy/ ----------------------------------------------------------------------------------


UNIT = ROOT / "deploy" / "faultwatch-agent.service"


def read_unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(path)
    return parser


def test_systemd_unit_has_the_service_contract():
    service = read_unit(UNIT)["Service"]
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "ExecStart": "/opt/faultwatch/.venv/bin/faultwatch agent run --config "
        "/etc/faultwatch/agent.toml",
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "RestartSec": "5",
        "User": "faultwatch",
        "Group": "faultwatch",
        "SupplementaryGroups": "audio",
        "StateDirectory": "faultwatch",
        "ConfigurationDirectory": "faultwatch",
        "ProtectSystem": "strict",
        "ProtectHome": "true",
        "PrivateTmp": "true",
        "NoNewPrivileges": "true",
        "ProtectKernelTunables": "true",
        "ProtectKernelModules": "true",
        "ProtectControlGroups": "true",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "MemoryMax": "300M",
        "CPUQuota": "50%",
        "DevicePolicy": "closed",
        "DeviceAllow": "char-alsa rw",
        "KillSignal": "SIGTERM",
        "TimeoutStopSec": "20",
    }
    assert {key: service.get(key) for key in expected} == expected
    assert read_unit(UNIT)["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / UNIT.name  # the venv does not exist here: point ExecStart at a real binary
    unit.write_text(UNIT.read_text().replace("/opt/faultwatch/.venv/bin/faultwatch", "/bin/true"))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_install_script_parses():
    script = ROOT / "deploy" / "install-agent.sh"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = script.read_text()
    assert "set -euo pipefail" in text
    assert "EUID" in text and 'install --quiet "${REPO}[edge]"' in text


def test_run_on_a_recording_shorter_than_a_window_is_an_error(tmp_path, agent_bundle):
    config = replay_config(tmp_path, agent_bundle, seconds=0.05)  # 600 samples < 1024
    result = runner.invoke(app, ["run", "--config", str(config)])
    assert result.exit_code == 1
    assert "shorter than one window (1024)" in result.stderr and "rec.npy" in result.stderr


def test_recordings_carry_their_rate_and_are_resampled(tmp_path, agent_bundle):
    """A 48 kHz WAV of 1 s gives the windows of 1 s at the bundle's 12 kHz, not four times as
    many; --max-windows takes a few windows spread over the file."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    config = str(replay_config(tmp_path, agent_bundle))
    sim = BearingSimulator(Conditions(fault="normal", severity=SEVERITY), SAMPLE_RATE_HZ, seed=3,
                           machine_seed=SEED)  # fmt: skip
    at_48k = resample_poly(sim.read(SAMPLE_RATE_HZ), 4, 1)  # 1 s
    wavfile.write(tmp_path / "fast.wav", 48_000, (at_48k / 20.0 * 32767).astype(np.int16))
    expected = 1 + (SAMPLE_RATE_HZ - WINDOW) // HOP
    args = ["calibrate", "-c", config, "--label", "normal", str(tmp_path / "fast.wav")]
    result = runner.invoke(app, args)
    assert f"{expected} windows from 1 file(s) labeled 'normal'" in result.output, result.output
    few = runner.invoke(app, [*args, "--max-windows", "3"])
    assert "3 windows from 1 file(s)" in few.output, few.output
    clash = runner.invoke(app, [*args, "--rate-hz", "12000"])
    assert clash.exit_code == 1 and "48000 Hz" in clash.stderr


def test_commission_forgets_the_baseline_so_the_next_start_learns_again(tmp_path, agent_bundle):
    config = replay_config(tmp_path, agent_bundle)
    state = tmp_path / "dev" / "state"
    state.mkdir(parents=True, exist_ok=True)
    (state / "baseline.npz").write_bytes(b"old")
    (state / "health.json").write_text("{}")
    result = runner.invoke(app, ["commission", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "removed baseline.npz, health.json" in result.output and "600 s" in result.output
    assert not (state / "baseline.npz").exists() and not (state / "health.json").exists()


def test_offline_commands_of_a_multi_channel_config_take_a_channel(tmp_path, agent_bundle):
    channels = [{"name": "de", "input": 0, "asset": "pump-de"},
                {"name": "nde", "input": 1, "asset": "pump-nde"}]  # fmt: skip
    config = str(write_config(tmp_path, agent_bundle, 1, source=simulator_source(FAULT_SCHEDULE),
                              channels=channels))  # fmt: skip
    summary = runner.invoke(app, ["check-config", config])
    assert summary.exit_code == 0, summary.output
    assert "channel    nde: input 1, 3 of 5, bearing none, topics faultwatch/s1/pump-nde/" in (
        summary.output
    )
    normal = recording(tmp_path / "normal.npy", "normal", 2.0, run_seed=SEED + 1)
    args = ["calibrate", "-c", config, "--label", "normal", "--rate-hz", str(SAMPLE_RATE_HZ)]
    which = runner.invoke(app, [*args, str(normal)])
    assert which.exit_code == 1
    assert "--channel is needed: this config has channels de, nde" in which.stderr
    typo = runner.invoke(app, [*args, "--channel", "nd", str(normal)])
    assert "unknown channel 'nd': this config has channels de, nde" in typo.stderr
    done = runner.invoke(app, [*args, "--channel", "nde", str(normal)])
    assert "calibration set: normal 45" in done.output, done.output
    state = tmp_path / "state" / "channels"
    assert (state / "nde" / "calibration_set.npz").is_file()
    assert not (state / "de").exists()
    heads = runner.invoke(app, ["heads", "-c", config, "--channel", "nde"])
    assert heads.exit_code == 0 and "factory" in heads.output

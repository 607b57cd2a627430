"""A USB interface whose data stops (issue 12): `faultwatch agent run` on a real PortAudio stream
raises a `no_data` sensor fault within seconds, stops feeding the systemd watchdog while no
samples arrive, and still stops promptly on SIGTERM although the audio driver stays blocked.

The interface is an ALSA `type file` PCM whose `infile` is a FIFO: while the test writes, ALSA
reads samples; when it pauses, ALSA's read blocks inside PortAudio, as a stalled device does.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from tests.edge_agent.agent.test_agent import BASE
from tests.edge_agent.bundle_fixture import SAMPLE_RATE_HZ, write_config
from tests.edge_agent.sources.test_audio import ALSA_CONF, _need_portaudio

ROOT = Path(__file__).resolve().parents[3]
STALL_CONF = """
<{alsa_conf}>
pcm.faultwatch_stall {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{fifo}"
    format "raw"
}}
"""


class Writer(threading.Thread):
    """Feeds the FIFO 0.1 s of int16 vibration every 0.1 s until `pause` is set."""

    def __init__(self, fifo: Path) -> None:
        super().__init__(daemon=True)
        self.fd = os.open(fifo, os.O_RDWR)  # a reader-writer end: never blocks, keeps it open
        t = np.arange(SAMPLE_RATE_HZ // 10) / SAMPLE_RATE_HZ
        noise = np.random.default_rng(0).normal(0, 300, len(t))
        self.block = (1600 * np.sin(2 * np.pi * 157 * t) + noise).astype("<i2").tobytes()
        self.pause = threading.Event()
        self.paused_at: float | None = None

    def run(self) -> None:
        while not self.pause.is_set():
            os.write(self.fd, self.block)
            time.sleep(0.1)
        self.paused_at = time.time()


class Watchdog(threading.Thread):
    """A stand-in for systemd's notify socket: records when WATCHDOG=1 arrives."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.pings: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            if b"WATCHDOG=1" in data:
                self.pings.append(time.time())


def test_a_stalled_interface_raises_no_data_and_the_agent_still_stops(
    tmp_path, agent_bundle, mosquitto, collect
):
    _need_portaudio()
    fifo = tmp_path / "interface.fifo"
    os.mkfifo(fifo)
    conf = tmp_path / "asound.conf"
    conf.write_text(STALL_CONF.format(alsa_conf=ALSA_CONF, fifo=fifo))
    source = {
        "type": "sounddevice",
        "device": "faultwatch_stall",
        "sample_rate_hz": SAMPLE_RATE_HZ,
        "dtype": "int16",
        "blocksize": 512,
    }
    sensor = {"sensitivity_mv_per_g": 100.0, "full_scale_volts": 5.0, "no_data_after_s": 2.0}
    config = write_config(tmp_path / "dev", agent_bundle, mosquitto.port, source, sensor=sensor)
    writer, watchdog = Writer(fifo), Watchdog(tmp_path / "notify.sock")
    writer.start()
    watchdog.start()
    collector = collect(mosquitto.port, BASE + "#")
    env = {
        **os.environ,
        "ALSA_CONFIG_PATH": str(conf),
        "PYTHONPATH": str(ROOT),
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
        "WATCHDOG_USEC": "400000",  # a ping every 0.2 s
    }
    agent = subprocess.Popen(
        [sys.executable, "-m", "faultwatch", "agent", "run", "--config", str(config)],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        collector.wait_for(BASE + "event", lambda e: e["kind"] == "state_change", 30)
        time.sleep(1.5)  # a few watchdog pings while samples arrive
        writer.pause.set()
        fault = collector.wait_for(BASE + "event", lambda e: e["kind"] == "sensor_fault", 15)
        assert fault["message"].startswith("no_data: no samples for")
        raised = datetime.fromisoformat(fault["time_utc"].replace("Z", "+00:00")).timestamp()
        assert writer.paused_at is not None and raised - writer.paused_at < 6.0
        state = collector.wait_for(BASE + "state", lambda s: s["state"] == "sensor_fault", 5)
        assert state["last_event_id"] == fault["event_id"]
        time.sleep(3.5)
        stopping = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        output, _ = agent.communicate(timeout=15)
        assert agent.returncode == 0, output[-3000:]
        assert time.monotonic() - stopping < 8.0, "SIGTERM took too long with a blocked driver"
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.communicate()
        watchdog.stop.set()
        os.close(writer.fd)
    # fed while samples arrive; silent once none came for no_data_after_s; fed again while the
    # agent restarts the declared-faulty source
    pings = np.asarray(watchdog.pings)
    assert (pings < writer.paused_at).sum() >= 3
    assert not ((pings > writer.paused_at + 2.0 + 0.3) & (pings < raised)).any()
    assert ((pings > raised + 1.0) & (pings < raised + 3.5)).any()
    assert "stopped after" in output

"""sounddevice source: a real PortAudio stream (ALSA `file` PCM), one and two channels, plus the
callback's drop rules.

The real-stream test defines an ALSA capture device `faultwatch_replay` whose samples come from
a raw s16le file (ALSA `type file` plugin with `infile`, slave `null`). ALSA_CONFIG_PATH must be
set before PortAudio initializes, so that test runs in a subprocess.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edge_agent.config import SensorConfig, SoundDeviceSourceConfig
from edge_agent.sources import AudioSource, SourceError

ROOT = Path(__file__).resolve().parents[3]
ALSA_CONF = Path("/usr/share/alsa/alsa.conf")
SENSOR = SensorConfig(sensitivity_mv_per_g=100.0, full_scale_volts=2.0)  # full scale = 20 g
RATE = 48_000

ASOUNDRC = """
<{alsa_conf}>
pcm.faultwatch_replay {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{infile}"
    format "raw"
    hint {{ show on description "faultwatch test replay" }}
}}
"""

# Runs with ALSA_CONFIG_PATH set; prints one JSON line of measurements.
PROBE = r"""
import json, sys, time
import numpy as np
from edge_agent.config import SensorConfig, SoundDeviceSourceConfig
from edge_agent.sources import AudioSource, SourceChannel, SourceError

sensor = SensorConfig(sensitivity_mv_per_g=100.0, full_scale_volts=2.0)
other = SensorConfig(sensitivity_mv_per_g=10.0, full_scale_volts=5.0)  # full scale = 500 g
both = [SourceChannel(1, sensor=other), SourceChannel(0)]  # swapped, each with its sensor
result = {}

def cfg(**kw):
    base = dict(type="sounddevice", device="faultwatch_replay", sample_rate_hz=48000,
                channels=2, dtype="int16", blocksize=1024, queue_blocks=64)
    return SoundDeviceSourceConfig(**{**base, **kw})

def collect(source, n):
    chunks, got = [], 0
    while got < n:
        chunk = source.read(timeout_s=2.0)
        assert chunk is not None, "no audio within 2 s"
        chunks.append(chunk)
        got += len(chunk.samples)
    return chunks

try:
    AudioSource(cfg(device="no-such-interface"), sensor).start()
except SourceError as exc:
    result["missing_device_error"] = str(exc)

for name, kw, target, channels in [
        ("ch0", dict(channel=0), None, None),
        ("ch1_resampled", dict(channel=1, resample=True), 12000, None),
        ("both", {}, None, both),
        ("both_resampled", dict(resample=True), 12000, both)]:
    source = AudioSource(cfg(**kw), sensor, target_rate_hz=target, channels=channels)
    with source:
        chunks = collect(source, source.sample_rate_hz // 2)  # 0.5 s
        x = np.concatenate([c.samples for c in chunks])
        time.sleep(0.3)  # the null PCM is not paced: the queue overflows while we sleep
        later = [source.read(timeout_s=2.0) for _ in range(80)]
    result[name] = {
        "rate": source.sample_rate_hz,
        "dtype": str(x.dtype),
        "samples": x.tolist(),
        "first_dropped": [c.dropped for c in chunks],
        "later_dropped": sum(c.dropped for c in later if c is not None),
        "dropped_total": source.dropped_total,
    }
print(json.dumps(result))
"""


def _need_portaudio() -> None:
    if ctypes.util.find_library("portaudio") is None:
        pytest.skip("libportaudio2 is not installed (apt install libportaudio2)")
    if not ALSA_CONF.is_file():
        pytest.skip(f"{ALSA_CONF} not found: no ALSA configuration to build the test device on")


def dominant_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


@pytest.fixture(scope="module")
def sine_frames() -> np.ndarray:
    """The device's 4 s of int16 stereo: input 0 at 1000 Hz, input 1 at 300 Hz."""
    t = np.arange(4 * RATE) / RATE
    left = 0.5 * np.sin(2 * np.pi * 1000 * t)  # 0.5 of full scale = 10 g
    right = 0.25 * np.sin(2 * np.pi * 300 * t)  # 5 g
    return (np.stack([left, right], axis=1) * 32767).astype("<i2")


@pytest.fixture(scope="module")
def probe(tmp_path_factory, sine_frames) -> dict:
    _need_portaudio()
    folder = tmp_path_factory.mktemp("alsa")
    sine_frames.tofile(folder / "sine.raw")
    conf = folder / "asound.conf"
    conf.write_text(ASOUNDRC.format(alsa_conf=ALSA_CONF, infile=folder / "sine.raw"))
    env = {**os.environ, "ALSA_CONFIG_PATH": str(conf), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_real_stream_reads_the_sine_scaled_to_g(probe):
    ch0 = probe["ch0"]
    x = np.asarray(ch0["samples"])
    assert ch0["rate"] == RATE and ch0["dtype"] == "float32"
    assert len(x) >= RATE // 2
    assert dominant_hz(x, RATE) == pytest.approx(1000, abs=2)
    assert np.abs(x).max() == pytest.approx(10.0, rel=0.01)  # 0.5 FS * 2 V / 0.1 V/g
    assert ch0["first_dropped"] == [0] * len(ch0["first_dropped"])


def test_real_stream_other_channel_resampled_to_the_bundle_rate(probe):
    ch1 = probe["ch1_resampled"]
    x = np.asarray(ch1["samples"])
    assert ch1["rate"] == 12_000 and len(x) >= 6000
    assert dominant_hz(x, 12_000) == pytest.approx(300, abs=2)
    assert np.abs(x[200:]).max() == pytest.approx(5.0, rel=0.02)


def test_real_stream_slow_consumer_drops_are_counted(probe):
    for name in ("ch0", "ch1_resampled"):
        assert probe[name]["later_dropped"] > 0
        assert probe[name]["dropped_total"] > 0


def test_missing_device_lists_the_available_inputs(probe):
    message = probe["missing_device_error"]
    assert "'no-such-interface' not found" in message
    assert "faultwatch_replay" in message and "source.device" in message


# -- the callback, driven directly (no PortAudio needed) -------------------------------------


def status(overflow: bool = False) -> SimpleNamespace:
    return SimpleNamespace(input_overflow=overflow)


def block(value: int, frames: int = 256, channels: int = 2) -> np.ndarray:
    data = np.zeros((frames, channels), np.int16)
    data[:, 1] = value
    return data


def make_source(**kw) -> AudioSource:
    cfg = SoundDeviceSourceConfig(
        type="sounddevice", sample_rate_hz=RATE, channels=2, channel=1, queue_blocks=2, **kw
    )
    return AudioSource(cfg, SENSOR)


def test_full_queue_drops_whole_blocks_without_blocking_and_reports_the_gap():
    source = make_source()
    start = time.perf_counter()
    for value in (100, 200, 300, 400):  # queue holds 2: blocks 300 and 400 are lost
        source._callback(block(value), 256, None, status())
    assert time.perf_counter() - start < 0.05
    first, second = source.read(0.1), source.read(0.1)
    assert (first.dropped, second.dropped) == (0, 0)
    assert first.samples[0] == pytest.approx(100 / 32767 * 20)
    source._callback(block(500), 256, None, status())
    third = source.read(0.1)
    assert third.dropped == 512 and third.samples[0] == pytest.approx(500 / 32767 * 20)
    assert source.dropped_total == 512
    assert source.read(0.01) is None


def test_input_overflow_counts_as_dropped():
    source = make_source()
    source._callback(block(1), 256, None, status(overflow=True))
    chunk = source.read(0.1)
    assert chunk.dropped == 256 and source.overflows == 1


def test_rate_mismatch_without_resample_names_both_rates():
    cfg = SoundDeviceSourceConfig(type="sounddevice", sample_rate_hz=44100)
    with pytest.raises(SourceError, match=r"44100 Hz but the bundle needs 12000 Hz.*resample"):
        AudioSource(cfg, SENSOR, target_rate_hz=12000)


def test_missing_sounddevice_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)
    with pytest.raises(SourceError, match="apt install libportaudio2"):
        make_source().start()


def test_real_stream_two_channels_give_the_chosen_columns_scaled_per_sensor(probe, sine_frames):
    both = probe["both"]
    x = np.asarray(both["samples"])  # column 0: input 1 (300 Hz), column 1: input 0 (1000 Hz)
    assert both["rate"] == RATE and both["dtype"] == "float32"
    assert x.ndim == 2 and x.shape[1] == 2 and len(x) >= RATE // 2
    assert both["first_dropped"] == [0] * len(both["first_dropped"])
    n = len(x)
    np.testing.assert_allclose(x[:, 0], sine_frames[:n, 1] / 32767 * 500, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(x[:, 1], sine_frames[:n, 0] / 32767 * 20, rtol=1e-5, atol=1e-5)


def test_real_stream_two_channels_resampled_column_by_column(probe):
    both = probe["both_resampled"]
    x = np.asarray(both["samples"])
    assert both["rate"] == 12_000 and x.shape[1] == 2 and len(x) >= 6000
    assert dominant_hz(x[:, 0], 12_000) == pytest.approx(300, abs=2)
    assert dominant_hz(x[:, 1], 12_000) == pytest.approx(1000, abs=2)
    assert np.abs(x[200:, 0]).max() == pytest.approx(0.25 * 500, rel=0.02)
    assert np.abs(x[200:, 1]).max() == pytest.approx(10.0, rel=0.02)
    assert both["later_dropped"] > 0

"""Shaft speed from a tachometer channel: the counter, the audio source's second channel, and the
physics evidence using the measured speed."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.config import (
    BearingConfig,
    ConfigError,
    SensorConfig,
    SoundDeviceSourceConfig,
    load_config,
)
from edge_agent.physics.bearing_sim import BearingSimulator, Conditions
from edge_agent.physics.stream import EvidenceStream
from edge_agent.sources import AudioSource
from edge_agent.sources.tacho import TachoCounter
from tests.edge_agent.bundle_fixture import write_config

FS = 48_000


def pulses(rpm: float, seconds: float, per_rev: int = 1, seed: int = 0) -> np.ndarray:
    """A once-per-rev (or per_rev) key-phasor: 5 V pulses, 5 % duty, with noise."""
    t = np.arange(int(seconds * FS)) / FS
    phase = (t * rpm / 60 * per_rev) % 1.0
    return (phase < 0.05) * 5.0 + np.random.default_rng(seed).normal(0, 0.2, len(t))


@settings(max_examples=30, deadline=None)
@given(
    rpm=st.floats(300, 6000),
    per_rev=st.sampled_from([1, 2, 4]),
    chunk=st.integers(16, 5000),
)
def test_speed_is_measured_whatever_the_chunking(rpm, per_rev, chunk):
    counter = TachoCounter(FS, per_rev)
    x = pulses(rpm, 1.5, per_rev)
    for start in range(0, len(x), chunk):
        counter.feed(x[start : start + chunk])
    assert counter.shaft_hz == pytest.approx(rpm / 60, rel=0.005)


def test_a_stopped_shaft_and_bad_input_give_no_speed():
    counter = TachoCounter(FS, timeout_s=0.5)
    assert counter.shaft_hz is None
    counter.feed(pulses(1800, 1.0))
    assert counter.shaft_hz == pytest.approx(30, rel=0.005)
    counter.feed(np.zeros(FS))  # the shaft stopped: no edge for a second
    assert counter.shaft_hz is None
    counter.feed(np.full(100, np.nan))  # a broken channel is skipped, never raises
    with pytest.raises(ValueError, match="pulses_per_rev >= 1"):
        TachoCounter(FS, 0)


def test_the_audio_source_reads_the_speed_from_its_tacho_channel():
    cfg = SoundDeviceSourceConfig(type="sounddevice", sample_rate_hz=FS, channels=2, channel=0,
                                  tacho_channel=1, queue_blocks=200)  # fmt: skip
    source = AudioSource(cfg, SensorConfig(sensitivity_mv_per_g=100.0, full_scale_volts=5.0))
    tacho = pulses(1797, 1.0) / 5.0 * 32767 * 0.5
    block = np.zeros((1024, 2), np.int16)
    chunk = None
    for start in range(0, len(tacho) - 1024, 1024):
        block[:, 1] = tacho[start : start + 1024].astype(np.int16)
        source._callback(block, 1024, None, SimpleNamespace(input_overflow=False))
        chunk = source.read(0.1)
    assert chunk is not None and chunk.shaft_hz == pytest.approx(1797 / 60, rel=0.005)


def test_a_tacho_on_the_sensor_channel_is_refused(tmp_path):
    source = {"type": "sounddevice", "channels": 3, "channel": 0, "tacho_channel": 0}
    with pytest.raises(ConfigError, match=r"source.tacho_channel \(0\) must be another channel"):
        load_config(write_config(tmp_path / "one", tmp_path, 1, source=source))
    many = [{"name": f"c{i}", "input": i, "asset": f"a{i}"} for i in (1, 2)]
    source["tacho_channel"] = 2
    with pytest.raises(ConfigError, match=r"source.tacho_channel \(2\) .*channels.input"):
        load_config(write_config(tmp_path / "two", tmp_path, 1, source=source, channels=many))
    source["tacho_channel"] = 0  # the sensors are on 1 and 2 now: the tacho may use 0
    assert load_config(write_config(tmp_path / "ok", tmp_path, 1, source=source, channels=many))


def test_the_evidence_uses_the_measured_speed_when_none_is_configured():
    stream = EvidenceStream(BearingConfig(designation="6205"), 12_000)
    stream.measured_shaft_hz = 1650 / 60
    sim = BearingSimulator(Conditions(rpm=1650, fault="outer_race", severity=0.6), 12_000, seed=1)
    x = sim.read(3 * 12_000)
    for end in range(1024, len(x) + 1, 512):
        stream.feed(x[end - 512 : end] if end > 1024 else x[:1024], end / 12_000)
    assert stream.latest is not None
    assert stream.latest.shaft_hz == pytest.approx(1650 / 60)
    assert stream.latest.strongest == "outer_race"

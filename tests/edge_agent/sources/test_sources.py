"""Replay and simulator sources, the source registry and the streaming resampler."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.io import wavfile
from scipy.signal import resample_poly

from edge_agent.config import (
    FileSourceConfig,
    SensorConfig,
    SimulatorSourceConfig,
    SimulatorStep,
    SoundDeviceSourceConfig,
)
from edge_agent.physics.bearing_sim import BearingSimulator, Conditions
from edge_agent.sources import (
    SOURCES,
    AudioSource,
    ReplaySource,
    SimulatorSource,
    Source,
    SourceError,
    StreamResampler,
    make_source,
)

SENSOR = SensorConfig(sensitivity_mv_per_g=100.0, full_scale_volts=2.0)  # full scale = 20 g


def drain(source, limit: int = 10_000) -> list:
    chunks = []
    for _ in range(limit):
        chunk = source.read(timeout_s=1.0)
        if chunk is None:
            break
        chunks.append(chunk)
    return chunks


def dominant_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def sine_wav(
    path: Path, rate: int, freq: float, seconds: float, fraction: float = 0.5
) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    data = (fraction * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16)
    wavfile.write(path, rate, data)
    return data


def file_cfg(path: Path, **kw) -> FileSourceConfig:
    return FileSourceConfig(type="file", path=path, **{"realtime": False, **kw})


# -- registry --------------------------------------------------------------------------------


def test_registry_names_match_the_config_types():
    expected = {"sounddevice": AudioSource, "file": ReplaySource, "simulator": SimulatorSource}
    assert expected == SOURCES
    assert all(cls.name == key for key, cls in SOURCES.items())


def test_unknown_source_type_lists_the_valid_ones():
    class Spi:
        type = "spi"

    with pytest.raises(
        SourceError, match="unknown source type 'spi'; valid: sounddevice, file, simulator"
    ):
        make_source(Spi())  # type: ignore[arg-type]


def test_make_source_builds_each_kind(tmp_path: Path):
    sine_wav(tmp_path / "a.wav", 12000, 100, 0.1)
    replay = make_source(file_cfg(tmp_path / "a.wav"), SENSOR, target_rate_hz=12000)
    sim = make_source(SimulatorSourceConfig(type="simulator"), target_rate_hz=12000)
    audio = make_source(SoundDeviceSourceConfig(type="sounddevice", sample_rate_hz=12000), SENSOR)
    for source, cls in ((replay, ReplaySource), (sim, SimulatorSource), (audio, AudioSource)):
        assert isinstance(source, cls) and isinstance(source, Source)
    with pytest.raises(SourceError, match=r"\[sensor\]"):
        make_source(SoundDeviceSourceConfig(type="sounddevice"))


# -- replay ----------------------------------------------------------------------------------


def test_wav_replay_delivers_the_whole_file_in_g(tmp_path: Path):
    data = sine_wav(tmp_path / "rec.wav", 12000, 250, 0.5)
    with ReplaySource(file_cfg(tmp_path / "rec.wav", chunk_samples=1000), SENSOR) as source:
        chunks = drain(source)
        assert source.finished and source.read(0.1) is None
    assert source.sample_rate_hz == 12000
    assert [len(c.samples) for c in chunks] == [1000] * 6
    x = np.concatenate([c.samples for c in chunks])
    np.testing.assert_allclose(x, data / 32767 * 20.0, rtol=1e-5, atol=1e-5)  # int16 -> g
    assert np.abs(x).max() == pytest.approx(10.0, rel=1e-3)  # half of full scale
    assert all(c.dropped == 0 for c in chunks)
    np.testing.assert_allclose(np.diff([c.t_first for c in chunks]), 1000 / 12000, atol=1e-6)


def test_wav_cut_mid_data_is_reported_and_its_samples_used(tmp_path: Path, caplog):
    sine_wav(tmp_path / "rec.wav", 12000, 250, 0.5)
    whole = (tmp_path / "rec.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(whole[: 44 + 2 * 4000])  # header + 4000 of 6000 samples
    with ReplaySource(file_cfg(tmp_path / "cut.wav", chunk_samples=1000), SENSOR) as source:
        x = np.concatenate([c.samples for c in drain(source)])
    assert len(x) == 4000
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "cut.wav" in warning.getMessage() and "prematurely" in warning.getMessage()


def test_npy_float_is_g_and_csv_with_header_and_channel(tmp_path: Path):
    signal = np.random.default_rng(0).standard_normal((300, 2)).astype(np.float32)
    np.save(tmp_path / "rec.npy", signal)
    cfg = file_cfg(tmp_path / "rec.npy", sample_rate_hz=12000, channel=1, chunk_samples=128)
    with ReplaySource(cfg) as source:
        x = np.concatenate([c.samples for c in drain(source)])
    np.testing.assert_array_equal(x, signal[:, 1])

    csv = tmp_path / "rec.csv"
    np.savetxt(csv, signal, delimiter=",", header="x_g,y_g", comments="")
    cfg = file_cfg(csv, sample_rate_hz=12000, scale_g=2.0)
    with ReplaySource(cfg) as source:
        x = np.concatenate([c.samples for c in drain(source)])
    np.testing.assert_allclose(x, 2.0 * signal[:, 0], rtol=1e-6)


def test_wrong_rate_names_both_rates_and_resample_fixes_it(tmp_path: Path):
    sine_wav(tmp_path / "rec48k.wav", 48000, 1000, 0.5)
    with pytest.raises(SourceError, match=r"48000 Hz but the bundle needs 12000 Hz.*resample"):
        ReplaySource(file_cfg(tmp_path / "rec48k.wav"), SENSOR, target_rate_hz=12000)
    cfg = file_cfg(tmp_path / "rec48k.wav", resample=True)
    with ReplaySource(cfg, SENSOR, target_rate_hz=12000) as source:
        x = np.concatenate([c.samples for c in drain(source)])
    assert source.sample_rate_hz == 12000 and len(x) == 6000
    assert dominant_hz(x, 12000) == pytest.approx(1000, abs=3)
    assert np.abs(x[500:-500]).max() == pytest.approx(10.0, rel=0.01)


def test_rate_must_be_known_and_consistent(tmp_path: Path):
    np.save(tmp_path / "rec.npy", np.zeros(100, np.float32))
    with pytest.raises(SourceError, match=r"set source\.sample_rate_hz"):
        ReplaySource(file_cfg(tmp_path / "rec.npy"))
    sine_wav(tmp_path / "rec.wav", 12000, 100, 0.1)
    with pytest.raises(
        SourceError, match=r"header says 12000 Hz but source.sample_rate_hz is 8000"
    ):
        ReplaySource(file_cfg(tmp_path / "rec.wav", sample_rate_hz=8000), SENSOR)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.wav", None, "replay file not found"),
        ("broken.wav", b"RIFF\x10\x00\x00\x00WAVEfmt garbage", "cannot read as WAV"),
        ("broken.npy", b"\x93NUMPY garbage", "cannot read as NPY"),
        ("text.csv", b"time,value\n0.0,abc\n", "cannot read as CSV"),
        ("empty.csv", b"", "contains no samples"),
        ("rec.mp3", b"ID3", "unsupported recording type '.mp3'"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path: Path, name, content, message):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(SourceError, match=message) as info:
        ReplaySource(file_cfg(tmp_path / name, sample_rate_hz=12000), SENSOR)
    assert name in str(info.value)


def test_channel_out_of_range(tmp_path: Path):
    np.save(tmp_path / "rec.npy", np.zeros((10, 2), np.float32))
    with pytest.raises(SourceError, match="the file has 2 channel"):
        ReplaySource(file_cfg(tmp_path / "rec.npy", sample_rate_hz=1000, channel=2))


def test_loop_wraps_around(tmp_path: Path):
    signal = np.arange(100, dtype=np.float32)
    np.save(tmp_path / "rec.npy", signal)
    cfg = file_cfg(tmp_path / "rec.npy", sample_rate_hz=1000, loop=True, chunk_samples=64)
    with ReplaySource(cfg) as source:
        x = np.concatenate([source.read(0.1).samples for _ in range(8)])
        assert not source.finished
    np.testing.assert_array_equal(x[:300], np.tile(signal, 3))


def test_realtime_replay_follows_the_wall_clock(tmp_path: Path):
    np.save(tmp_path / "rec.npy", np.zeros(2000, np.float32))
    cfg = FileSourceConfig(
        type="file", path=tmp_path / "rec.npy", sample_rate_hz=10_000, chunk_samples=500
    )
    with ReplaySource(cfg) as source:
        assert source.read(timeout_s=0.001) is None  # the first 50 ms are not due yet
        start = time.monotonic()
        chunks = drain(source)
        elapsed = time.monotonic() - start
    assert sum(len(c.samples) for c in chunks) == 2000
    assert 0.17 <= elapsed < 1.0  # 0.2 s of signal


def test_read_before_start_is_an_error(tmp_path: Path):
    np.save(tmp_path / "rec.npy", np.zeros(10, np.float32))
    with pytest.raises(SourceError, match="start"):
        ReplaySource(file_cfg(tmp_path / "rec.npy", sample_rate_hz=1000)).read(0.1)


# -- simulator -------------------------------------------------------------------------------


def sim_cfg(**kw) -> SimulatorSourceConfig:
    return SimulatorSourceConfig(type="simulator", realtime=False, **kw)


def test_simulator_fault_injection_is_sample_exact_and_chunking_free():
    schedule = [SimulatorStep(at_s=0.1, fault="outer_race", severity=0.8)]
    signals = []
    for chunk_samples in (100, 777):
        with SimulatorSource(
            sim_cfg(seed=3, chunk_samples=chunk_samples, schedule=schedule)
        ) as src:
            signals.append(
                np.concatenate([src.read(1.0).samples for _ in range(3000 // chunk_samples + 1)])
            )
            assert src.conditions.fault == "outer_race"
    n = 3000
    np.testing.assert_array_equal(signals[0][:n], signals[1][:n])
    direct = BearingSimulator(Conditions(), 12000, seed=3)
    head = direct.read(1200)  # 0.1 s at 12 kHz
    direct.set_conditions(Conditions(fault="outer_race", severity=0.8))
    np.testing.assert_array_equal(signals[0][:n], np.concatenate([head, direct.read(n - 1200)]))


def test_simulator_gain_ramp_imitates_sensor_drift():
    schedule = [SimulatorStep(at_s=0.5, ramp_s=1.0, gain=0.5)]
    with SimulatorSource(sim_cfg(chunk_samples=600, schedule=schedule)) as src:
        gains, rms = [], []
        for _ in range(40):  # 2 s
            chunk = src.read(1.0)
            gains.append(src.conditions.gain)
            rms.append(float(np.sqrt(np.mean(chunk.samples**2))))
    assert gains[0] == 1.0 and gains[-1] == 0.5
    assert all(a >= b for a, b in itertools.pairwise(gains))  # monotone ramp
    assert 0.5 < gains[20] < 1.0  # halfway through
    assert np.mean(rms[-5:]) < 0.7 * np.mean(rms[:5])


def test_simulator_rate_must_match_the_bundle():
    with pytest.raises(SourceError, match=r"simulator runs at 12000 Hz but the bundle needs 16000"):
        SimulatorSource(sim_cfg(), target_rate_hz=16000)


def test_simulator_realtime_pacing():
    with SimulatorSource(SimulatorSourceConfig(type="simulator", chunk_samples=600)) as src:
        start = time.monotonic()
        for _ in range(4):
            assert src.read(1.0) is not None
        assert time.monotonic() - start >= 0.18  # 4 x 50 ms


# -- streaming resampler ---------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(
    rates=st.sampled_from([(48000, 12000), (44100, 12000), (8000, 12000), (16000, 12000)]),
    sizes=st.lists(st.integers(1, 900), min_size=1, max_size=12),
)
def test_stream_resampler_matches_resample_poly_for_any_chunking(rates, sizes):
    x = np.random.default_rng(0).standard_normal(6000)
    resampler = StreamResampler(*rates)
    parts, pos, i = [], 0, 0
    while pos < len(x):
        parts.append(resampler.process(x[pos : pos + sizes[i % len(sizes)]]))
        pos, i = pos + sizes[i % len(sizes)], i + 1
    out = np.concatenate(parts)
    reference = resample_poly(x, resampler.up, resampler.down)
    d, m = resampler.delay_out, len(reference) - 100
    np.testing.assert_allclose(out[d : d + m], reference[:m], atol=1e-5)

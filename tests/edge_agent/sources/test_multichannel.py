"""Multi-channel sources: one (n, channels) chunk per read, column j = channels[j] in g."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.io import wavfile
from scipy.stats import kurtosis

from edge_agent.config import (
    FileSourceConfig,
    SensorConfig,
    SimulatorSourceConfig,
    SimulatorStep,
    SoundDeviceSourceConfig,
)
from edge_agent.physics.bearing_sim import BearingSimulator, Conditions
from edge_agent.sources import (
    AudioSource,
    Chunk,
    ReplaySource,
    SimulatorSource,
    SourceChannel,
    SourceError,
    chunk_column,
    make_source,
)
from edge_agent.sources.simulator import channel_seed

SENSOR = SensorConfig(sensitivity_mv_per_g=100.0, full_scale_volts=2.0)  # full scale = 20 g
LOW_GAIN = SensorConfig(sensitivity_mv_per_g=10.0, full_scale_volts=5.0)  # full scale = 500 g
FAULT = [SimulatorStep(at_s=0.5, fault="outer_race", severity=0.8)]


def drain(source) -> np.ndarray:
    chunks = []
    while (chunk := source.read(timeout_s=1.0)) is not None:
        chunks.append(chunk)
    assert all(c.samples.dtype == np.float32 and c.samples.ndim == 2 for c in chunks)
    return np.concatenate([c.samples for c in chunks])


def file_cfg(path: Path, **kw) -> FileSourceConfig:
    return FileSourceConfig(type="file", path=path, **{"realtime": False, **kw})


def sim_cfg(**kw) -> SimulatorSourceConfig:
    return SimulatorSourceConfig(type="simulator", realtime=False, **kw)


def simulate(channels: list[SourceChannel], chunks: int = 10, **kw) -> np.ndarray:
    with SimulatorSource(sim_cfg(seed=5, chunk_samples=1200, **kw), channels=channels) as src:
        return np.concatenate([src.read(1.0).samples for _ in range(chunks)])


# -- simulator -------------------------------------------------------------------------------


def test_simulator_channels_are_independent_machines_with_their_own_schedule():
    channels = [SourceChannel(0), SourceChannel(1, schedule=FAULT)]
    x = simulate(channels)  # 1 s at 12 kHz; channel 1 gets a fault at 0.5 s
    assert x.shape == (12_000, 2) and x.dtype == np.float32
    np.testing.assert_array_equal(x, simulate(channels))  # deterministic
    assert not np.allclose(x[:6000, 0], x[:6000, 1])  # two machines, both healthy here
    before, after = kurtosis(x[:6000], axis=0), kurtosis(x[6000:], axis=0)
    assert abs(before[0]) < 2 and abs(before[1]) < 2 and abs(after[0]) < 2
    assert after[1] > 10  # impacts in channel 1 only


def test_simulator_column_is_its_machine_whatever_its_position():
    x = simulate([SourceChannel(0), SourceChannel(3, schedule=FAULT)], chunks=2)
    swapped = simulate([SourceChannel(3, schedule=FAULT), SourceChannel(0)], chunks=2)
    np.testing.assert_array_equal(x, swapped[:, ::-1])
    direct = BearingSimulator(Conditions(), 12_000, seed=channel_seed(5, 0))
    np.testing.assert_array_equal(x[:, 0], direct.read(2400))
    assert channel_seed(5, 0) != channel_seed(5, 1) != channel_seed(6, 0)


def test_simulator_channel_without_schedule_follows_the_sources_schedule():
    x = simulate([SourceChannel(0), SourceChannel(1, schedule=[])], schedule=FAULT)
    after = kurtosis(x[6000:], axis=0)
    assert after[0] > 10 and abs(after[1]) < 2


def test_simulator_channel_schedule_must_be_ordered():
    late_first = [SimulatorStep(at_s=2.0, gain=0.5), SimulatorStep(at_s=1.0, gain=1.0)]
    with pytest.raises(SourceError, match=r"input 1: schedule steps must be in increasing at_s"):
        SimulatorSource(sim_cfg(), channels=[SourceChannel(1, schedule=late_first)])


# -- replay ----------------------------------------------------------------------------------


def test_npy_replay_delivers_the_chosen_columns_scaled_per_sensor(tmp_path: Path):
    data = np.random.default_rng(0).integers(-20_000, 20_000, (1000, 3)).astype(np.int16)
    np.save(tmp_path / "rec.npy", data)
    channels = [SourceChannel(2, sensor=LOW_GAIN), SourceChannel(0)]  # 0: the source's sensor
    cfg = file_cfg(tmp_path / "rec.npy", sample_rate_hz=12_000, chunk_samples=300)
    with make_source(cfg, SENSOR, channels=channels) as source:
        chunks = [source.read(1.0) for _ in range(4)]
        assert source.read(1.0) is None and source.finished
    assert [c.samples.shape for c in chunks] == [(300, 2)] * 3 + [(100, 2)]
    x = np.concatenate([c.samples for c in chunks])
    np.testing.assert_allclose(x[:, 0], data[:, 2] / 32767 * 500, rtol=1e-5)
    np.testing.assert_allclose(x[:, 1], data[:, 0] / 32767 * 20, rtol=1e-5)
    np.testing.assert_array_equal(chunk_column(chunks[0], 1), x[:300, 1])


def test_float_columns_are_g_and_scale_g_applies_to_every_column(tmp_path: Path):
    data = np.random.default_rng(1).standard_normal((500, 3)).astype(np.float32)
    np.save(tmp_path / "rec.npy", data)
    cfg = file_cfg(tmp_path / "rec.npy", sample_rate_hz=12_000, channel=2)  # channel: ignored
    with ReplaySource(cfg, channels=[SourceChannel(1, sensor=LOW_GAIN), SourceChannel(0)]) as src:
        np.testing.assert_array_equal(drain(src), data[:, [1, 0]])  # float: already g
    csv = tmp_path / "rec.csv"
    np.savetxt(csv, data, delimiter=",", header="a,b,c", comments="")
    cfg = file_cfg(csv, sample_rate_hz=12_000, scale_g=2.0)
    with ReplaySource(cfg, channels=[SourceChannel(2)]) as src:
        x = drain(src)
    assert x.shape == (500, 1)
    np.testing.assert_allclose(x[:, 0], 2.0 * data[:, 2], rtol=1e-6)


def stereo_wav(path: Path, rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    left, right = 0.5 * np.sin(2 * np.pi * 1000 * t), 0.25 * np.sin(2 * np.pi * 300 * t)
    frames = (np.stack([left, right], axis=1) * 32767).astype(np.int16)
    wavfile.write(path, rate, frames)
    return frames


def test_stereo_wav_scales_each_channel_with_its_sensor(tmp_path: Path):
    frames = stereo_wav(tmp_path / "rec.wav", 12_000, 0.5)
    channels = [SourceChannel(1), SourceChannel(0, sensor=LOW_GAIN)]
    with ReplaySource(file_cfg(tmp_path / "rec.wav"), SENSOR, channels=channels) as source:
        x = drain(source)
    assert source.sample_rate_hz == 12_000 and x.shape == (6000, 2)
    np.testing.assert_allclose(x[:, 0], frames[:, 1] / 32767 * 20, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x[:, 1], frames[:, 0] / 32767 * 500, rtol=1e-5, atol=1e-5)


def test_stereo_wav_resamples_each_column_like_a_single_channel(tmp_path: Path):
    stereo_wav(tmp_path / "rec48k.wav", 48_000, 0.5)
    cfg = file_cfg(tmp_path / "rec48k.wav", resample=True)
    channels = [SourceChannel(0), SourceChannel(1, sensor=LOW_GAIN)]
    with ReplaySource(cfg, SENSOR, 12_000, channels=channels) as source:
        x = drain(source)
    assert source.sample_rate_hz == 12_000 and x.shape == (6000, 2)
    for j, (channel, sensor) in enumerate([(0, SENSOR), (1, LOW_GAIN)]):
        single = ReplaySource(file_cfg(cfg.path, resample=True, channel=channel), sensor, 12_000)
        np.testing.assert_allclose(x[:, j], single.samples_g, rtol=1e-5, atol=1e-5)
    assert np.abs(x[500:-500, 0]).max() == pytest.approx(10.0, rel=0.01)
    assert np.abs(x[500:-500, 1]).max() == pytest.approx(0.25 * 500, rel=0.01)


def test_adc_columns_need_a_sensor_for_each_channel(tmp_path: Path):
    np.save(tmp_path / "rec.npy", np.zeros((100, 2), np.int16))
    cfg = file_cfg(tmp_path / "rec.npy", sample_rate_hz=12_000)
    with pytest.raises(SourceError, match=r"\[sensor\] settings"):
        ReplaySource(cfg, channels=[SourceChannel(0, sensor=SENSOR), SourceChannel(1)])
    ReplaySource(cfg, channels=[SourceChannel(0, sensor=SENSOR), SourceChannel(1, sensor=SENSOR)])


def test_replay_input_out_of_range_names_file_columns_and_input(tmp_path: Path):
    np.save(tmp_path / "rec.npy", np.zeros((100, 3), np.float32))
    cfg = file_cfg(tmp_path / "rec.npy", sample_rate_hz=12_000)
    with pytest.raises(SourceError, match=r"rec\.npy: channel input 3 .* has 3 column\(s\)"):
        ReplaySource(cfg, channels=[SourceChannel(0), SourceChannel(3)])


def test_csv_with_columns_of_different_length_is_a_source_error(tmp_path: Path):
    (tmp_path / "rec.csv").write_text("a,b\n1.0,2.0\n3.0,4.0\n5.0\n")
    cfg = file_cfg(tmp_path / "rec.csv", sample_rate_hz=12_000)
    with pytest.raises(SourceError, match=r"rec\.csv: cannot read as CSV"):
        ReplaySource(cfg, channels=[SourceChannel(0), SourceChannel(1)])


# -- inputs shared by every source -----------------------------------------------------------


@pytest.mark.parametrize(
    ("channels", "message"),
    [
        ([], "channels is empty"),
        ([SourceChannel(0), SourceChannel(0)], r"input 0 is listed twice \(channels\[0\] and"),
        ([SourceChannel(-1)], r"channels\[0\]\.input must be an integer >= 0 .* got -1"),
        ([SourceChannel(True)], r"must be an integer >= 0 .* got True"),
    ],
)
def test_bad_channel_lists_are_refused_by_every_source(tmp_path: Path, channels, message):
    np.save(tmp_path / "rec.npy", np.zeros((100, 2), np.float32))
    configs = [
        (file_cfg(tmp_path / "rec.npy", sample_rate_hz=12_000), None),
        (sim_cfg(), None),
        (SoundDeviceSourceConfig(type="sounddevice", channels=2), SENSOR),
    ]
    for cfg, sensor in configs:
        with pytest.raises(SourceError, match=message):
            make_source(cfg, sensor, channels=channels)


def test_chunk_column_of_single_and_multi_channel_chunks():
    single = Chunk(np.arange(4, dtype=np.float32), 0.0)
    multi = Chunk(np.arange(8, dtype=np.float32).reshape(4, 2), 0.0)
    np.testing.assert_array_equal(chunk_column(single, 0), [0, 1, 2, 3])
    np.testing.assert_array_equal(chunk_column(multi, 1), [1, 3, 5, 7])
    with pytest.raises(IndexError, match="chunk has 1 channel"):
        chunk_column(single, 1)


# -- sounddevice: the callback, driven directly (real stream: test_audio.py) -----------------


def audio(channels: list[SourceChannel], target: int | None = None, **kw) -> AudioSource:
    cfg = SoundDeviceSourceConfig(
        type="sounddevice", sample_rate_hz=48_000, channels=4, queue_blocks=8, **kw
    )
    return AudioSource(cfg, SENSOR, target, channels=channels)


def four_inputs(frames: int = 1024) -> np.ndarray:
    """int16 (frames, 4): input i holds the constant 1000 * (i + 1)."""
    return np.tile(np.int16([1000, 2000, 3000, 4000]), (frames, 1))


def test_callback_copies_only_the_chosen_inputs_scaled_per_sensor():
    source = audio([SourceChannel(3, sensor=LOW_GAIN), SourceChannel(1)])
    source._callback(four_inputs(), 1024, None, SimpleNamespace(input_overflow=False))
    chunk = source.read(0.1)
    assert chunk.samples.shape == (1024, 2) and chunk.samples.dtype == np.float32
    np.testing.assert_allclose(chunk.samples[:, 0], 4000 / 32767 * 500, rtol=1e-6)
    np.testing.assert_allclose(chunk.samples[:, 1], 2000 / 32767 * 20, rtol=1e-6)


def test_callback_columns_are_resampled_alike():
    source = audio([SourceChannel(0), SourceChannel(2)], target=12_000, resample=True)
    for _ in range(4):
        source._callback(four_inputs(), 1024, None, SimpleNamespace(input_overflow=False))
    x = np.concatenate([source.read(0.1).samples for _ in range(4)])
    assert source.sample_rate_hz == 12_000 and x.shape == (1024, 2)
    steady = x[100:]  # past the filter's start-up from silence
    np.testing.assert_allclose(steady[:, 0], 1000 / 32767 * 20, rtol=1e-3)
    np.testing.assert_allclose(steady[:, 1], 3 * steady[:, 0], rtol=1e-5)


def test_audio_inputs_must_be_opened_and_not_the_tacho():
    with pytest.raises(SourceError, match=r"input 4 is not recorded: source\.channels = 4"):
        audio([SourceChannel(0), SourceChannel(4)])
    with pytest.raises(SourceError, match=r"input 2 is also source\.tacho_channel"):
        audio([SourceChannel(0), SourceChannel(2)], tacho_channel=2, channel=1)


def test_audio_without_any_sensor_settings_is_refused():
    cfg = SoundDeviceSourceConfig(type="sounddevice", channels=2)
    with pytest.raises(SourceError, match=r"\[sensor\]"):
        make_source(cfg, channels=[SourceChannel(0, sensor=SENSOR), SourceChannel(1)])
    source = make_source(
        cfg, channels=[SourceChannel(0, sensor=SENSOR), SourceChannel(1, sensor=LOW_GAIN)]
    )
    assert isinstance(source, AudioSource)

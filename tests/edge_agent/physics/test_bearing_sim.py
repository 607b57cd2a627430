"""The simulator's physics (envelope lines at the defect frequencies), streaming and sensor."""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import signal as sps

from edge_agent.physics.bearing_sim import (
    FAULTS,
    SKF_6205,
    BearingGeometry,
    BearingSimulator,
    Conditions,
    severity_from_fault_size,
    simulate,
)

FS = 12_000


def envelope_spectrum(x: np.ndarray, fs: int = FS) -> tuple[np.ndarray, np.ndarray]:
    """Band-pass 2-5 kHz (around the resonances), Hilbert envelope, Hann-windowed FFT.

    Zero-padded 4x so a line between two bins is not under-read (no scalloping loss).
    """
    sos = sps.butter(4, [2000, 5000], btype="band", fs=fs, output="sos")
    env = np.abs(sps.hilbert(sps.sosfiltfilt(sos, x.astype(np.float64))))
    env = (env - env.mean()) * np.hanning(env.size)
    n_fft = 4 * env.size
    return np.fft.rfftfreq(n_fft, 1 / fs), np.abs(np.fft.rfft(env, n_fft))


def strongest_line(x: np.ndarray, lo: float = 20, hi: float = 300) -> tuple[float, float]:
    """(frequency Hz, peak / median) of the strongest envelope line in [lo, hi]."""
    freq, spec = envelope_spectrum(x)
    band = (freq >= lo) & (freq <= hi)
    k = int(np.argmax(spec[band]))
    return float(freq[band][k]), float(spec[band][k] / np.median(spec[band]))


def test_skf_6205_reproduces_cwru_fault_orders() -> None:
    cwru = {"bpfi": 5.4152, "bpfo": 3.5848, "bsf": 2.3568, "ftf": 0.39828}
    orders = SKF_6205.fault_orders()
    for name, expected in cwru.items():
        assert orders[name] == pytest.approx(expected, rel=0.01), name


def test_contact_angle_moves_inner_and_outer_orders_together() -> None:
    angled = dataclasses.replace(SKF_6205, contact_angle_deg=40.0).fault_orders()
    flat = SKF_6205.fault_orders()
    assert angled["bpfo"] > flat["bpfo"] and angled["bpfi"] < flat["bpfi"]
    assert angled["bpfo"] + angled["bpfi"] == pytest.approx(SKF_6205.n_balls)


def test_bad_geometry_names_the_field() -> None:
    with pytest.raises(ValueError, match="pitch_diameter_mm"):
        BearingGeometry(9, 40.0, 39.0)


@pytest.mark.parametrize("rpm", [1200.0, 1797.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_envelope_line_sits_at_the_defect_frequency(rpm: float, seed: int) -> None:
    shaft_hz = rpm / 60
    orders = SKF_6205.fault_orders()
    expected = {
        "inner_race": [orders["bpfi"] * shaft_hz],
        "outer_race": [orders["bpfo"] * shaft_hz],
        "ball": [orders["bsf"] * shaft_hz, 2 * orders["bsf"] * shaft_hz],
    }
    normal_ratio = strongest_line(simulate(Conditions(rpm=rpm), 2.0, seed=seed))[1]
    for fault, lines in expected.items():
        x = simulate(Conditions(rpm=rpm, fault=fault, severity=0.3), 2.0, seed=seed)
        peak_hz, ratio = strongest_line(x)
        assert any(abs(peak_hz - f) <= 0.02 * f for f in lines), (fault, peak_hz, lines)
        assert ratio > 5 * normal_ratio, (fault, ratio, normal_ratio)
    assert normal_ratio < 8  # no dominant line without a defect


def test_inner_race_is_modulated_at_shaft_rate_outer_race_is_not() -> None:
    rpm = 1797.0
    shaft_hz, orders = rpm / 60, SKF_6205.fault_orders()

    def sideband_ratio(fault: str, order: float) -> float:
        freq, spec = envelope_spectrum(simulate(Conditions(rpm=rpm, fault=fault), 4.0, seed=3))

        def level(f: float) -> float:
            return float(spec[np.abs(freq - f) <= 1.0].max())

        line = order * shaft_hz
        return (level(line - shaft_hz) + level(line + shaft_hz)) / level(line)

    assert sideband_ratio("inner_race", orders["bpfi"]) > 3 * sideband_ratio(
        "outer_race", orders["bpfo"]
    )


def test_severity_scales_impact_energy() -> None:
    rms = [
        float(np.std(simulate(Conditions(fault="outer_race", severity=s), 1.0, seed=2)))
        for s in (0.1, 0.4, 0.8)
    ]
    assert rms[0] < rms[1] < rms[2]


def test_severity_from_fault_size() -> None:
    assert severity_from_fault_size(0.007) == pytest.approx(0.25)
    assert severity_from_fault_size(0.021) == pytest.approx(0.75)
    assert severity_from_fault_size(0.1) == 1.0
    with pytest.raises(ValueError, match="fault_size_in"):
        severity_from_fault_size(-0.01)


def test_same_seed_same_signal_different_seed_different() -> None:
    c = Conditions(fault="ball", speed_jitter=0.01)
    a, b = simulate(c, 0.5, seed=7), simulate(c, 0.5, seed=7)
    assert a.dtype == np.float32 and a.shape == (FS // 2,)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, simulate(c, 0.5, seed=8))


@pytest.mark.parametrize("fault", FAULTS)
def test_chunked_reads_equal_one_read(fault: str) -> None:
    c = Conditions(fault=fault, speed_jitter=0.01, clip_g=0.5)
    sim = BearingSimulator(c, seed=5)
    chunked = np.concatenate([sim.read(1000) for _ in range(10)])
    whole = BearingSimulator(c, seed=5).read(10_000)
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-6)
    odd = BearingSimulator(c, seed=5)
    sizes = [1, 7, 130, 2000, 3, 7859]  # chunks shorter and longer than the ringing
    np.testing.assert_allclose(
        np.concatenate([odd.read(n) for n in sizes]), whole, rtol=0, atol=1e-6
    )


def test_set_conditions_is_chunking_independent_and_injects_a_fault() -> None:
    healthy, faulty = Conditions(), Conditions(fault="inner_race", severity=0.6)

    def run(chunk: int) -> np.ndarray:
        sim = BearingSimulator(healthy, seed=11)
        before = [sim.read(chunk) for _ in range(12_000 // chunk)]
        sim.set_conditions(faulty)
        after = [sim.read(chunk) for _ in range(12_000 // chunk)]
        return np.concatenate(before + after)

    x = run(12_000)
    np.testing.assert_allclose(run(1000), x, rtol=0, atol=1e-6)
    kurtosis = [float(np.mean(h**4) / np.mean(h**2) ** 2) for h in (x[:FS], x[FS:])]
    assert kurtosis[1] > 2 * kurtosis[0]
    assert strongest_line(x[FS:])[0] == pytest.approx(5.4152 * 1797 / 60, rel=0.02)


def test_speed_change_moves_the_fault_line() -> None:
    sim = BearingSimulator(Conditions(rpm=1800, fault="outer_race"), seed=4)
    fast = sim.read(2 * FS)
    sim.set_conditions(Conditions(rpm=1200, fault="outer_race"))
    slow = sim.read(2 * FS)
    assert strongest_line(fast)[0] == pytest.approx(3.5848 * 30, rel=0.02)
    assert strongest_line(slow)[0] == pytest.approx(3.5848 * 20, rel=0.02)
    assert sim.fault_frequency_hz() == pytest.approx(3.5848 * 20, rel=0.001)


def test_clipping_caps_values() -> None:
    x = simulate(Conditions(fault="inner_race", severity=1.0, clip_g=0.3), 0.5)
    assert np.abs(x).max() <= np.float32(0.3)
    assert np.count_nonzero(np.abs(x) >= np.float32(0.3)) > 10  # it really saturated


def test_gain_scales_rms_and_offset_shifts_mean() -> None:
    base = Conditions(fault="outer_race", noise_floor_g=0.0)
    x1 = simulate(base, 0.5, seed=1)
    x2 = simulate(dataclasses.replace(base, gain=2.0), 0.5, seed=1)
    assert np.sqrt(np.mean(x2**2)) == pytest.approx(2 * np.sqrt(np.mean(x1**2)), rel=1e-5)
    x3 = simulate(dataclasses.replace(base, dc_offset_g=0.25), 0.5, seed=1)
    assert float(np.mean(x3 - x1)) == pytest.approx(0.25, abs=1e-5)


def test_noise_floor_adds_variance() -> None:
    quiet = simulate(Conditions(noise_floor_g=0.0), 1.0, seed=2)
    noisy = simulate(Conditions(noise_floor_g=0.1), 1.0, seed=2)
    assert np.var(noisy) - np.var(quiet) == pytest.approx(0.01, rel=0.1)


def test_faster_than_20x_real_time() -> None:
    sim = BearingSimulator(Conditions(fault="ball", speed_jitter=0.01), seed=0)
    sim.read(FS)  # warm-up
    start = time.perf_counter()
    sim.read(5 * FS)
    assert time.perf_counter() - start < 5.0 / 20


def test_read_rejects_bad_sizes() -> None:
    sim = BearingSimulator(Conditions())
    assert sim.read(0).shape == (0,)
    with pytest.raises(ValueError, match="n_samples"):
        sim.read(-1)


_NUMBER = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10_000), st.none()
)


@settings(max_examples=200, deadline=None)
@given(field=st.sampled_from([f.name for f in dataclasses.fields(Conditions)]), value=_NUMBER)
def test_conditions_accept_or_reject_naming_the_field(field: str, value: object) -> None:
    try:
        c = Conditions(**{field: value})
    except ValueError as err:
        assert f"Conditions.{field}" in str(err)
        assert repr(value) in str(err)
    else:
        stored = getattr(c, field)
        assert stored is None or math.isfinite(stored)

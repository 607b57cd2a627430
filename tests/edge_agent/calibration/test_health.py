"""Health trend: indicators match hand-derived values, ISO zones, and the alarm is early but quiet.

The run-to-failure life is simulated one short snapshot per time step (1024 samples each),
rather than a continuous multi-hour stream: healthy for the first half, then a bearing defect
whose severity grows exponentially from 0 to its final value.
"""

from __future__ import annotations

import json
import math
from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.signal import hilbert

from edge_agent.calibration.health import (
    ISO_20816_3_BOUNDARIES_MM_S,
    HealthParams,
    HealthTrend,
    Indicators,
    condition_indicators,
    iso_zone,
)
from edge_agent.physics.bearing_sim import BearingSimulator, Conditions, simulate_run_to_failure
from edge_agent.physics.bearing_sim import run_to_failure_severity as severity_at

FS = 12_000
N = 1024  # the agent's window: 85 ms at 12 kHz
G = 9.80665


def tone(amplitude_g: float, freq_hz: float, n: int, fs: int = FS) -> np.ndarray:
    t = np.arange(n) / fs
    return amplitude_g * np.sin(2 * np.pi * freq_hz * t + 0.3)


def sine_velocity_mm_s(amplitude_g: float, freq_hz: float) -> float:
    return amplitude_g * G / (2 * np.pi * freq_hz) / math.sqrt(2) * 1000


# -- indicators --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amplitude_g", "freq_hz", "n"),
    [
        (1.0, 100.0, 12_000),
        (0.5, 160.0, N),
        (0.2, 50.0, 4096),
        (2.0, 800.0, N),
        (1.0, 15.0, 12_000),
    ],
)
def test_sine_velocity_rms_matches_integration_by_hand(amplitude_g, freq_hz, n):
    ind = condition_indicators(tone(amplitude_g, freq_hz, n), FS)
    assert ind.velocity_rms_mm_s == pytest.approx(
        sine_velocity_mm_s(amplitude_g, freq_hz), rel=0.02
    )
    assert ind.rms_g == pytest.approx(amplitude_g / math.sqrt(2), rel=0.02)


@pytest.mark.parametrize("freq_hz", [5.0, 5.5, 2000.0, 2500.5])
def test_sine_outside_10_to_1000_hz_has_no_velocity(freq_hz):
    ind = condition_indicators(tone(1.0, freq_hz, FS), FS)  # 1 s window: 1 Hz bins
    assert ind.velocity_rms_mm_s < 0.01 * sine_velocity_mm_s(1.0, freq_hz)


def test_sine_shape_factors():
    ind = condition_indicators(tone(0.7, 100.0, FS), FS)  # whole periods
    assert ind.crest_factor == pytest.approx(math.sqrt(2), rel=1e-3)
    assert ind.kurtosis == pytest.approx(1.5, rel=1e-3)
    assert ind.peak_g == pytest.approx(0.7, rel=1e-3)


def test_gaussian_noise_kurtosis_is_three():
    x = np.random.default_rng(0).normal(0.0, 0.3, 65_536)
    ind = condition_indicators(x, FS)
    assert ind.kurtosis == pytest.approx(3.0, abs=0.1)
    assert ind.rms_g == pytest.approx(0.3, rel=0.01)
    assert 3.0 < ind.crest_factor < 6.0


def test_dc_offset_and_gravity_do_not_count():
    x = tone(0.5, 160.0, N)
    plain, offset = condition_indicators(x, FS), condition_indicators(x + 1.0, FS)
    for name, value in plain.as_dict().items():
        assert getattr(offset, name) == pytest.approx(value, rel=1e-6), name


def test_envelope_of_an_amplitude_modulated_carrier():
    """(1 + m cos(2 pi fm t)) sin(2 pi fc t): envelope 1 + m cos, RMS sqrt(1 + m²/2)."""
    t = np.arange(FS) / FS
    m = 0.5
    x = (1 + m * np.cos(2 * np.pi * 100 * t)) * np.sin(2 * np.pi * 3000 * t)
    ind = condition_indicators(x, FS)
    assert ind.envelope_rms_g == pytest.approx(math.sqrt(1 + m * m / 2), rel=0.01)
    # a tone's envelope is its amplitude; below the band it is ~0
    assert condition_indicators(tone(0.8, 3000.0, N), FS).envelope_rms_g == pytest.approx(
        0.8, rel=0.02
    )
    assert condition_indicators(tone(0.8, 100.0, N), FS).envelope_rms_g < 1e-3


def test_envelope_matches_scipy_hilbert_of_the_band_passed_signal():
    x = np.random.default_rng(1).standard_normal(FS)
    spec = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(FS, 1 / FS)
    spec[(freqs < 2000) | (freqs > 4000)] = 0
    reference = np.sqrt(np.mean(np.abs(hilbert(np.fft.irfft(spec, FS))) ** 2))
    ind = condition_indicators(x, FS, band_hz=(2000.0, 4000.0))
    assert ind.envelope_rms_g == pytest.approx(reference, rel=0.03)


@pytest.mark.parametrize(
    ("window", "kwargs", "match"),
    [
        (np.r_[np.zeros(100), np.nan], {}, "NaN"),
        (np.r_[np.zeros(100), -np.inf], {}, "inf"),
        (np.zeros(0), {}, "non-empty"),
        (np.zeros((2, 512)), {}, "1-D"),
        (np.zeros(8), {}, ">= 16 samples"),
        (np.array(["a"] * 32), {}, "numeric"),
        (np.zeros(N), {"fs_hz": 0}, "fs_hz"),
        (np.zeros(N), {"fs_hz": True}, "fs_hz"),
        (np.zeros(N), {"fs_hz": 1000}, "band_hz"),  # 0.4 fs < 500 Hz
        (np.zeros(N), {"band_hz": (3000.0, 2000.0)}, "band_hz"),
        (np.zeros(N), {"band_hz": (100.0, 7000.0)}, "band_hz"),
    ],
)
def test_bad_input_is_a_value_error_naming_it(window, kwargs, match):
    kwargs = {"fs_hz": FS, **kwargs}
    with pytest.raises(ValueError, match=match):
        condition_indicators(window, **kwargs)


def test_flat_window_is_all_zero():
    assert condition_indicators(np.full(N, 2.4), FS) == Indicators(0, 0, 0, 0, 0, 0)


@settings(max_examples=200, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.float64, np.float32, np.int16]),
        shape=st.integers(0, 300),
        elements={"allow_nan": True, "allow_infinity": True},
    )
)
def test_any_array_gives_a_value_error_or_finite_indicators(window):
    try:
        ind = condition_indicators(window, FS)
    except ValueError:
        assert window.size < 16 or not np.isfinite(window).all() or np.abs(window).max() > 1e300
        return
    assert all(math.isfinite(v) and v >= 0 for v in ind.as_dict().values())


# -- ISO 20816-3 zones -------------------------------------------------------------------------


@pytest.mark.parametrize(("group", "foundation"), list(ISO_20816_3_BOUNDARIES_MM_S))
def test_iso_zone_boundaries_belong_to_the_lower_zone(group, foundation):
    ab, bc, cd = ISO_20816_3_BOUNDARIES_MM_S[(group, foundation)]
    expected = [(0.0, "A"), (ab, "A"), (ab + 0.01, "B"), (bc, "B"), (bc + 0.01, "C")]
    expected += [(cd, "C"), (cd + 0.01, "D"), (1000.0, "D")]
    for velocity, zone in expected:
        assert iso_zone(velocity, group, foundation) == zone, velocity


def test_iso_zone_table_values():
    assert iso_zone(2.0, "group1", "rigid") == "A"
    assert iso_zone(2.0, "group2", "rigid") == "B"  # medium machines are judged stricter
    assert iso_zone(8.0, "group1", "flexible") == "C"
    assert iso_zone(8.0, "group1", "rigid") == "D"


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((1.0, "group3", "rigid"), "group='group3'"),
        ((1.0, "group1", "soft"), "foundation='soft'"),
        ((-1.0, "group1", "rigid"), "-1.0"),
        ((math.nan, "group1", "rigid"), "nan"),
    ],
)
def test_iso_zone_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        iso_zone(*args)


# -- parameters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"commission_windows": 5}, "commission_windows must be >= 10, got 5"),
        ({"commission_windows": 20.5}, "commission_windows must be an integer"),
        ({"smooth_windows": 0}, "smooth_windows"),
        ({"alarm_score": math.inf}, "alarm_score must be finite"),
        ({"alarm_after": True}, "alarm_after must be a number"),
        ({"clear_score": 5.0}, "clear_score=5.0, alarm_score=4.0"),
        ({"min_relative_spread": 0.0}, "min_relative_spread"),
        ({"machine_group": "group9"}, "machine_group"),
        ({"foundation": "concrete"}, "foundation"),
    ],
)
def test_params_name_the_bad_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HealthParams(**kwargs)


# -- simulated machines ------------------------------------------------------------------------

LIFE_STEPS = 800  # snapshots over a life; commissioning takes the first 200 (25 %)


@cache
def simulate_life(seed: int, fault: str, steps: int = LIFE_STEPS) -> tuple[Indicators, ...]:
    """Indicators of each snapshot of `simulate_run_to_failure` (cached: tests share lives)."""
    return tuple(condition_indicators(x, FS) for x in simulate_run_to_failure(seed, fault, steps))


def run(trend: HealthTrend, stream) -> list:
    return [trend.update(ind) for ind in stream]


def test_no_false_alarm_over_2000_healthy_windows():
    readings = run(HealthTrend(), simulate_life(seed=11, fault="normal", steps=2000))
    assert not readings[198].baseline_ready and readings[198].score is None
    assert readings[199].baseline_ready and readings[199].score is None  # the 200th completes it
    assert readings[200].score is not None
    assert not any(r.alarm for r in readings)
    smoothed = [r.smoothed for r in readings[200:]]
    assert max(smoothed) < 0.75 * HealthParams().alarm_score  # margin, not luck
    assert {r.zone for r in readings} <= {"A", "B"}


def healthy_then(window: Indicators | None, count: int) -> list[Indicators]:
    healthy = list(simulate_life(seed=12, fault="normal", steps=600))
    return healthy[:300] + ([window] * count if window else []) + healthy[300:]


def test_persistent_step_raises_once_then_clears_with_hysteresis():
    healthy = list(simulate_life(seed=12, fault="normal", steps=600))
    fault = Conditions(fault="outer_race", severity=0.1)  # same machine, a new defect
    sim = BearingSimulator(fault, FS, seed=99, machine_seed=12)
    faulty = [condition_indicators(sim.read(N), FS) for _ in range(60)]
    readings = run(HealthTrend(), healthy[:300] + faulty + healthy[300:])
    raised = [i for i, r in enumerate(readings) if r.changed and r.alarm]
    cleared = [i for i, r in enumerate(readings) if r.changed and not r.alarm]
    assert len(raised) == 1 and 300 <= raised[0] <= 300 + 15  # median half-way + 5 in a row
    assert readings[raised[0]].driver in {"envelope_rms_g", "kurtosis", "crest_factor", "rms_g"}
    assert all(r.alarm for r in readings[raised[0] : 360])
    assert len(cleared) == 1 and 360 + 20 <= cleared[0] <= 360 + 40  # clear_after below 2.5
    assert not readings[-1].alarm


@pytest.mark.parametrize("spikes", [1, 5])
def test_spikes_do_not_alarm(spikes):
    """A knock on the housing: huge scores for a few windows, not a sustained rise."""
    knock = condition_indicators(np.r_[np.zeros(N - 1), 20.0] + tone(0.05, 30.0, N), FS)
    readings = run(HealthTrend(), healthy_then(knock, spikes))
    assert max(r.score for r in readings[300 : 300 + spikes]) > 100
    assert not any(r.alarm for r in readings)


def test_state_round_trips_through_json_and_continues_identically():
    stream = list(simulate_life(seed=2, fault="outer_race"))  # shared with the life test
    for cut in (120, 700):  # mid-commissioning; in alarm late in life
        original = HealthTrend()
        run(original, stream[:cut])
        restored = HealthTrend.from_state(json.loads(json.dumps(original.state())))
        assert restored.state() == original.state()
        assert run(restored, stream[cut:]) == run(original, stream[cut:])
    assert original.alarm


def test_bad_state_is_a_value_error_naming_the_key():
    trend = HealthTrend()
    trend.commission(list(simulate_life(seed=3, fault="normal", steps=50)))
    good = trend.state()
    for key, value, match in [
        ("version", 2, "version must be 1"),
        ("baseline", {**good["baseline"], "spread": [1.0]}, "baseline.spread"),
        ("baseline", {**good["baseline"], "center": [math.nan] * 6}, "baseline.center"),
        ("recent_scores", "x", "recent_scores"),
        ("above", -1, "above"),
        ("alarm", "yes", "alarm"),
        ("indicators", ["rms_g"], "indicators"),
    ]:
        with pytest.raises(ValueError, match=match):
            HealthTrend.from_state({**good, key: value})


def test_explicit_commission_and_recommission():
    trend = HealthTrend(HealthParams(commission_windows=500))
    with pytest.raises(ValueError, match="got 3"):
        trend.commission(list(simulate_life(seed=4, fault="normal", steps=3)))
    trend.commission(list(simulate_life(seed=4, fault="normal", steps=50)))
    window = simulate_life(4, "normal", 51)[50]
    assert trend.baseline_ready and trend.update(window).score >= 0
    trend.recommission()
    assert not trend.baseline_ready and trend.update(window).score is None


@pytest.mark.parametrize(
    ("seed", "fault"), [(seed, ("outer_race", "inner_race")[seed % 2]) for seed in range(5)]
)
def test_run_to_failure_alarms_before_90_percent_of_life_and_never_while_healthy(seed, fault):
    readings = run(HealthTrend(), simulate_life(seed, fault))
    alarms = [i / LIFE_STEPS for i, r in enumerate(readings) if r.alarm]
    assert alarms, "no alarm over the whole life"
    first = alarms[0]
    print(f"{fault} seed {seed}: alarm at {first:.1%} of life, severity {severity_at(first):.3f}")
    assert 0.5 < first < 0.9
    healthy = [r.smoothed for r in readings[200 : LIFE_STEPS // 2]]  # after commissioning
    assert max(healthy) < 0.75 * HealthParams().alarm_score  # quiet by a margin, not by luck
    assert all(r.alarm for r in readings[round(first * LIFE_STEPS) :])  # stays up as it worsens

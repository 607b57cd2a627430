"""Signal sanity: broken sensors are caught on the raw window, and nothing crashes the loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_agent.pipeline.sanity import REASONS, check_window, window_stats

FS = 12_000
LIMITS = {"clip_g": 25.0, "min_rms_g": 0.01, "max_rms_g": 5.0}


def vibration(n: int = 2048, rms_g: float = 0.5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / FS
    x = np.sin(2 * np.pi * 157 * t) + 0.5 * rng.standard_normal(n)
    return (x / x.std() * rms_g).astype(np.float32)


def test_healthy_vibration_passes_with_its_level():
    result = check_window(vibration(rms_g=0.5), **LIMITS)
    assert result.ok and result.reason is None
    assert result.stats["rms"] == pytest.approx(0.5, rel=1e-3)
    assert result.stats["clipped_fraction"] == 0.0


@pytest.mark.parametrize(
    ("window", "reason"),
    [
        (np.r_[vibration(100), np.nan], "nan"),
        (np.r_[vibration(100), np.inf], "inf"),
        (np.full(2048, 2.4, np.float32), "flat_line"),  # IEPE bias stuck: DC, no vibration
        (np.clip(vibration(rms_g=12.0), -25, 25), "clipping"),
        (vibration(rms_g=0.001), "level_low"),
        (vibration(rms_g=7.0), "level_high"),
    ],
)
def test_each_fault_is_named(window, reason):
    result = check_window(window, **LIMITS)
    assert not result.ok and result.reason == reason


def test_nan_wins_over_inf_and_stats_use_the_finite_samples():
    x = vibration(200, rms_g=1.0).astype(np.float64)
    x[3], x[7] = np.nan, -np.inf
    result = check_window(x, **LIMITS)
    assert result.reason == "nan"
    assert result.stats["rms"] == pytest.approx(1.0, rel=0.05)


def test_a_few_clipped_samples_are_tolerated():
    x = vibration(4096, rms_g=0.5)
    x[:2] = 25.0  # 2 of 4096 < 0.1 %
    assert check_window(x, **LIMITS).ok
    x[:10] = 25.0
    assert check_window(x, **LIMITS).reason == "clipping"


def test_no_clip_level_means_no_clipping_check():
    x = np.clip(vibration(rms_g=3.0), -4, 4)
    result = check_window(x, clip_g=None, min_rms_g=0.01, max_rms_g=5.0)
    assert result.ok and result.stats["clipped_fraction"] == 0.0


def test_stats_match_textbook_values():
    t = np.arange(12_000) / FS
    sine = np.sin(2 * np.pi * 50 * t) + 0.3  # DC offset is reported, not counted as level
    stats = window_stats(sine)
    assert stats["rms"] == pytest.approx(1 / math.sqrt(2), rel=1e-4)
    assert stats["crest_factor"] == pytest.approx(math.sqrt(2), rel=1e-4)
    assert stats["kurtosis"] == pytest.approx(1.5, rel=1e-3)
    assert stats["peak"] == pytest.approx(1.3, rel=1e-4)
    assert stats["mean"] == pytest.approx(0.3, abs=1e-6)
    gauss = np.random.default_rng(1).standard_normal(200_000)
    assert window_stats(gauss)["kurtosis"] == pytest.approx(3.0, abs=0.05)


def test_impacts_raise_kurtosis_and_crest_factor():
    x = vibration(4096, rms_g=0.2).astype(np.float64)
    impacts = x.copy()
    impacts[::400] += 3.0
    assert window_stats(impacts)["kurtosis"] > 3 * window_stats(x)["kurtosis"]
    assert window_stats(impacts)["crest_factor"] > window_stats(x)["crest_factor"]


@pytest.mark.parametrize("bad", [np.zeros(0), np.zeros((4, 4)), np.float32(1.0), np.array(["a"])])
def test_wrong_shape_or_type_is_a_value_error(bad):
    with pytest.raises(ValueError):
        check_window(bad, **LIMITS)
    with pytest.raises(ValueError):
        window_stats(bad)


@settings(max_examples=200, deadline=None)
@given(
    x=hnp.arrays(
        dtype=st.sampled_from([np.float32, np.float64, np.int16]),
        shape=st.integers(1, 64),
        elements={"allow_nan": True, "allow_infinity": True, "allow_subnormal": True},
    ),
    clip=st.one_of(st.none(), st.floats(1e-3, 1e3)),
)
def test_any_numeric_window_gives_a_result_with_finite_stats(x, clip):
    result = check_window(x, clip_g=clip, min_rms_g=1e-3, max_rms_g=1e3)
    assert result.ok == (result.reason is None)
    assert result.reason is None or result.reason in REASONS
    assert set(result.stats) >= {"rms", "peak", "crest_factor", "kurtosis", "clipped_fraction"}
    assert all(math.isfinite(v) for v in result.stats.values())
    xf = x.astype(np.float64)
    if np.isnan(xf).any():
        assert result.reason == "nan"
    elif np.isinf(xf).any():
        assert result.reason == "inf"

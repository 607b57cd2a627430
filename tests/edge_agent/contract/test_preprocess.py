"""The one preprocessing implementation: framing, normalization, scaling to g."""

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edge_agent.contract.preprocess import (
    PreprocessSpec,
    adc_to_g,
    frame,
    normalize,
    prepare,
    resample,
)


@given(length=st.integers(16, 600), window=st.integers(16, 64), hop=st.integers(1, 64))
def test_frame_count_and_content(length, window, hop):
    signal = np.arange(length, dtype=np.float32)
    if length < window:
        with pytest.raises(ValueError, match="shorter than one window"):
            frame(signal, window, hop)
        return
    windows = frame(signal, window, hop)
    assert windows.shape == (1 + (length - window) // hop, window)
    assert windows[-1, 0] == (windows.shape[0] - 1) * hop  # each window starts one hop later


@settings(max_examples=50)
@given(arrays(np.float32, (3, 64), elements=st.floats(-1e3, 1e3, width=32)))
@example(np.r_[721.5879, np.full(191, 721.5)].astype(np.float32).reshape(3, 64))  # found by CI
def test_zscore_windows_have_zero_mean_unit_std_or_are_flat(x):
    out = normalize(x, "zscore")
    assert out.shape == (3, 1, 64) and out.dtype == np.float32
    assert np.isfinite(out).all()
    for row, orig in zip(out[:, 0], x, strict=True):
        assert abs(row.mean()) < 1e-3
        if orig.std() > 1e-2:
            assert abs(row.std() - 1) < 1e-3


def test_zscore_is_invariant_to_gain_and_offset():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 256)).astype(np.float32)
    np.testing.assert_allclose(normalize(x), normalize(3.7 * x + 0.5), atol=1e-5)


def test_center_keeps_amplitude():
    x = np.full((1, 32), 2.0, np.float32)
    x[0, ::2] = 4.0
    out = normalize(x, "center")
    np.testing.assert_allclose(np.abs(out), 1.0)


def test_adc_to_g_int16_full_scale():
    # 100 mV/g sensor, 5 V full scale: full-scale count = 50 g
    raw = np.array([0, 32767, -32767], dtype=np.int16)
    np.testing.assert_allclose(
        adc_to_g(raw, sensitivity_mv_per_g=100, full_scale_volts=5.0), [0, 50, -50], rtol=1e-5
    )


def test_adc_to_g_float_fraction_and_bad_args():
    np.testing.assert_allclose(
        adc_to_g(np.array([0.5]), sensitivity_mv_per_g=10, full_scale_volts=1.0), [50.0]
    )
    with pytest.raises(ValueError, match="sensitivity_mv_per_g"):
        adc_to_g(np.zeros(3), sensitivity_mv_per_g=0, full_scale_volts=1.0)


def test_resample_keeps_a_tone():
    t = np.arange(48_000) / 48_000
    tone = np.sin(2 * np.pi * 440 * t)
    out = resample(tone, 48_000, 12_000)
    assert out.shape == (12_000,)
    spectrum = np.abs(np.fft.rfft(out))
    assert np.argmax(spectrum) == 440  # 1 Hz bins at 12 kHz over 1 s


def test_prepare_matches_frame_then_normalize():
    spec = PreprocessSpec(sample_rate_hz=12_000, window=256, hop=128)
    sig = np.random.default_rng(1).normal(size=2000).astype(np.float32)
    np.testing.assert_array_equal(prepare(sig, spec), normalize(frame(sig, 256, 128)))


@pytest.mark.parametrize(
    "field,kwargs",
    [
        ("window", {"window": 4}),
        ("hop", {"hop": 0}),
        ("normalization", {"normalization": "minmax"}),
        ("sample_rate_hz", {"sample_rate_hz": 0}),
    ],
)
def test_spec_rejects_bad_values_naming_the_field(field, kwargs):
    with pytest.raises(ValueError, match=field):
        PreprocessSpec(**kwargs)

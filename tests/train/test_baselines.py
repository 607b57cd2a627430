"""The spectral template baseline: a gain-free log spectrum and a linear model on it."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.signal import butter, sosfilt

from train.baselines import SpectralTemplate, log_spectrum
from train.config import load_config
from train.splits import Split, WindowSet

FS, W = 12_000, 2048
RESONANCES_HZ = (900.0, 2300.0, 4100.0)  # one structural resonance per class


def resonance_windows(label: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n windows of noise ringing in class `label`'s resonance band (600 Hz wide) over a white
    floor, with random gain and offset."""
    centre = RESONANCES_HZ[label]
    sos = butter(2, [centre - 300, centre + 300], "bandpass", fs=FS, output="sos")
    ringing = sosfilt(sos, rng.standard_normal((n, W + 512)), axis=1)[:, 512:]
    ringing /= ringing.std(axis=1, keepdims=True)
    gain = rng.uniform(0.2, 5.0, (n, 1))
    floor = 0.3 * rng.standard_normal((n, W))
    return (gain * (ringing + floor) + rng.normal(0, 1, (n, 1))).astype(np.float32)


def toy_split(per_class: int, seed: int, classes: int = 3) -> Split:
    """Labeled windows of the first `classes` classes; validation and test of all three."""
    rng = np.random.default_rng(seed)

    def windows(n: int, which: range) -> WindowSet:
        x = np.concatenate([resonance_windows(c, n, rng) for c in which])
        y = np.repeat(np.array(list(which)), n)
        return WindowSet(x[:, None, :], y.astype(np.int64))

    return Split(
        ["normal", "inner_race", "outer_race"],
        windows(per_class, range(classes)),
        windows(4, range(3)),
        windows(30, range(3)),
        pool=None,
        description={},
    )  # type: ignore[arg-type]


def test_log_spectrum_peaks_at_the_resonance_and_ignores_gain_and_offset():
    rng = np.random.default_rng(0)
    x = resonance_windows(1, 2, rng)
    view = log_spectrum(x)
    assert view.shape == (2, 512) and view.dtype == np.float32
    band_hz = FS / 2 / 512
    peak_hz = (np.convolve(view[0], np.ones(25) / 25, "same").argmax() + 0.5) * band_hz
    assert abs(peak_hz - RESONANCES_HZ[1]) < 150
    np.testing.assert_allclose(log_spectrum(7.0 * x + 3.0), view, atol=1e-4)
    np.testing.assert_allclose(view.mean(axis=1), 0.0, atol=1e-4)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 4),
    width=st.integers(16, 600),
    bands=st.integers(1, 700),
    scale=st.floats(1e-3, 1e3),
)
def test_log_spectrum_is_finite_and_sized_for_any_window(n, width, bands, scale):
    x = np.random.default_rng(width).standard_normal((n, 1, width)) * scale
    view = log_spectrum(x, bands)
    assert view.shape == (n, min(bands, width // 2)) and np.isfinite(view).all()
    flat = log_spectrum(np.zeros((n, width)), bands)  # a dead sensor: finite, not NaN
    assert np.isfinite(flat).all()


def test_template_names_the_resonance_at_gains_it_never_saw():
    split = toy_split(per_class=5, seed=1)
    cfg = load_config(None, ["seed=1"])
    probs = SpectralTemplate(cfg, split).probabilities(split.test.x)
    assert probs.shape == (90, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    assert (probs.argmax(axis=1) == split.test.y).mean() == 1.0


def test_a_class_without_labels_gets_no_probability():
    split = toy_split(per_class=5, seed=2, classes=2)  # no labeled window of class 2
    probs = SpectralTemplate(load_config(None, []), split).probabilities(split.test.x)
    assert probs.shape == (90, 3) and probs[:, 2].max() < 1e-6
    assert (
        probs[split.test.y < 2].argmax(axis=1).tolist() == split.test.y[split.test.y < 2].tolist()
    )
    with pytest.raises(ValueError):
        SpectralTemplate(load_config(None, []), toy_split(per_class=5, seed=3, classes=1))

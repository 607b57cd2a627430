"""The spectral view (the ranked shape of the log spectrum) and the template fused with the
model's head: the view ignores gain, offset and how deep a resonance is, and survives any window;
the head refuses what it cannot use, and the agent fuses it only while a channel runs on the
factory head."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.signal import butter, sosfilt

from edge_agent.agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.contract.bundle import BundleError, read_manifest, verify
from edge_agent.mqtt.memory import MemoryLink
from edge_agent.physics.pool import PoolGate
from edge_agent.physics.spectral import (
    BOTH,
    RANKED,
    SMOOTH_BANDS,
    UNBOUNDED_MODEL_FLOOR,
    SpectralHead,
    log_spectrum,
    ranked_bands,
    spectral_view,
    template_view,
)
from edge_agent.pipeline.head import softmax
from tests.edge_agent.bundle_fixture import (
    CLASS_NAMES,
    SEVERITY,
    bundle_with,
    simulator_source,
    write_config,
)

FS, W = 12_000, 2048


def resonance_windows(centre_hz: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """n windows of noise ringing in a 600 Hz band at `centre_hz` over a white floor."""
    sos = butter(2, [centre_hz - 300, centre_hz + 300], "bandpass", fs=FS, output="sos")
    ringing = sosfilt(sos, rng.standard_normal((n, W + 512)), axis=1)[:, 512:]
    return ringing / ringing.std(axis=1, keepdims=True) + 0.3 * rng.standard_normal((n, W))


def test_the_view_peaks_at_the_resonance_and_ignores_gain_and_offset() -> None:
    x = resonance_windows(2300.0, 2, np.random.default_rng(0))
    view = log_spectrum(x)
    assert view.shape == (2, 512) and view.dtype == np.float32
    band_hz = FS / 2 / 512
    peak_hz = (np.convolve(view[0], np.ones(25) / 25, "same").argmax() + 0.5) * band_hz
    assert abs(peak_hz - 2300.0) < 150
    np.testing.assert_allclose(log_spectrum(7.0 * x + 3.0), view, atol=1e-4)
    np.testing.assert_allclose(view.mean(axis=1), 0.0, atol=1e-4)


def ringing_at(centre_hz: float, depth: float, phases: np.ndarray) -> np.ndarray:
    """A window whose spectrum is a falling floor with a resonance at `centre_hz`, every level
    `depth` times as far in dB as at depth 1 (random phases, so the floor carries no lines)."""
    f = np.fft.rfftfreq(W, 1 / FS)
    gain = ((1 + 30 * np.exp(-(((f - centre_hz) / 300) ** 2))) / (1 + f / 1000)) ** depth
    return np.fft.irfft(gain * np.exp(1j * phases), W)


def test_the_ranked_view_keeps_where_a_resonance_is_and_drops_how_deep() -> None:
    phases = np.random.default_rng(3).uniform(0, 2 * np.pi, W // 2 + 1)
    shallow, deep = ringing_at(2300.0, 1.0, phases), ringing_at(2300.0, 2.0, phases)
    view = spectral_view(np.stack([shallow, deep]))
    assert view.shape == (2, 512) and view.dtype == np.float32
    assert view.min() >= -0.5 and view.max() <= 0.5
    top = (np.flatnonzero(view[0] > 0.45) + 0.5) * FS / 2 / 512  # the top 5 % of bands
    assert np.all(np.abs(top - 2300.0) < 300)
    np.testing.assert_allclose(spectral_view(7.0 * deep[None] + 3.0), view[1:], atol=1e-6)
    plain = log_spectrum(np.stack([shallow, deep]))
    assert np.abs(plain[0] - plain[1]).max() > 3.0  # the plain spectrum sees the depth
    assert np.abs(view[0] - view[1]).mean() < 0.03  # the ranks barely move (window leakage)
    other = spectral_view(ringing_at(4500.0, 1.0, phases)[None])
    assert np.abs(view[0] - other[0]).mean() > 0.1  # a resonance elsewhere is another view


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 4),
    width=st.integers(16, 600),
    bands=st.integers(1, 700),
    scale=st.floats(1e-3, 1e3),
    broken=st.sampled_from(["none", "flat", "nan", "clipped"]),
)
def test_any_window_gives_a_finite_view_of_the_right_size(n, width, bands, scale, broken) -> None:
    x = np.random.default_rng(width).standard_normal((n, 1, width)) * scale
    if broken == "flat":  # a dead sensor
        x[:] = 0.0
    elif broken == "nan":
        x[0, 0, width // 2] = np.nan
    elif broken == "clipped":
        x = np.clip(x, -0.1 * scale, 0.1 * scale)
    size = (n, min(bands, width // 2))
    for view in (log_spectrum(x, bands), spectral_view(x, bands)):
        assert view.shape == size and np.isfinite(view).all()
    for none in (log_spectrum(x[:0], bands), spectral_view(x[:0], bands)):
        assert none.shape == (0, size[1])
    ranked = spectral_view(x, bands)
    assert np.all(np.abs(ranked) <= 0.5)
    if broken == "flat":  # no vibration, no shape: every band ties
        assert not ranked.any()


TIES = st.sampled_from([-2.0, -0.5, 0.0, 0.5, 3.0])  # repeated levels make tied ranks


@settings(max_examples=50, deadline=None)
@given(
    levels=st.integers(1, 40).flatmap(
        lambda n: st.lists(
            st.lists(TIES | st.floats(-50, 50), min_size=n, max_size=n), min_size=1, max_size=4
        )
    )
)
def test_ranks_are_scipys_mean_ranks_ties_or_not(levels) -> None:
    from scipy.ndimage import uniform_filter1d
    from scipy.stats import rankdata

    level = np.array(levels)
    n = level.shape[1]
    smooth = uniform_filter1d(level, min(SMOOTH_BANDS, n), axis=1, mode="nearest")
    expected = (rankdata(smooth, axis=1) - (n + 1) / 2) / n
    np.testing.assert_allclose(ranked_bands(level), expected, atol=1e-7)


def template(bands: int = 8, classes: int = 3, **fields) -> SpectralHead:
    rng = np.random.default_rng(1)
    return SpectralHead(
        **{
            "mean": np.zeros(bands),
            "scale": np.ones(bands),
            "weights": rng.normal(size=(classes, bands)),
            "bias": np.zeros(classes),
            "model_weight": 0.5,
            "temperature": 2.0,
            **fields,
        }
    )


def test_fusion_weighs_the_model_against_the_template() -> None:
    x = np.random.default_rng(2).standard_normal((5, 16))
    head = template()
    z = head.logits(x)
    model = np.full((5, 3), 0.05)
    model[:, 2] = 0.9
    log_p = np.log(model)
    expected = np.exp((0.5 * log_p + z) / 2.0)
    np.testing.assert_allclose(head.fuse(model, x), expected / expected.sum(1, keepdims=True))
    alone = replace(head, model_weight=0.0)
    np.testing.assert_allclose(alone.fuse(model, x), head.alone(x))
    np.testing.assert_allclose(alone.fuse(model, x), alone.fuse(np.full((5, 3), 1 / 3), x))
    deaf = replace(head, weights=np.zeros((3, 8)), model_weight=1.0, temperature=1.0)
    np.testing.assert_allclose(deaf.fuse(model, x), model)  # a template with no opinion


def test_the_model_floor_bounds_how_far_a_sure_model_votes_a_class_down() -> None:
    """A template sure of class 0 by 6 nats; a model sure of class 1 (p 1e-9 for class 0)."""
    head = template(bands=4, classes=2, weights=np.zeros((2, 4)), bias=np.array([6.0, 0.0]))
    head = replace(head, model_weight=0.5, temperature=1.0)
    x = np.random.default_rng(4).standard_normal((3, 8))
    sure_model = np.tile([1e-9, 1 - 1e-9], (3, 1))
    assert (head.fuse(sure_model, x).argmax(1) == 1).all()  # unbounded: 0.5 * ln 1e-9 = -10.4
    bounded = replace(head, model_floor=1e-3)  # at most 0.5 * ln 1e-3 = -3.5 nats
    fused = bounded.fuse(sure_model, x)
    assert (fused.argmax(1) == 0).all()
    np.testing.assert_allclose(fused[:, 0], 1 / (1 + np.exp(-6 + 0.5 * np.log(1e3))), rtol=1e-6)
    hesitant = replace(bounded, bias=np.array([1.0, 0.0]))  # 1 nat: the model tips it
    assert (hesitant.fuse(sure_model, x).argmax(1) == 1).all()


def first_band_gate(bands: int, radius: float = 1.0) -> PoolGate:
    """A gate whose pool's log spectra sit at 0 +- 0.1 on the first band (one component)."""
    points = np.linspace(-0.1, 0.1, 11)[:, None]
    return PoolGate(np.zeros(bands), np.ones(bands), np.eye(1, bands), points, radius, 3)


def test_the_model_votes_only_on_windows_like_the_pool() -> None:
    """Windows whose first log-spectrum band is near 0 are like the pool; elsewhere the template
    decides alone, at its own temperature."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((40, 16))
    head = replace(template(), model_weight=1.0, template_temperature=0.5)
    level = log_spectrum(x, head.bands)
    gated = replace(head, pool=first_band_gate(head.bands, radius=0.3))
    near = gated.near_pool(level)
    assert near.any() and not near.all()
    third = np.abs(level[:, 0]) - 0.06  # outside the pool: its 3rd-nearest point is at 0.06
    np.testing.assert_array_equal(near, third <= 0.3)
    model = softmax(rng.normal(size=(40, 3)) * 3)
    fused = gated.fuse(model, x)
    np.testing.assert_allclose(fused[near], head.fuse(model, x)[near])
    np.testing.assert_allclose(fused[~near], softmax(head.logits(x)[~near] / 0.5))
    np.testing.assert_allclose(gated.alone(x), softmax(head.logits(x) / 0.5))
    np.testing.assert_allclose(gated.fuse_spectra(model, level), fused)
    assert replace(head, template_temperature=None).alone_temperature == 2.0
    with pytest.raises(ValueError, match="pool gate reads 4 bands"):
        replace(head, pool=first_band_gate(4))


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"bias": np.zeros(2)}, "bias"),
        ({"mean": np.zeros(7)}, "mean"),
        ({"scale": np.zeros(8)}, "scale"),
        ({"weights": np.full((3, 8), np.nan)}, "finite"),
        ({"model_weight": 1.5}, "model_weight"),
        ({"temperature": 0.0}, "temperature"),
        ({"model_floor": 0.0}, "model_floor"),
        ({"model_floor": 1.0}, "model_floor"),
        ({"model_floor": np.nan}, "model_floor"),
        ({"template_temperature": 0.0}, "template_temperature"),
    ],
)
def test_a_malformed_template_is_refused(fields, match) -> None:
    with pytest.raises(ValueError, match=match):
        template(**fields)


def test_a_template_on_both_views_reads_the_log_spectrum_then_its_ranks() -> None:
    x = np.random.default_rng(3).standard_normal((4, 64))
    both = template_view(x, BOTH, 8)
    np.testing.assert_array_equal(both, np.hstack([log_spectrum(x, 8), spectral_view(x, 8)]))
    np.testing.assert_array_equal(template_view(x, RANKED, 8), spectral_view(x, 8))
    head = template(bands=16, features=BOTH)  # 16 values: 8 bands, twice
    assert head.bands == 8
    np.testing.assert_allclose(head.logits(x), head.view_logits(both))
    back = SpectralHead.from_dict(json.loads(json.dumps(head.to_dict())))
    assert back.features == BOTH and back.bands == 8
    with pytest.raises(ValueError, match="even number"):
        template(bands=15, features=BOTH)
    with pytest.raises(ValueError, match="cannot compute"):
        template(features="mel-v1")


def test_a_window_too_short_for_the_bands_is_an_error() -> None:
    with pytest.raises(ValueError, match="bands"):
        template(bands=8).logits(np.zeros((2, 10)))  # 5 bins: 5 bands at most


def test_the_template_round_trips_and_refuses_features_it_cannot_compute() -> None:
    head = template(model_floor=1e-3, template_temperature=1.5, pool=first_band_gate(8))
    back = SpectralHead.from_dict(json.loads(json.dumps(head.to_dict())))
    assert np.array_equal(back.weights, head.weights)
    assert (back.model_weight, back.temperature) == (0.5, 2.0)
    assert (back.model_floor, back.template_temperature) == (1e-3, 1.5)
    assert back.pool is not None and np.array_equal(back.pool.points, head.pool.points)
    older = {k: v for k, v in head.to_dict().items() if k not in ("model_floor", "pool")}
    older.pop("template_temperature")
    before = SpectralHead.from_dict(older)  # as bundles wrote it before the gate
    assert before.model_floor == UNBOUNDED_MODEL_FLOOR and before.pool is None
    assert before.alone_temperature == before.temperature == 2.0
    with pytest.raises(ValueError, match="cannot compute"):
        SpectralHead.from_dict({**head.to_dict(), "features": "log-spectrum-v1"})


# -- in a bundle, on the agent -----------------------------------------------------------------


def outer_race_template(bands: int = 64, features: str = RANKED) -> dict:
    """A template that says outer race whatever the window (bias only): who listens is visible."""
    bias = np.full(len(CLASS_NAMES), -30.0)
    bias[CLASS_NAMES.index("outer_race")] = 30.0
    width = bands * (2 if features == BOTH else 1)
    zeros = np.zeros((len(CLASS_NAMES), width))
    head = template(width, len(CLASS_NAMES), weights=zeros, features=features)
    return replace(head, bias=bias, model_weight=0.25, temperature=1.0).to_dict()


@pytest.mark.parametrize(
    ("spectral", "match"),
    [
        (template(classes=5).to_dict(), "5 classes"),
        (template(bands=600, classes=3).to_dict(), "600 bands"),  # the window has 512 bins
        ({**template().to_dict(), "features": "mel-v1"}, "features"),
    ],
)
def test_a_bundle_template_the_agent_cannot_use_is_refused(
    agent_bundle, tmp_path, spectral, match
) -> None:
    with pytest.raises(BundleError, match=match):
        verify(bundle_with(agent_bundle, tmp_path / "tiny-spectral", spectral=spectral))


def push_windows(agent: Agent, n: int) -> None:
    goal = agent.windows_total + n
    while agent.windows_total < goal:
        agent.channels[0].buffer.push(agent.source.read(0.5))
        agent._drain(None)


@pytest.mark.parametrize("features", [RANKED, BOTH])
def test_the_agent_fuses_the_template_only_on_the_factory_head(
    agent_bundle, tmp_path, features
) -> None:
    spectral = outer_race_template(features=features)
    folder = bundle_with(agent_bundle, tmp_path / "tiny-spectral", spectral=spectral)
    assert read_manifest(folder).spectral is not None
    source = simulator_source([{"at_s": 0.0, "fault": "normal", "severity": SEVERITY}])
    agent = Agent(load_config(write_config(tmp_path / "dev", folder, 1, source=source)))
    agent.link = MemoryLink()
    agent.source.start()
    with agent:
        channel = agent.channels[0]
        push_windows(agent, 30)
        assert channel.factory_head and channel.decisions.state == "outer_race"
        assert channel.template_source == "bundle"
        # a head refitted on the device describes its own machine: the template stays out
        channel.head = replace(channel.head, b2=channel.head.b2 + 1e-6)
        channel.decisions.reset()
        push_windows(agent, 30)
        assert not channel.factory_head and channel.decisions.state == "normal"
        assert channel.template_source is None
        # a template fitted on this device's labels travels with its head and is fused again
        own = SpectralHead.from_dict({**outer_race_template(), "model_weight": 1.0})
        channel.head = replace(channel.head, template=own)
        channel.decisions.reset()
        push_windows(agent, 30)
        assert not channel.factory_head and channel.decisions.state == "outer_race"
        assert channel.template_source == "device"


@pytest.mark.parametrize("admits", [True, False])
def test_the_agent_lets_the_model_vote_only_on_windows_like_the_pool(
    agent_bundle, tmp_path, admits
) -> None:
    """A template with no opinion and the model at full weight: where the gate admits the
    windows the model decides (normal); where it admits none, the undecided template does."""
    bands, n = 64, len(CLASS_NAMES)
    radius = 1e6 if admits else 0.0
    points = np.full((6, 2), 1e3)  # a pool far from any window, within reach only of 1e6
    gate = PoolGate(np.zeros(bands), np.ones(bands), np.eye(2, bands), points, radius, 5)
    silent = template(bands, n, weights=np.zeros((n, bands)))
    spectral = replace(silent, model_weight=1.0, temperature=1.0, pool=gate).to_dict()
    folder = bundle_with(agent_bundle, tmp_path / "gated", spectral=spectral)
    source = simulator_source([{"at_s": 0.0, "fault": "normal", "severity": SEVERITY}])
    agent = Agent(load_config(write_config(tmp_path / "dev", folder, 1, source=source)))
    agent.link = MemoryLink()
    agent.source.start()
    with agent:
        channel, outcomes = agent.channels[0], []
        decide = channel.decide

        def recorded(*args):
            outcomes.extend(decided := decide(*args))
            return decided

        channel.decide = recorded
        push_windows(agent, 20)
    probs = np.array([o.probs for o in outcomes if o.probs is not None])
    assert len(probs) >= 20
    if admits:
        assert (probs.argmax(1) == CLASS_NAMES.index("normal")).mean() > 0.9
    else:
        np.testing.assert_allclose(probs, 1 / n)

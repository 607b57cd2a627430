"""Batched augmentations: shapes, determinism, probabilities and the physical effect of each."""

from __future__ import annotations

import math
from itertools import groupby

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.signal import hilbert

from train.augment import (
    AUGMENTATIONS,
    DEFAULT_AUGMENTATIONS,
    Augmentation,
    Blockout,
    CircularShift,
    CropResize,
    Flip,
    FrequencyMask,
    GaussianNoise,
    RandomGain,
    RandomSubset,
    ResonanceShift,
    Smooth,
    SpeedChange,
    TimeMask,
    TimeWarp,
    TransferFunction,
    TwoViews,
    build_pipeline,
)

SR = 12_000
NAMES = list(AUGMENTATIONS)


def make(name: str, **kwargs) -> Augmentation:
    cls = AUGMENTATIONS[name]
    return cls(sample_rate_hz=SR, **kwargs) if cls is TimeMask else cls(**kwargs)


def batch(b: int = 16, t: int = 1024, seed: int = 0) -> torch.Tensor:
    # Offset keeps samples away from 0, so zeroed samples are only the augmentation's doing.
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, t, generator=gen) + 3.0


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def dominant_hz(x: torch.Tensor, sr: int = SR) -> torch.Tensor:
    spectrum = torch.fft.rfft(x[:, 0] * torch.hann_window(x.shape[-1]), dim=-1).abs()
    return spectrum[:, 1:].argmax(dim=-1).add(1).float() * sr / x.shape[-1]


@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_and_determinism(name: str) -> None:
    x, aug = batch(), make(name, p=0.7)
    a, b = aug(x, gen(5)), aug(x, gen(5))
    assert a.shape == x.shape and a.dtype == torch.float32
    assert torch.equal(a, b), "the same seed must give the same view"
    assert not torch.equal(a, aug(x, gen(6))), "another seed should give another view"
    assert torch.isfinite(a).all()


@pytest.mark.parametrize("name", NAMES)
def test_p0_is_identity_and_p1_changes_every_sample(name: str) -> None:
    x = batch()
    assert torch.equal(make(name, p=0.0)(x, gen()), x)
    y = make(name, p=1.0)(x, gen())
    changed = (y - x).abs().amax(dim=(1, 2)) > 1e-4
    assert changed.all(), f"{name} left samples {(~changed).nonzero().flatten().tolist()} unchanged"


@pytest.mark.parametrize("name", NAMES)
def test_input_is_not_modified(name: str) -> None:
    x = batch()
    before = x.clone()
    make(name, p=1.0)(x, gen())
    assert torch.equal(x, before)


def test_apply_touches_only_masked_samples() -> None:
    x = batch(b=6)
    mask = torch.tensor([True, False, True, False, False, True])
    y = GaussianNoise().apply(x, gen(), mask)
    assert torch.equal(y[~mask], x[~mask])
    assert ((y[mask] - x[mask]).abs().amax(dim=(1, 2)) > 0).all()


def test_random_gain_stays_within_bounds() -> None:
    x = batch(b=64)
    y = RandomGain(low=0.8, high=1.2, p=1.0)(x, gen())
    ratio = y.std(dim=-1) / x.std(dim=-1)
    assert ratio.min() >= 0.8 - 1e-5 and ratio.max() <= 1.2 + 1e-5
    assert ratio.max() - ratio.min() > 0.2, "gains should spread over the range"


def test_gaussian_noise_hits_the_requested_snr() -> None:
    x = torch.randn(32, 1, 4096, generator=gen(1)) * torch.linspace(0.1, 10, 32).view(32, 1, 1)
    y = GaussianNoise(snr_db_low=20, snr_db_high=30, p=1.0)(x, gen())
    snr_db = 10 * torch.log10(x.pow(2).mean(-1) / (y - x).pow(2).mean(-1))
    assert snr_db.min() > 20 - 0.5 and snr_db.max() < 30 + 0.5


def test_circular_shift_equals_torch_roll_per_sample() -> None:
    x = torch.randn(8, 1, 1024, generator=gen(2))
    y = CircularShift(max_shift=500, p=1.0)(x, gen())
    for i in range(len(x)):
        shifts = [s for s in range(-500, 501) if torch.equal(torch.roll(x[i], s, dims=-1), y[i])]
        assert len(shifts) == 1 and shifts[0] != 0, f"sample {i}: not a roll by 1..500 ({shifts})"


def zero_runs(row: torch.Tensor) -> list[int]:
    """Lengths of runs of exact zeros in a 1-D tensor."""
    return [len(list(run)) for is_zero, run in groupby((row == 0).tolist()) if is_zero]


def test_time_mask_zeros_one_chunk_of_10_to_50_ms() -> None:
    x = batch(b=32, t=2048)
    y = TimeMask(sample_rate_hz=1000, max_chunks=1, min_ms=10, max_ms=50, p=1.0)(x, gen())
    lengths = [zero_runs(row) for row in y[:, 0]]
    assert all(len(runs) == 1 and 10 <= runs[0] <= 50 for runs in lengths), lengths
    assert len({runs[0] for runs in lengths}) > 5, "chunk lengths should vary"


def test_time_mask_zeros_up_to_max_chunks() -> None:
    x = batch(b=32, t=4096)
    y = TimeMask(sample_rate_hz=1000, max_chunks=3, min_ms=10, max_ms=20, p=1.0)(x, gen())
    counts = [len(zero_runs(row)) for row in y[:, 0]]
    assert min(counts) >= 1 and max(counts) <= 3 and len(set(counts)) > 1, counts


def test_blockout_zeros_one_block_of_the_right_fraction() -> None:
    y = Blockout(min_fraction=0.1, max_fraction=0.2, p=1.0)(batch(b=16, t=1000), gen())
    for row in y[:, 0]:
        (run,) = zero_runs(row)
        assert 100 <= run <= 200


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_change_scales_the_dominant_frequency(factor: float) -> None:
    t = torch.arange(4096) / SR
    f0 = 300 * SR / 4096  # exactly on an FFT bin
    x = torch.sin(2 * math.pi * f0 * t).repeat(4, 1, 1)
    y = SpeedChange(low=factor, high=factor, p=1.0)(x, gen())
    bin_hz = SR / 4096
    assert torch.allclose(dominant_hz(y), torch.full((4,), f0 * factor), atol=1.5 * bin_hz)


def test_crop_resize_lowers_the_dominant_frequency() -> None:
    t = torch.arange(4096) / SR
    x = torch.sin(2 * math.pi * 1000 * t).repeat(8, 1, 1)
    y = CropResize(min_scale=0.8, max_scale=0.9, p=1.0)(x, gen())
    ratio = dominant_hz(y) / dominant_hz(x)
    assert ratio.min() > 0.8 - 0.01 and ratio.max() < 0.9 + 0.01


def test_time_warp_keeps_the_window_ends() -> None:
    x = batch()
    y = TimeWarp(sigma=0.3, p=1.0)(x, gen())
    assert torch.allclose(y[..., 0], x[..., 0]) and torch.allclose(
        y[..., -1], x[..., -1], atol=1e-4
    )


def test_flip_negates_and_optionally_reverses() -> None:
    x = batch()
    assert torch.equal(Flip(p=1.0)(x, gen()), -x)
    assert torch.equal(Flip(reverse_time=True, p=1.0)(x, gen()), -x.flip(-1))


def test_smooth_removes_high_frequencies() -> None:
    x = torch.randn(8, 1, 2048, generator=gen(3))
    y = Smooth(min_width=4, max_width=8, p=1.0)(x, gen())
    high = lambda z: torch.fft.rfft(z, dim=-1).abs()[..., 700:].pow(2).sum()  # noqa: E731
    assert high(y) < 0.2 * high(x)


def test_frequency_mask_removes_one_narrow_band() -> None:
    x = torch.randn(8, 1, 2048, generator=gen(1))
    y = FrequencyMask(n_fft=256, hop_length=64, min_bins=2, max_bins=5, p=1.0)(x, gen())
    window = torch.hann_window(256)
    power = lambda z: torch.stft(z[:, 0], 256, 64, window=window, return_complex=True).abs().pow(2)  # noqa: E731
    ratio = power(y).mean(-1) / power(x).mean(-1)  # (B, F)
    for row in ratio:
        low = (row < 0.5).nonzero().flatten()
        assert 1 <= len(low) <= 5 and (low.diff() == 1).all(), low.tolist()
        assert row.min() < 0.2


def am_tone(carrier_hz: float, rate_hz: float, t: int = 2048) -> torch.Tensor:
    """A resonance at carrier_hz struck rate_hz times a second: (1, 1, t)."""
    time = torch.arange(t) / SR
    envelope = 1 + 0.8 * torch.cos(2 * math.pi * rate_hz * time)
    return (envelope * torch.sin(2 * math.pi * carrier_hz * time)).view(1, 1, t)


def test_resonance_shift_moves_the_resonance_and_keeps_the_envelope() -> None:
    x = am_tone(3000.0, 160.0).repeat(32, 1, 1)
    y = ResonanceShift(max_shift_hz=1000.0, p=1.0)(x, gen(2))
    moved = dominant_hz(y) - 3000.0
    assert (moved.abs() > 0).all() and (moved.abs() <= 1000.0 + SR / 2048).all()
    assert (moved > 0).any() and (moved < 0).any()
    edge = slice(100, -100)  # the analytic signal's ends carry the FFT's wrap-around
    before = torch.tensor(abs(hilbert(x[0, 0].numpy())))[edge]
    for row in y[:, 0]:
        after = torch.tensor(abs(hilbert(row.numpy())))[edge]
        assert (after - before).abs().max() < 0.01 * before.max()


def test_transfer_function_reshapes_the_spectrum_smoothly_and_keeps_its_phase() -> None:
    x = torch.randn(16, 1, 2048, generator=gen(3))
    y = TransferFunction(sigma_db=6.0, knots=8, p=1.0)(x, gen(4))
    before, after = torch.fft.rfft(x, dim=-1), torch.fft.rfft(y, dim=-1)
    db = 20 * torch.log10(after.abs() / before.abs())[:, 0, 1:-1]
    assert db.abs().amax(dim=-1).min() > 1.0, "every window's spectrum is reshaped"
    assert db.abs().max() < 6.0 * 6, "no gain beyond six sigma"
    assert db.diff(dim=-1).abs().max() < 0.5, "the gain is smooth over frequency (dB per bin)"
    phase = torch.angle(after * before.conj())[:, 0, 1:-1]
    assert phase.abs().max() < 1e-3


def test_random_subset_gives_each_sample_k_min_to_k_max_augmentations() -> None:
    seen: list[torch.Tensor] = []

    class Spy(Augmentation):
        def apply(self, x, gen, mask):
            seen.append(mask.clone())
            return x

    subset = RandomSubset([Spy() for _ in range(6)], k_min=2, k_max=3)
    subset(batch(b=200), gen())
    counts = torch.stack(seen, dim=1).sum(dim=1)
    assert counts.min() == 2 and counts.max() == 3
    assert torch.stack(seen).sum(dim=1).min() > 30, "every augmentation should get used"


def test_default_pipeline_and_two_views() -> None:
    pipe = build_pipeline(None, sample_rate_hz=SR)
    assert [type(a) for a in pipe.augs] == [AUGMENTATIONS[n] for n in DEFAULT_AUGMENTATIONS]
    x = batch(b=32, t=2048)
    v0, v1 = TwoViews(pipe)(x, gen())
    assert v0.shape == v1.shape == x.shape
    assert ((v0 - v1).abs().amax(dim=(1, 2)) > 0).all(), "the two views must differ"


def test_build_pipeline_applies_overrides_and_rejects_mistakes() -> None:
    pipe = build_pipeline(["time_mask", "gain"], SR, time_mask={"max_chunks": 2})
    assert pipe.augs[0].max_chunks == 2 and pipe.augs[0].sample_rate_hz == SR
    with pytest.raises(ValueError, match=r"'tiem_mask'.*valid: time_mask, gain"):
        build_pipeline(["tiem_mask"], SR)
    with pytest.raises(ValueError, match=r"gain takes no argument \['gain'\]"):
        build_pipeline(["gain", "flip"], SR, gain={"gain": 2})
    with pytest.raises(ValueError, match="not in the pipeline"):
        build_pipeline(["flip", "smooth"], SR, gain={"low": 0.9})
    with pytest.raises(ValueError, match="k_min=3"):
        build_pipeline(["flip", "smooth"], SR, k_min=3)
    assert build_pipeline(["flip", "smooth"], SR, k_max=5).k_max == 2


@pytest.mark.parametrize(
    ("build", "value"),
    [
        (lambda: TimeMask(sample_rate_hz=0), "sample_rate_hz=0"),
        (lambda: TimeMask(SR, min_ms=60, max_ms=50), "min_ms=60"),
        (lambda: RandomGain(low=-1.0), "low=-1.0"),
        (lambda: GaussianNoise(snr_db_low=40, snr_db_high=30), "snr_db_low=40"),
        (lambda: CircularShift(max_shift=0), "max_shift=0"),
        (lambda: FrequencyMask(min_bins=7, max_bins=5), "min_bins=7"),
        (lambda: SpeedChange(low=1.2, high=1.1), "low=1.2"),
        (lambda: Blockout(max_fraction=1.5), "max_fraction=1.5"),
        (lambda: CropResize(max_scale=1.3), "max_scale=1.3"),
        (lambda: Smooth(min_width=1), "min_width=1"),
        (lambda: TimeWarp(sigma=0.0), "sigma=0.0"),
        (lambda: Flip(p=1.5), "p=1.5"),
        (lambda: TransferFunction(knots=0), "knots=0"),
        (lambda: ResonanceShift(max_shift_hz=7000.0), "max_shift_hz=7000.0"),
    ],
)
def test_invalid_arguments_name_the_value(build, value: str) -> None:
    with pytest.raises(ValueError, match=value.replace(".", r"\.")):
        build()


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_any_probability_outside_0_1_is_rejected(p: float) -> None:
    if 0 <= p <= 1:
        assert RandomGain(p=p).p == p
    else:
        with pytest.raises(ValueError, match="p="):
            RandomGain(p=p)


@given(st.floats(-10, 10), st.floats(-10, 10))
def test_speed_change_bounds_validation(low: float, high: float) -> None:
    if 0 < low <= high:
        SpeedChange(low=low, high=high)
    else:
        with pytest.raises(ValueError, match=f"low={low!r}"):
            SpeedChange(low=low, high=high)


def test_bad_input_shape_is_reported() -> None:
    with pytest.raises(ValueError, match=r"\(batch, channels, samples\)"):
        RandomGain(p=1.0)(torch.zeros(4, 128), gen())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_default_pipeline_runs_on_cuda() -> None:
    x = batch(b=32, t=2048).cuda()
    pipe = build_pipeline(None, SR)
    a = pipe(x, torch.Generator(device="cuda").manual_seed(0))
    b = pipe(x, torch.Generator(device="cuda").manual_seed(0))
    assert a.device == x.device and a.shape == x.shape and torch.equal(a, b)

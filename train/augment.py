"""Batched vibration augmentations for contrastive pretraining.

Every augmentation takes a whole batch `x: float32 (batch, channels, samples)` on any device and
an explicit `torch.Generator` on that device, so a seed reproduces a view exactly. There is no
per-sample Python loop: random parameters are drawn per sample as tensors.

- `aug(x, gen)` applies the augmentation to each sample with probability `p`.
- `aug.apply(x, gen, mask)` applies it to exactly the samples where `mask: bool (batch,)` is
  True; `RandomSubset` uses this to give every sample its own 2-3 augmentations. Only the
  chosen samples are computed, so a 14-augmentation pipeline costs about 3 augmentations.

`build_pipeline(names, sample_rate_hz)` builds the pretraining pipeline from registry names.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F


def _check_p(owner: object, p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{type(owner).__name__} needs 0 <= p <= 1, got p={p}")
    return float(p)


def _uniform(
    shape: tuple[int, ...], low: float, high: float, like: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """Uniform floats in [low, high) on `like`'s device (float32)."""
    return torch.rand(shape, device=like.device, generator=gen) * (high - low) + low


def _randint(
    shape: tuple[int, ...], low: int, high: int, like: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """Uniform integers in [low, high] (inclusive) on `like`'s device."""
    return torch.randint(low, high + 1, shape, device=like.device, generator=gen)


def _block_mask(x: torch.Tensor, lengths: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """bool (n, 1, T): True inside one block per (sample, k) of `lengths: (n, K, 1)` samples."""
    t = x.shape[-1]
    lengths = lengths.clamp(0, t)  # a length of 0 is no block
    starts = (torch.rand(lengths.shape, device=x.device, generator=gen) * (t - lengths + 1)).long()
    pos = torch.arange(t, device=x.device)  # (T,)
    inside = (pos >= starts) & (pos < starts + lengths)  # (n, K, T)
    return inside.any(dim=1, keepdim=True)


def _sample_at(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Linearly interpolate x (n, C, T) at float positions pos (n, 1, T').

    Positions outside [0, T-1] are reflected at the window edges (the signal is mirrored).
    """
    t = x.shape[-1]
    period = 2 * (t - 1)
    pos = torch.remainder(pos, period)
    pos = torch.where(pos > t - 1, period - pos, pos)
    left = pos.floor().long().clamp(0, t - 2)
    frac = (pos - left).to(x.dtype)
    left = left.expand(x.shape[0], x.shape[1], -1)
    a, b = x.gather(-1, left), x.gather(-1, left + 1)
    return a + frac * (b - a)


def _stretch(x: torch.Tensor, factor: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Play each window `factor` (n, 1, 1) times as fast, keeping T samples.

    factor < 1 reads a random shorter segment and stretches it; factor > 1 reads the whole window
    faster and mirrors at the end for the missing samples.
    """
    t = x.shape[-1]
    span = (t - 1) * factor
    start = torch.rand(factor.shape, device=x.device, generator=gen) * (t - 1 - span).clamp_min(0)
    pos = start + torch.arange(t, device=x.device, dtype=torch.float32) * factor
    return _sample_at(x, pos)


def _smooth_curve(
    x: torch.Tensor, knots: int, sigma: float, gen: torch.Generator, length: int | None = None
) -> torch.Tensor:
    """(n, 1, length) smooth random curve around 1 (length: the window's samples by default):
    N(1, sigma) at knots+2 points, bicubic between."""
    n, t = x.shape[0], x.shape[-1] if length is None else length
    values = 1 + sigma * torch.randn((n, 1, 1, knots + 2), device=x.device, generator=gen)
    curve = F.interpolate(values, size=(1, t), mode="bicubic", align_corners=True)
    return curve.reshape(n, 1, t)


class Augmentation:
    """Base class: `__call__` draws the per-sample mask from `p`, `apply` transforms masked samples.

    Subclasses implement `transform(x, gen)`, which changes every sample it is given.
    """

    p: float = 0.5

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        mask = torch.rand(x.shape[0], device=x.device, generator=gen) < self.p
        return self.apply(x, gen, mask)

    def apply(self, x: torch.Tensor, gen: torch.Generator, mask: torch.Tensor) -> torch.Tensor:
        """Transform the samples where mask (batch,) is True; the others are returned unchanged."""
        if x.ndim != 3 or not x.is_floating_point():
            raise ValueError(
                f"{type(self).__name__} needs a float tensor (batch, channels, samples), "
                f"got {x.dtype} {tuple(x.shape)}"
            )
        if mask.shape != (x.shape[0],):
            raise ValueError(f"mask must have shape ({x.shape[0]},), got {tuple(mask.shape)}")
        idx = mask.nonzero().squeeze(1)
        if idx.numel() == 0:
            return x
        if idx.numel() == x.shape[0]:
            return self.transform(x, gen)
        return x.index_copy(0, idx, self.transform(x.index_select(0, idx), gen))

    def transform(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class TimeMask(Augmentation):
    """Zero 1..max_chunks short chunks (min_ms..max_ms each), as sensor dropouts or ADC glitches.

    Input/output: float32 (batch, channels, samples), on any device.
    """

    def __init__(
        self,
        sample_rate_hz: int,
        max_chunks: int = 3,
        min_ms: float = 10.0,
        max_ms: float = 50.0,
        p: float = 0.5,
    ) -> None:
        if sample_rate_hz <= 0:
            raise ValueError(f"TimeMask needs sample_rate_hz > 0, got {sample_rate_hz=}")
        if max_chunks < 1:
            raise ValueError(f"TimeMask needs max_chunks >= 1, got {max_chunks=}")
        if not 0 < min_ms <= max_ms:
            raise ValueError(f"TimeMask needs 0 < min_ms <= max_ms, got {min_ms=}, {max_ms=}")
        self.sample_rate_hz, self.max_chunks = sample_rate_hz, max_chunks
        self.min_ms, self.max_ms, self.p = min_ms, max_ms, _check_p(self, p)
        self.min_len = max(1, round(min_ms * sample_rate_hz / 1000))
        self.max_len = max(self.min_len, round(max_ms * sample_rate_hz / 1000))

    def transform(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, k = x.shape[0], self.max_chunks
        lengths = _randint((n, k, 1), self.min_len, self.max_len, x, gen)
        count = _randint((n, 1, 1), 1, k, x, gen)
        lengths = torch.where(torch.arange(k, device=x.device).view(1, k, 1) < count, lengths, 0)
        return x.masked_fill(_block_mask(x, lengths, gen), 0.0)


class RandomGain(Augmentation):
    """Scale amplitude per window, as a change of sensor sensitivity or mounting would."""

    def __init__(self, low: float = 0.8, high: float = 1.2, p: float = 0.8) -> None:
        if not 0 < low <= high:
            raise ValueError(f"RandomGain needs 0 < low <= high, got {low=}, {high=}")
        self.low, self.high, self.p = low, high, _check_p(self, p)

    def transform(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return x * _uniform((x.shape[0], 1, 1), self.low, self.high, x, gen).to(x.dtype)


class GaussianNoise(Augmentation):
    """Add white noise at an SNR of snr_db_low..snr_db_high relative to each window's power,
    as the electrical noise floor of a cheaper sensor or a longer cable would."""

    def __init__(self, snr_db_low: float = 20.0, snr_db_high: float = 30.0, p: float = 0.5) -> None:
        if not snr_db_low <= snr_db_high:
            raise ValueError(
                f"GaussianNoise needs snr_db_low <= snr_db_high, got {snr_db_low=}, {snr_db_high=}"
            )
        self.snr_db_low, self.snr_db_high, self.p = snr_db_low, snr_db_high, _check_p(self, p)

    def transform(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        power = x.pow(2).mean(dim=-1, keepdim=True)  # (n, C, 1)
        snr_db = _uniform((x.shape[0], 1, 1), self.snr_db_low, self.snr_db_high, x, gen)
        std = (power / 10 ** (snr_db / 10)).sqrt().to(x.dtype)
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=gen)
        return x + noise * std


class CircularShift(Augmentation):
    """Roll each window by 1..max_shift samples either way (torch.roll semantics), as a window
    cut at another moment of the shaft revolution would be."""

    def __init__(self, max_shift: int = 500, p: float = 0.5) -> None:
        if max_shift < 1:
            raise ValueError(f"CircularShift needs max_shift >= 1, got {max_shift=}")
        self.max_shift, self.p = max_shift, _check_p(self, p)

    def transform(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, c, t = x.shape
        sign = _randint((n, 1, 1), 0, 1, x, gen) * 2 - 1
        shift = sign * _randint((n, 1, 1), 1, self.max_shift, x, gen)
        index = torch.remainder(torch.arange(t, device=x.device) - shift, t)  # out[t] = x[t - s]
        return x.gather(-1, index.expand(n, c, t))


class FrequencyMask(Augmentation):
    """Zero min_bins..max_bins contiguous STFT bins per window (torch.stft -> istft, same length),
    as a missing resonance or a notch in the transmission path would."""

    def __init__(
        self,
        n_fft: int = 256,
        hop_length: int = 64,
        min_bins: int = 2,
        max_bins: int = 5,
        p: float = 0.5,
    ) -> None:
        if n_fft < 4 or not 0 < hop_length <= n_fft // 2:
            raise ValueError(
                f"FrequencyMask needs n_fft >= 4 and 0 < hop_length <= n_fft // 2, "
                f"got {n_fft=}, {hop_length=}"
            )
        if not 1 <= min_bins <= max_bins <= n_fft // 2 + 1:
            raise ValueError(
                f"FrequencyMask needs 1 <= min_bins <= max_bins <= n_fft // 2 + 1, "
                f"got {min_bins=}, {max_bins=}"
            )
        self.n_fft, self.hop_length = n_fft, hop_length
        self.min_bins, self.max_bins, self.p = min_bins, max_bins, _check_p(self, p)

    def transform(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, c, t = x.shape
        if t <= self.n_fft:
            raise ValueError(
                f"FrequencyMask(n_fft={self.n_fft}) needs windows longer than n_fft, got {t}"
            )
        window = torch.hann_window(self.n_fft, device=x.device, dtype=x.dtype)
        stft = {"n_fft": self.n_fft, "hop_length": self.hop_length, "window": window}
        spec = torch.stft(x.reshape(n * c, t), **stft, return_complex=True)
        bins = spec.shape[1]
        spec = spec.reshape(n, c, bins, -1)  # (n, C, F, frames)
        width = _randint((n, 1, 1, 1), self.min_bins, self.max_bins, x, gen)
        start = (
            torch.rand(width.shape, device=x.device, generator=gen) * (bins - width + 1)
        ).long()
        f = torch.arange(bins, device=x.device).view(1, 1, bins, 1)
        spec = spec.masked_fill((f >= start) & (f < start + width), 0)
        return torch.istft(spec.reshape(n * c, bins, -1), **stft, length=t).reshape(n, c, t)


class SpeedChange(Augmentation):
    """Resample each window by a factor low..high (linear interpolation, same length), as a shaft
    speed change would: every fault frequency scales by the factor."""

    def __init__(self, low: float = 0.9, high: float = 1.1, p: float = 0.5) -> None:
        if not 0 < low <= high:
            raise ValueError(f"SpeedChange needs 0 < low <= high, got {low=}, {high=}")
        self.low, self.high, self.p = low, high, _check_p(self, p)

    def transform(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return _stretch(x, _uniform((x.shape[0], 1, 1), self.low, self.high, x, gen), gen)


class TransferFunction(Augmentation):
    """Shape each window's spectrum by a smooth random gain, about ±sigma_db dB at knots points
    from 0 Hz to Nyquist (bicubic between, phase kept), as another sensor, mounting or
    transmission path between bearing and accelerometer would."""

    def __init__(self, sigma_db: float = 6.0, knots: int = 8, p: float = 0.5) -> None:
        if sigma_db < 0 or knots < 1:
            raise ValueError(
                f"TransferFunction needs sigma_db >= 0, knots >= 1, got {sigma_db=}, {knots=}"
            )
        self.sigma_db, self.knots, self.p = float(sigma_db), int(knots), _check_p(self, p)

    def transform(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        spec = torch.fft.rfft(x, dim=-1)
        db = (_smooth_curve(x, self.knots, self.sigma_db, gen, spec.shape[-1]) - 1).to(x.dtype)
        return torch.fft.irfft(spec * 10 ** (db / 20), n=x.shape[-1], dim=-1)


class ResonanceShift(Augmentation):
    """Move each window's whole spectrum up or down by one FFT bin to max_shift_hz, as the
    resonances of another machine or mounting would sit elsewhere. This shifts the analytic
    signal's frequency, so the envelope, where a defect's impact rate lives, is kept; what moves
    past 0 Hz or Nyquist is dropped."""

    def __init__(
        self, max_shift_hz: float = 1000.0, sample_rate_hz: int = 12_000, p: float = 0.5
    ) -> None:
        if not 0 < max_shift_hz < sample_rate_hz / 2:
            raise ValueError(
                f"ResonanceShift needs 0 < max_shift_hz < sample_rate_hz / 2, "
                f"got {max_shift_hz=}, {sample_rate_hz=}"
            )
        self.max_shift_hz, self.sample_rate_hz = float(max_shift_hz), int(sample_rate_hz)
        self.p = _check_p(self, p)

    def transform(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, c, t = x.shape
        spec = torch.fft.rfft(x, dim=-1)
        bins = spec.shape[-1]
        reach = max(1, round(self.max_shift_hz * t / self.sample_rate_hz))
        sign = _randint((n, 1, 1), 0, 1, x, gen) * 2 - 1
        shift = sign * _randint((n, 1, 1), 1, reach, x, gen)
        source = torch.arange(bins, device=x.device) - shift  # out[f] = spec[f - shift]
        inside = (source >= 0) & (source < bins)
        moved = spec.gather(-1, source.clamp(0, bins - 1).expand(n, c, bins))
        return torch.fft.irfft(moved * inside, n=t, dim=-1)


class Flip(Augmentation):
    """Negate the signal (an accelerometer mounted the other way round); with reverse_time, also
    play it backwards."""

    def __init__(self, reverse_time: bool = False, p: float = 0.5) -> None:
        self.reverse_time, self.p = bool(reverse_time), _check_p(self, p)

    def transform(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return -x.flip(-1) if self.reverse_time else -x


class Blockout(Augmentation):
    """Zero one block of min_fraction..max_fraction of the window, as a longer sensor dropout."""

    def __init__(
        self, min_fraction: float = 0.05, max_fraction: float = 0.2, p: float = 0.5
    ) -> None:
        if not 0 < min_fraction <= max_fraction < 1:
            raise ValueError(
                f"Blockout needs 0 < min_fraction <= max_fraction < 1, "
                f"got {min_fraction=}, {max_fraction=}"
            )
        self.min_fraction, self.max_fraction, self.p = min_fraction, max_fraction, _check_p(self, p)

    def transform(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        frac = _uniform((x.shape[0], 1, 1), self.min_fraction, self.max_fraction, x, gen)
        lengths = (frac * x.shape[-1]).round().long().clamp_min(1)
        return x.masked_fill(_block_mask(x, lengths, gen), 0.0)


class CropResize(Augmentation):
    """Crop a random min_scale..max_scale part of the window and stretch it back to full length,
    as a slightly slower shaft seen through a shorter window would look."""

    def __init__(self, min_scale: float = 0.8, max_scale: float = 1.0, p: float = 0.5) -> None:
        if not 0 < min_scale <= max_scale <= 1:
            raise ValueError(
                f"CropResize needs 0 < min_scale <= max_scale <= 1, got {min_scale=}, {max_scale=}"
            )
        self.min_scale, self.max_scale, self.p = min_scale, max_scale, _check_p(self, p)

    def transform(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        scale = _uniform((x.shape[0], 1, 1), self.min_scale, self.max_scale, x, gen)
        return _stretch(x, scale, gen)


class MagnitudeWarp(Augmentation):
    """Multiply by a smooth random curve (N(1, sigma) at a few knots, bicubic between), as a load
    or transmission path that changes within the window would."""

    def __init__(self, sigma: float = 0.2, knots: int = 4, p: float = 0.5) -> None:
        if not 0 < sigma <= 1 or knots < 1:
            raise ValueError(
                f"MagnitudeWarp needs 0 < sigma <= 1 and knots >= 1, got {sigma=}, {knots=}"
            )
        self.sigma, self.knots, self.p = sigma, knots, _check_p(self, p)

    def transform(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return x * _smooth_curve(x, self.knots, self.sigma, gen).clamp_min(0).to(x.dtype)


class TimeWarp(Augmentation):
    """Resample along a smooth monotone time warp (speed N(1, sigma) at a few knots), as a shaft
    speed that fluctuates within the window would; the window's ends stay in place."""

    def __init__(self, sigma: float = 0.2, knots: int = 4, p: float = 0.5) -> None:
        if not 0 < sigma <= 1 or knots < 1:
            raise ValueError(
                f"TimeWarp needs 0 < sigma <= 1 and knots >= 1, got {sigma=}, {knots=}"
            )
        self.sigma, self.knots, self.p = sigma, knots, _check_p(self, p)

    def transform(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        speed = _smooth_curve(x, self.knots, self.sigma, gen).clamp_min(0.1)  # (n, 1, T) > 0
        pos = speed.cumsum(dim=-1) - speed[..., :1]  # strictly increasing, starts at 0
        pos = pos / pos[..., -1:] * (x.shape[-1] - 1)
        return _sample_at(x, pos)


class Smooth(Augmentation):
    """Moving average of min_width..max_width samples (grouped conv1d), as a sensor with less
    bandwidth, e.g. a magnet mount instead of a stud, would see."""

    def __init__(self, min_width: int = 2, max_width: int = 8, p: float = 0.5) -> None:
        if not 2 <= min_width <= max_width:
            raise ValueError(
                f"Smooth needs 2 <= min_width <= max_width, got {min_width=}, {max_width=}"
            )
        self.min_width, self.max_width, self.p = min_width, max_width, _check_p(self, p)

    def transform(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, c, t = x.shape
        k = self.max_width
        center = (k - 1) // 2
        width = _randint((n, 1, 1), self.min_width, k, x, gen)
        taps = torch.arange(k, device=x.device).view(1, 1, k)
        inside = (taps >= center - (width - 1) // 2) & (taps <= center + width // 2)
        kernel = (inside / width).to(x.dtype).repeat_interleave(c, dim=0)  # (n*C, 1, k)
        padded = F.pad(x.reshape(1, n * c, t), (center, k - 1 - center), mode="reflect")
        return F.conv1d(padded, kernel, groups=n * c).reshape(n, c, t)


class RandomSubset:
    """Apply a random k_min..k_max of `augs` to each sample (each aug's own `p` is not used here).

    Per sample, the augmentations are ranked by uniform noise and the first k are chosen, so every
    sample gets exactly k of them (k drawn per sample), applied in list order.
    """

    def __init__(self, augs: Sequence[Augmentation], k_min: int = 2, k_max: int = 3) -> None:
        if not 1 <= k_min <= k_max <= len(augs):
            raise ValueError(
                f"RandomSubset needs 1 <= k_min <= k_max <= len(augs) = {len(augs)}, "
                f"got {k_min=}, {k_max=}"
            )
        self.augs, self.k_min, self.k_max = list(augs), k_min, k_max

    def choose(self, batch: int, device: torch.device, gen: torch.Generator) -> torch.Tensor:
        """bool (batch, len(augs)): which augmentations each sample gets."""
        noise = torch.rand((batch, len(self.augs)), device=device, generator=gen)
        rank = noise.argsort(dim=1).argsort(dim=1)  # a random permutation of 0..A-1 per sample
        k = torch.randint(self.k_min, self.k_max + 1, (batch, 1), device=device, generator=gen)
        return rank < k

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        chosen = self.choose(x.shape[0], x.device, gen)
        for j, aug in enumerate(self.augs):
            x = aug.apply(x, gen, chosen[:, j])
        return x

    def __repr__(self) -> str:
        return f"RandomSubset({self.augs!r}, k_min={self.k_min}, k_max={self.k_max})"


class TwoViews:
    """Turn one pipeline into the SimCLR pair: x (B, C, T) -> (view0, view1), independent draws."""

    def __init__(self, pipeline) -> None:
        self.pipeline = pipeline

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pipeline(x, gen), self.pipeline(x, gen)


AUGMENTATIONS: dict[str, type[Augmentation]] = {
    "time_mask": TimeMask,
    "gain": RandomGain,
    "noise": GaussianNoise,
    "shift": CircularShift,
    "frequency_mask": FrequencyMask,
    "speed_change": SpeedChange,
    "flip": Flip,
    "blockout": Blockout,
    "crop_resize": CropResize,
    "magnitude_warp": MagnitudeWarp,
    "time_warp": TimeWarp,
    "smooth": Smooth,
    "transfer_function": TransferFunction,
    "resonance_shift": ResonanceShift,
}
DEFAULT_AUGMENTATIONS: tuple[str, ...] = tuple(AUGMENTATIONS)


def build_pipeline(
    names: Sequence[str] | None,
    sample_rate_hz: int,
    k_min: int = 2,
    k_max: int = 3,
    **overrides: Mapping[str, Any],
) -> RandomSubset:
    """Build `RandomSubset` of the named augmentations (None: DEFAULT_AUGMENTATIONS).

    overrides map a name to constructor arguments, e.g. `time_mask={"max_chunks": 2}`.
    k_max is capped at the number of augmentations (k_min is not: too few is an error).
    """
    names = list(DEFAULT_AUGMENTATIONS if names is None else names)
    valid = ", ".join(AUGMENTATIONS)
    for name in [*names, *overrides]:
        if name not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {name!r}; valid: {valid}")
    if len(set(names)) != len(names):
        raise ValueError(f"augmentation names must be unique, got {names}")
    unused = sorted(set(overrides) - set(names))
    if unused:
        raise ValueError(f"overrides given for {unused}, which are not in the pipeline {names}")
    augs = []
    for name in names:
        cls = AUGMENTATIONS[name]
        params = inspect.signature(cls).parameters
        kwargs = dict(overrides.get(name, {}))
        bad = sorted(set(kwargs) - set(params))
        if bad:
            raise ValueError(f"{name} takes no argument {bad}; valid: {', '.join(params)}")
        if "sample_rate_hz" in params:
            kwargs.setdefault("sample_rate_hz", sample_rate_hz)
        augs.append(cls(**kwargs))
    return RandomSubset(augs, k_min=k_min, k_max=min(k_max, max(k_min, len(augs))))

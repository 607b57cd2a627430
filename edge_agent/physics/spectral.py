"""The spectral view of a window and the linear template on it, fused with the model's head.

A window's log spectrum is its log power in equal-width bands from the first bin above DC to
Nyquist (Hann window), less its mean level. Its ranked view smooths that over SMOOTH_BANDS bands
(117 Hz) and replaces each band by its rank within the window (scaled to [-0.5, 0.5]). Ranks
keep where the window's energy sits (its resonances) and drop how deep they are, which changes
with sensor gain, load and the size of the defect; the plain spectrum keeps the depths, which
carry a fault across loads where the sensor sits far from the bearing. Which one transfers
depends on the machine and the sensor's path (README "Benchmarks": CWRU drive end favours the
ranks, its fan end and the MFPT rig the plain spectrum), so the template training fits is a
product of two, one on each (features BOTH: one linear head on both views side by side). A
device's own template is on the ranked view alone (features RANKED), which its embedding log
keeps. A strongly regularized linear template, fitted on the labeled windows of one machine,
carries the diagnosis to other loads and other bearings of that machine but not to machines
with other resonances. Training keeps it only where the unlabeled pool looks like the labeled
machine (train.spectral), and the agent fuses it only while a channel runs on the factory head:
a device head describes its own machine.

    p = softmax((model_weight * log max(p_model, model_floor) + W @ standardize(view) + b) / T)

on windows like the pool the model learned from (`pool`, edge_agent.physics.pool), and
softmax((W @ standardize(view) + b) / template_temperature) elsewhere: there the model
extrapolates, and a model sure and wrong on a bearing it never saw must not outvote the
template. `model_floor` bounds how far the model votes a class down where it does vote: a sure
template stands, a hesitant one is tipped. A head without a pool (bundles written before it)
fuses every window, its model unbounded.

numpy and scipy only; the same code runs in training, in the export parity check and on the
gateway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.physics.pool import PoolGate
from edge_agent.pipeline.head import softmax

RANKED = "ranked-log-spectrum-v1"  # the ranked view alone (bands values)
BOTH = "log-spectrum-and-ranks-v1"  # the log spectrum, then its ranked view (2 x bands values)
VIEWS_PER_BAND = {RANKED: 1, BOTH: 2}  # the features this agent computes
BANDS = 512  # 11.7 Hz each for a 2048-sample window at 12 kHz
SMOOTH_BANDS = 10  # moving average before ranking: 117 Hz at BANDS (CWRU: 8-12 score alike)
TEMPLATE_C = 0.1  # inverse L2 strength of a template fit: strongly regularized transfers best
ABSENT_CLASS_BIAS = -30.0  # template logit of a class without labeled windows
UNBOUNDED_MODEL_FLOOR = 1e-12  # model_floor of heads written before it: the model unbounded


def log_spectrum(windows: np.ndarray, bands: int = BANDS) -> np.ndarray:
    """(N, W) or (N, 1, W) windows -> (N, min(bands, W // 2)) float32 log band power less each
    window's mean level. A window with no vibration (flat) reads all zeros."""
    x = np.asarray(windows, np.float64)
    x = x.reshape(x.shape[0], x.shape[-1])  # (N, W), N may be 0
    x = np.nan_to_num(x - x.mean(axis=1, keepdims=True))
    power = np.abs(np.fft.rfft(x * np.hanning(x.shape[1]), axis=1))[:, 1:] ** 2
    bands = min(bands, power.shape[1])
    width = power.shape[1] // bands
    level = np.log(power[:, : bands * width].reshape(len(x), bands, width).mean(axis=2) + 1e-20)
    return (level - level.mean(axis=1, keepdims=True)).astype(np.float32)


def spectral_view(windows: np.ndarray, bands: int = BANDS) -> np.ndarray:
    """(N, W) or (N, 1, W) windows -> (N, min(bands, W // 2)) float32 ranked view
    (`ranked_bands` of their `log_spectrum`)."""
    return ranked_bands(log_spectrum(windows, bands))


def template_view(windows: np.ndarray, features: str, bands: int = BANDS) -> np.ndarray:
    """(N, W) or (N, 1, W) windows -> (N, VIEWS_PER_BAND[features] x bands) float32 view."""
    return view_of_spectrum(log_spectrum(windows, bands), features)


def view_of_spectrum(
    level: np.ndarray, features: str, ranks: np.ndarray | None = None
) -> np.ndarray:
    """The view `features` names from log spectra (N, bands) (`ranks`: their `ranked_bands`,
    where the caller has them already)."""
    if features not in VIEWS_PER_BAND:
        known = ", ".join(VIEWS_PER_BAND)
        raise ValueError(f"unknown spectral features {features!r}; known: {known}")
    ranks = ranked_bands(level) if ranks is None else ranks
    return ranks if features == RANKED else np.hstack([level, ranks])


def ranked_bands(level: np.ndarray) -> np.ndarray:
    """(N, bands) log spectra -> (N, bands) float32: each band's rank in the window's smoothed
    log spectrum, scaled to [-0.5, 0.5] (ties share their mean rank, so a flat window reads all
    zeros)."""
    from scipy.ndimage import uniform_filter1d
    from scipy.stats import rankdata

    n = level.shape[1]
    smooth = uniform_filter1d(
        np.asarray(level, np.float64), min(SMOOTH_BANDS, n), axis=1, mode="nearest"
    )
    order = np.argsort(smooth, axis=1, kind="stable")
    ranks = np.empty_like(smooth)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(1.0, n + 1), smooth.shape), axis=1)
    tied = (np.diff(np.take_along_axis(smooth, order, axis=1), axis=1) == 0).any(axis=1)
    if tied.any():  # rankdata's mean ranks where values repeat (a flat window); else the same
        ranks[tied] = rankdata(smooth[tied], axis=1)
    return ((ranks - (n + 1) / 2) / n).astype(np.float32)


@dataclass(frozen=True)
class SpectralHead:
    """Standardization and linear template on the spectral view, and how it fuses with the model:
    the weight of the model's log-probabilities, the probability it reads at least, the
    temperature of the fused logits, the template's own temperature where it decides alone
    (None: the same) and the gate saying where the model votes (None: everywhere)."""

    mean: np.ndarray  # (bands,)
    scale: np.ndarray  # (bands,)
    weights: np.ndarray  # (C, bands)
    bias: np.ndarray  # (C,)
    model_weight: float = 1.0
    temperature: float = 1.0
    features: str = RANKED  # which view (template_view) the weights read
    model_floor: float = UNBOUNDED_MODEL_FLOOR
    template_temperature: float | None = None
    pool: PoolGate | None = None

    def __post_init__(self) -> None:
        arrays = {k: np.asarray(getattr(self, k), np.float64) for k in ("mean", "scale", "weights")}
        bias = np.asarray(self.bias, np.float64)
        w = arrays["weights"]
        width = w.shape[-1]
        if (
            w.ndim != 2
            or bias.shape != (w.shape[0],)
            or arrays["mean"].shape != (width,)
            or arrays["scale"].shape != (width,)
        ):
            raise ValueError(
                "spectral head needs weights (C, V), bias (C,), mean and scale (V,); got "
                f"{w.shape}, {bias.shape}, {arrays['mean'].shape}, {arrays['scale'].shape}"
            )
        if self.features not in VIEWS_PER_BAND:
            raise ValueError(
                f"spectral features {self.features!r} are not one of {', '.join(VIEWS_PER_BAND)}; "
                "this agent cannot compute them"
            )
        if width % VIEWS_PER_BAND[self.features]:
            raise ValueError(f"{self.features} needs an even number of values, got {width}")
        if not all(np.isfinite(a).all() for a in (*arrays.values(), bias)):
            raise ValueError("spectral head arrays must be finite")
        if not (arrays["scale"] > 0).all():
            raise ValueError("spectral head scale must be > 0")
        if not (math.isfinite(self.model_weight) and 0 <= self.model_weight <= 1):
            raise ValueError(f"spectral model_weight must be in [0, 1], got {self.model_weight}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"spectral temperature must be > 0, got {self.temperature}")
        if not (math.isfinite(self.model_floor) and 0 < self.model_floor < 1):
            raise ValueError(f"spectral model_floor must be in (0, 1), got {self.model_floor}")
        t = self.template_temperature
        if t is not None and not (math.isfinite(t) and t > 0):
            raise ValueError(f"spectral template_temperature must be > 0, got {t}")
        for key, value in arrays.items():
            object.__setattr__(self, key, value)
        object.__setattr__(self, "bias", bias)
        if self.pool is not None and self.pool.bands != self.bands:
            raise ValueError(
                f"the pool gate reads {self.pool.bands} bands, the template {self.bands}"
            )

    @property
    def num_classes(self) -> int:
        return int(self.weights.shape[0])

    @property
    def bands(self) -> int:
        """Spectral bands of a window the view is computed from."""
        return int(self.weights.shape[1]) // VIEWS_PER_BAND[self.features]

    @property
    def alone_temperature(self) -> float:
        """The temperature of the template deciding alone."""
        return self.temperature if self.template_temperature is None else self.template_temperature

    def spectra(self, windows: np.ndarray) -> np.ndarray:
        """(N, W) windows -> (N, bands) their log spectra, at the head's bands."""
        level = log_spectrum(windows, self.bands)
        if level.shape[1] != self.bands:
            raise ValueError(
                f"a {np.asarray(windows).shape[-1]}-sample window has {level.shape[1]} spectral "
                f"bands; the head needs {self.bands}"
            )
        return level

    def logits(self, windows: np.ndarray) -> np.ndarray:
        """(N, W) windows -> (N, C) template logits."""
        return self.spectra_logits(self.spectra(windows))

    def spectra_logits(self, level: np.ndarray, ranks: np.ndarray | None = None) -> np.ndarray:
        """(N, bands) log spectra (and their `ranked_bands`, where the caller has them) ->
        (N, C) template logits."""
        return self.view_logits(view_of_spectrum(level, self.features, ranks))

    def near_pool(self, level: np.ndarray) -> np.ndarray:
        """(N,) bool: the windows (their log spectra (N, bands)) on which the model votes."""
        if self.pool is None:
            return np.ones(len(level), bool)
        return self.pool.near(level)

    def view_logits(self, view: np.ndarray) -> np.ndarray:
        """(N, V) views (`view`) -> (N, C) template logits."""
        return (
            (np.asarray(view, np.float64) - self.mean) / self.scale
        ) @ self.weights.T + self.bias

    def fused_logits(self, model_probs: np.ndarray, template_logits: np.ndarray) -> np.ndarray:
        """model_weight * log max(p_model, model_floor) + template logits: the fused logits
        before the temperature."""
        log_p = np.log(np.clip(np.asarray(model_probs, np.float64), self.model_floor, 1.0))
        return self.model_weight * log_p + template_logits

    def fuse(self, model_probs: np.ndarray, windows: np.ndarray) -> np.ndarray:
        """Fused probabilities (N, C) of `windows` given the model's probabilities of them."""
        return self.fuse_spectra(model_probs, self.spectra(windows))

    def fuse_spectra(
        self, model_probs: np.ndarray, level: np.ndarray, ranks: np.ndarray | None = None
    ) -> np.ndarray:
        """Fused probabilities (N, C) given the windows' log spectra (N, bands) (and their
        `ranked_bands`, where the caller has them)."""
        logits = self.spectra_logits(level, ranks)
        return self.fuse_logits(model_probs, logits, self.near_pool(level))

    def fuse_logits(
        self, model_probs: np.ndarray, template_logits: np.ndarray, near: np.ndarray
    ) -> np.ndarray:
        """Fused probabilities (N, C) given template logits already computed: the model votes
        on the windows `near` marks (`near_pool`), the template decides alone on the rest."""
        fused = self.fused_logits(model_probs, template_logits) / self.temperature
        alone = np.asarray(template_logits, np.float64) / self.alone_temperature
        return softmax(np.where(np.asarray(near, bool)[:, None], fused, alone))

    def alone(self, windows: np.ndarray) -> np.ndarray:
        """The template's own probabilities (N, C), without the model."""
        return softmax(self.logits(windows) / self.alone_temperature)

    def to_dict(self) -> dict[str, Any]:
        optional: dict[str, Any] = {}  # absent, not null, where unset (as before they existed)
        if self.template_temperature is not None:
            optional["template_temperature"] = float(self.template_temperature)
        if self.pool is not None:
            optional["pool"] = self.pool.to_dict()
        return {
            "features": self.features,
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "weights": self.weights.tolist(),
            "bias": self.bias.tolist(),
            "model_weight": float(self.model_weight),
            "temperature": float(self.temperature),
            "model_floor": float(self.model_floor),
            **optional,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpectralHead:
        """The head `to_dict` wrote (older ones: no floor, one temperature, no gate); features
        this agent cannot compute are refused by name."""
        t = data.get("template_temperature")
        pool = data.get("pool")
        return cls(
            np.asarray(data["mean"]),
            np.asarray(data["scale"]),
            np.asarray(data["weights"]),
            np.asarray(data["bias"]),
            float(data["model_weight"]),
            float(data["temperature"]),
            str(data.get("features")),
            float(data.get("model_floor", UNBOUNDED_MODEL_FLOOR)),
            None if t is None else float(t),
            None if pool is None else PoolGate.from_dict(pool),
        )

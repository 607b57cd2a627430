"""Machine health trend: condition indicators per window, ISO 20816-3 zones, a sustained-rise alarm.

`condition_indicators` turns one raw window (g) into the numbers a vibration analyst trends:
acceleration RMS and peak, crest factor, kurtosis, envelope RMS (high-frequency band: the
first place a bearing defect shows) and velocity RMS over 10-1000 Hz (what ISO 20816-3 judges).
One forward FFT of the Hann-windowed window serves both spectral indicators.

`HealthTrend` learns this machine's own normal from its commissioning windows (median and MAD
per indicator, levels on a log scale) and scores each later window by its largest one-sided
robust z. The alarm needs the *median* of the last `smooth_windows` scores to stay above
`alarm_score` for `alarm_after` readings in a row, so a knock or a cable glitch never raises it;
it clears only after `clear_after` readings below the lower `clear_score` (hysteresis).
Feed it only windows that passed `edge_agent.pipeline.sanity.check_window`. numpy only.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any, Literal, get_args

import numpy as np

logger = logging.getLogger(__name__)

STANDARD_GRAVITY = 9.80665  # m/s² per g
VELOCITY_BAND_HZ = (10.0, 1000.0)  # ISO 20816-3 broadband velocity, machines above 600 rpm
MIN_WINDOW = 16  # samples; shorter windows have no spectrum worth trending

Group = Literal["group1", "group2"]
Foundation = Literal["rigid", "flexible"]
Zone = Literal["A", "B", "C", "D"]

# ISO 10816-3:2009 Table A.1 / ISO 20816-3:2022 Annex A: zone boundaries A/B, B/C, C/D of
# broadband velocity RMS (mm/s) on bearing housings. group1: large machines 300 kW - 50 MW;
# group2: medium machines 15 - 300 kW.
ISO_20816_3_BOUNDARIES_MM_S: dict[tuple[str, str], tuple[float, float, float]] = {
    ("group1", "rigid"): (2.3, 4.5, 7.1),
    ("group1", "flexible"): (3.5, 7.1, 11.0),
    ("group2", "rigid"): (1.4, 2.8, 4.5),
    ("group2", "flexible"): (2.3, 4.5, 7.1),
}


@dataclass(frozen=True)
class Indicators:
    """Condition indicators of one window; all finite and >= 0.

    rms_g, peak_g: AC acceleration RMS and max |x - mean| (g). crest_factor: peak / rms.
    kurtosis: Pearson (3 for Gaussian noise, 1.5 for a sine, high for impacts).
    envelope_rms_g: RMS of the Hilbert envelope of the band-passed acceleration (g).
    velocity_rms_mm_s: velocity RMS over 10-1000 Hz (mm/s). crest_factor and kurtosis are 0
    for a constant window.
    """

    rms_g: float
    peak_g: float
    crest_factor: float
    kurtosis: float
    envelope_rms_g: float
    velocity_rms_mm_s: float

    def __post_init__(self) -> None:
        values = (self.rms_g, self.peak_g, self.crest_factor, self.kurtosis)
        values += (self.envelope_rms_g, self.velocity_rms_mm_s)
        if all(math.isfinite(v) and v >= 0 for v in values):
            return
        for f in fields(self):
            value = getattr(self, f.name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"Indicators.{f.name} must be finite and >= 0, got {value!r}")

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


_FLAT = Indicators(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)  # constant window: no vibration at all
_SAFE_LO, _SAFE_HI = 1e-70, 1e70  # peak range (g) whose summed 4th powers stay finite, normal


@dataclass(frozen=True)
class _Plan:
    """Per (length, rate, band) constants: window and the bin weights of the spectral sums."""

    hann: np.ndarray  # (n,) periodic Hann
    vel: slice  # bins inside the velocity band
    vel_weight: np.ndarray  # (bins,) |X|² -> (mm/s)² per bin
    env: slice  # bins inside the envelope band
    env_weight: float  # |X|² -> g² of the envelope, per bin


@lru_cache(maxsize=16)
def _plan(n: int, fs_hz: int, band_lo: float, band_hi: float) -> _Plan:
    freqs = np.fft.rfftfreq(n, 1.0 / fs_hz)
    # Parseval, one-sided, Hann energy-corrected: rms² = sum 2|X_k|² / (n sum w²), sum w² = 3n/8.
    power = 16.0 / (3.0 * n * n)

    def bins(lo: float, hi: float) -> slice:
        inside = np.flatnonzero((freqs >= lo) & (freqs <= hi) & (freqs > 0) & (freqs < fs_hz / 2))
        return slice(int(inside[0]), int(inside[-1]) + 1) if inside.size else slice(0, 0)

    vel = bins(*VELOCITY_BAND_HZ)
    to_mm_s = STANDARD_GRAVITY * 1000.0 / (2.0 * np.pi * freqs[vel])  # |V| = |A| / (2 pi f)
    return _Plan(
        hann=0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n),
        vel=vel,
        vel_weight=power * to_mm_s**2,
        env=bins(band_lo, band_hi),
        env_weight=2.0 * power,  # mean |analytic|² = 2 x mean (band-passed)²
    )


def condition_indicators(
    window_g: np.ndarray, fs_hz: int, *, band_hz: tuple[float, float] | None = None
) -> Indicators:
    """Indicators of one 1-D window of acceleration in g sampled at `fs_hz`.

    band_hz: envelope band (Hz), default 500 Hz to 0.4 fs. The mean (sensor DC, gravity) is
    removed first. Velocity integrates in the frequency domain, V(f) = A(f) / (j 2 pi f), bins
    inside 10-1000 Hz only (the lowest usable bin is fs / n: 11.7 Hz for 1024 samples at
    12 kHz). The envelope RMS equals sqrt(2) x the band-passed RMS (the Hilbert transform keeps
    energy), so no inverse FFT is needed. Raises ValueError for NaN, inf, an empty or short
    window, a bad rate or band.
    """
    x = np.asarray(window_g)
    if x.ndim != 1 or x.shape[0] == 0:
        raise ValueError(f"window_g must be a non-empty 1-D array in g, got shape {x.shape}")
    if x.dtype.kind not in "fiu":
        raise ValueError(f"window_g must be numeric, got dtype {x.dtype}")
    if x.shape[0] < MIN_WINDOW:
        raise ValueError(f"window_g needs >= {MIN_WINDOW} samples, got {x.shape[0]}")
    if isinstance(fs_hz, bool) or not isinstance(fs_hz, (int, np.integer)) or fs_hz <= 0:
        raise ValueError(f"fs_hz must be a positive integer, got {fs_hz!r}")
    lo, hi = (500.0, 0.4 * fs_hz) if band_hz is None else band_hz
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi <= fs_hz / 2):
        raise ValueError(f"band_hz must satisfy 0 < low < high <= fs/2, got {(lo, hi)} at {fs_hz=}")
    n = x.shape[0]
    plan = _plan(n, int(fs_hz), float(lo), float(hi))
    x = x.astype(np.float64, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow takes the scaled path below
        scale, mean, peak = 1.0, float(np.add.reduce(x)) / n, math.nan
        if math.isfinite(mean):
            d = x - mean
            peak = max(float(d.max()), -float(d.min()))
    if not _SAFE_LO < peak < _SAFE_HI:  # NaN, inf, constant, or squares would over/underflow
        scale = float(np.max(np.abs(x)))
        if not math.isfinite(scale):
            bad = "NaN" if np.isnan(x).any() else "inf"
            at = int(np.flatnonzero(~np.isfinite(x))[0])
            raise ValueError(f"window_g contains {bad} (first at sample {at}); check the sensor")
        if scale == 0.0:
            return _FLAT
        x = x / scale  # work in units of the peak
        mean = float(np.add.reduce(x)) / n
        d = x - mean
        peak = max(float(d.max()), -float(d.min()))
    m2 = float(np.dot(d, d)) / n
    rms = math.sqrt(m2)
    if rms <= 1e-12 * (abs(mean) + peak):  # constant to rounding
        return _FLAT
    d2 = d * d
    m4 = float(np.dot(d2, d2)) / n
    spec = np.fft.rfft(d * plan.hann)
    p = spec.real**2 + spec.imag**2
    return Indicators(
        rms_g=rms * scale,
        peak_g=peak * scale,
        crest_factor=peak / rms,
        kurtosis=m4 / (m2 * m2),
        envelope_rms_g=math.sqrt(float(p[plan.env].sum()) * plan.env_weight) * scale,
        velocity_rms_mm_s=math.sqrt(float(np.dot(p[plan.vel], plan.vel_weight))) * scale,
    )


def iso_zone(velocity_rms_mm_s: float, group: Group, foundation: Foundation) -> Zone:
    """ISO 20816-3 zone of a broadband velocity RMS; a value on a boundary is the lower zone.

    A: newly commissioned. B: unrestricted long-term operation. C: limited operation, plan
    maintenance. D: severe enough to cause damage.
    """
    key = (group, foundation)
    if key not in ISO_20816_3_BOUNDARIES_MM_S:
        raise ValueError(
            f"unknown machine class group={group!r}, foundation={foundation!r}; valid groups "
            f"{get_args(Group)}, foundations {get_args(Foundation)}"
        )
    if not (math.isfinite(velocity_rms_mm_s) and velocity_rms_mm_s >= 0):
        raise ValueError(f"velocity_rms_mm_s must be finite and >= 0, got {velocity_rms_mm_s!r}")
    ab, bc, cd = ISO_20816_3_BOUNDARIES_MM_S[key]
    if velocity_rms_mm_s <= ab:
        return "A"
    if velocity_rms_mm_s <= bc:
        return "B"
    return "C" if velocity_rms_mm_s <= cd else "D"


# Indicator -> scored on a log scale (levels) or linearly (shape factors).
SCORED: tuple[tuple[str, bool], ...] = (
    ("rms_g", True),
    ("peak_g", True),
    ("crest_factor", False),
    ("kurtosis", False),
    ("envelope_rms_g", True),
    ("velocity_rms_mm_s", True),
)
_TINY = 1e-12  # floor before a log: a flat window scores as far below baseline, never above


def _transform(ind: Indicators) -> list[float]:
    return [
        math.log(max(getattr(ind, name), _TINY)) if log else getattr(ind, name)
        for name, log in SCORED
    ]


@dataclass(frozen=True)
class HealthParams:
    """Trend settings. Scores are robust z (MAD-based std units), one-sided: only rises count.

    commission_windows: sensor-valid windows the baseline is learned from (span normal loads).
    smooth_windows: the smoothed score is the median of this many latest scores (the ring
    starts full of zeros after commissioning).
    alarm_score / alarm_after: raise when smoothed >= alarm_score this many readings in a row.
    clear_score / clear_after: clear when smoothed < clear_score this many readings in a row.
    min_relative_spread: floor of each indicator's spread, relative to its level (0.01 = 1 %),
    so a very steady baseline does not turn a 0.1 % change into an alarm.
    machine_group, foundation: ISO 20816-3 machine class for the zone.
    """

    commission_windows: int = 200
    smooth_windows: int = 15
    alarm_score: float = 4.0
    alarm_after: int = 5
    clear_score: float = 2.5
    clear_after: int = 20
    min_relative_spread: float = 0.01
    machine_group: Group = "group2"
    foundation: Foundation = "rigid"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("machine_group", "foundation"):
                continue
            kind = int if f.type == "int" else float
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"HealthParams.{f.name} must be a number, got {value!r}")
            if kind is int and not isinstance(value, int):
                raise ValueError(f"HealthParams.{f.name} must be an integer, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"HealthParams.{f.name} must be finite, got {value!r}")
        checks = (
            ("commission_windows", self.commission_windows >= 10, ">= 10"),
            ("smooth_windows", self.smooth_windows >= 1, ">= 1"),
            ("alarm_score", self.alarm_score > 0, "> 0"),
            ("alarm_after", self.alarm_after >= 1, ">= 1"),
            ("clear_after", self.clear_after >= 1, ">= 1"),
            ("min_relative_spread", 0 < self.min_relative_spread <= 1, "in (0, 1]"),
            ("machine_group", self.machine_group in get_args(Group), f"in {get_args(Group)}"),
            ("foundation", self.foundation in get_args(Foundation), f"in {get_args(Foundation)}"),
        )
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"HealthParams.{name} must be {rule}, got {getattr(self, name)!r}")
        if not 0 <= self.clear_score < self.alarm_score:
            raise ValueError(
                "HealthParams needs 0 <= clear_score < alarm_score (hysteresis), got "
                f"clear_score={self.clear_score!r}, alarm_score={self.alarm_score!r}"
            )


@dataclass(frozen=True)
class HealthReading:
    """Trend after one window. score/smoothed/driver are None until the baseline is ready.

    score: largest robust z of the indicators above baseline (>= 0). smoothed: median of the
    recent scores. driver: the indicator behind `score`. alarm: sustained rise in force.
    changed: alarm raised or cleared on this reading. zone: ISO 20816-3 zone of this window.
    """

    score: float | None
    smoothed: float | None
    driver: str | None
    alarm: bool
    changed: bool
    zone: Zone
    baseline_ready: bool


@dataclass(frozen=True)
class _Baseline:
    center: tuple[float, ...]  # per SCORED indicator, in its scoring scale
    spread: tuple[float, ...]  # robust std, floored
    count: int


class HealthTrend:
    """Commissioning baseline, per-window score, sustained-rise alarm with hysteresis."""

    STATE_VERSION = 1

    def __init__(self, params: HealthParams | None = None) -> None:
        self.params = HealthParams() if params is None else params
        self._baseline: _Baseline | None = None
        self._pending: list[list[float]] = []  # transformed commissioning windows
        self._recent: deque[float] = deque()
        self._above = self._below = 0
        self._alarm = False
        self._reset_alarm()

    @property
    def baseline_ready(self) -> bool:
        return self._baseline is not None

    @property
    def alarm(self) -> bool:
        return self._alarm

    def commission(self, history: Sequence[Indicators]) -> None:
        """Learn the baseline from these windows now (>= 10) and restart the alarm logic."""
        if len(history) < 10:
            raise ValueError(f"commission needs >= 10 windows of indicators, got {len(history)}")
        self._set_baseline([_transform(ind) for ind in history])

    def recommission(self) -> None:
        """Forget the baseline (e.g. after a bearing change); the next windows rebuild it."""
        self._baseline, self._pending = None, []
        self._reset_alarm()

    def update(self, ind: Indicators) -> HealthReading:
        """Score one sensor-valid window's indicators; commissioning windows only collect."""
        zone = iso_zone(ind.velocity_rms_mm_s, self.params.machine_group, self.params.foundation)
        t = _transform(ind)
        if self._baseline is None:
            self._pending.append(t)
            if len(self._pending) >= self.params.commission_windows:
                self._set_baseline(self._pending)
            return HealthReading(None, None, None, False, False, zone, self.baseline_ready)
        b = self._baseline
        z = [(v - c) / s for v, c, s in zip(t, b.center, b.spread, strict=True)]
        top = max(range(len(z)), key=z.__getitem__)
        score = max(z[top], 0.0)
        self._recent.append(score)
        smoothed = float(statistics.median(self._recent))
        changed = self._step_alarm(smoothed)
        driver = SCORED[top][0] if score > 0 else None
        return HealthReading(score, smoothed, driver, self._alarm, changed, zone, True)

    def _step_alarm(self, smoothed: float) -> bool:
        p = self.params
        if not self._alarm:
            self._above = self._above + 1 if smoothed >= p.alarm_score else 0
            if self._above >= p.alarm_after:
                self._alarm, self._below = True, 0
                logger.warning("health alarm: smoothed score %.1f >= %.1f", smoothed, p.alarm_score)
                return True
        else:
            self._below = self._below + 1 if smoothed < p.clear_score else 0
            if self._below >= p.clear_after:
                self._alarm, self._above = False, 0
                logger.info("health alarm cleared: smoothed score %.1f", smoothed)
                return True
        return False

    def _set_baseline(self, rows: list[list[float]]) -> None:
        data = np.asarray(rows, dtype=np.float64)  # (N, indicators)
        center = np.median(data, axis=0)
        mad = 1.4826 * np.median(np.abs(data - center), axis=0)  # robust std for Gaussian data
        rel = self.params.min_relative_spread
        floor = [
            rel if log else max(rel * abs(c), _TINY)
            for (_, log), c in zip(SCORED, center, strict=True)
        ]
        spread = np.maximum(mad, floor)
        self._baseline = _Baseline(tuple(center.tolist()), tuple(spread.tolist()), len(rows))
        self._pending = []
        self._reset_alarm()
        logger.info("health baseline learned from %d windows", len(rows))

    def _reset_alarm(self) -> None:
        # the ring starts at baseline level (0), so the first few scores alone cannot alarm
        k = self.params.smooth_windows
        self._recent = deque([0.0] * k, maxlen=k)
        self._above = self._below = 0
        self._alarm = False

    # -- persistence -------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Plain JSON-serializable dict: baseline (in scoring scale), commissioning progress,
        recent scores and alarm counters."""
        names = [name for name, _ in SCORED]
        b = self._baseline
        return {
            "version": self.STATE_VERSION,
            "indicators": names,
            "baseline": None
            if b is None
            else {"center": list(b.center), "spread": list(b.spread), "count": b.count},
            "pending": [list(row) for row in self._pending],
            "recent_scores": list(self._recent),
            "above": self._above,
            "below": self._below,
            "alarm": self._alarm,
        }

    @classmethod
    def from_state(
        cls, state: Mapping[str, Any], params: HealthParams | None = None
    ) -> HealthTrend:
        """Rebuild from `state()`; params come from today's config. ValueError names the key."""
        trend = cls(params)
        if not isinstance(state, Mapping) or state.get("version") != cls.STATE_VERSION:
            got = state.get("version") if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"health state: version must be {cls.STATE_VERSION}, got {got!r}")
        names = [name for name, _ in SCORED]
        if state.get("indicators") != names:
            raise ValueError(
                f"health state: indicators must be {names}, got {state.get('indicators')!r}"
            )
        width = len(names)
        baseline = state.get("baseline")
        if baseline is not None:
            if not isinstance(baseline, Mapping):
                raise ValueError(f"health state: baseline must be a dict or null, got {baseline!r}")
            center = _floats(baseline.get("center"), "baseline.center", width)
            spread = _floats(baseline.get("spread"), "baseline.spread", width)
            if min(spread) <= 0:
                raise ValueError(f"health state: baseline.spread must be > 0, got {spread!r}")
            count = _count(baseline.get("count"), "baseline.count")
            trend._baseline = _Baseline(tuple(center), tuple(spread), count)
        pending = state.get("pending")
        if not isinstance(pending, list):
            raise ValueError(f"health state: pending must be a list, got {pending!r}")
        trend._pending = [_floats(row, f"pending[{i}]", width) for i, row in enumerate(pending)]
        recent = _floats(state.get("recent_scores"), "recent_scores", None)
        trend._recent.extend(recent)
        trend._above = _count(state.get("above"), "above")
        trend._below = _count(state.get("below"), "below")
        alarm = state.get("alarm")
        if not isinstance(alarm, bool):
            raise ValueError(f"health state: alarm must be true or false, got {alarm!r}")
        trend._alarm = alarm
        return trend


def _floats(value: object, key: str, width: int | None) -> list[float]:
    ok = isinstance(value, list) and (width is None or len(value) == width)
    if ok:
        ok = all(
            not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
            for v in value
        )
    if not ok:
        size = "a list of finite numbers" if width is None else f"{width} finite numbers"
        raise ValueError(f"health state: {key} must be {size}, got {value!r}")
    return [float(v) for v in value]


def _count(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"health state: {key} must be an integer >= 0, got {value!r}")
    return value

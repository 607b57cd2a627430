"""Physics-based rolling-bearing vibration simulator: seeded, deterministic, streaming.

A localized defect makes the rolling elements strike it at a fault frequency (BPFI, BPFO or
2 x BSF). Each strike excites a few lightly damped structural resonances (kHz), so the signal
is a train of decaying bursts whose envelope repeats at the fault frequency. On top: shaft
harmonics, a gear-mesh tone with shaft-rate sidebands, broadband machine noise, slow speed
wander, and the sensor (gain, noise floor, DC offset, clipping).

`BearingSimulator.read(n)` continues exactly where the previous call stopped (shaft phase,
impact schedule and resonance ringing carry over), so chunk sizes never change the signal.
numpy only; all randomness comes from `seed` (the run) and `machine_seed` (the structure).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np

Fault = Literal["normal", "inner_race", "outer_race", "ball"]
FAULTS: tuple[str, ...] = ("normal", "inner_race", "outer_race", "ball")

IMPACT_PEAK_G = 3.0  # peak impact response at severity 1, load 0.5, before modulation
FULL_SEVERITY_SIZE_IN = 0.028  # fault diameter (inch) that maps to severity 1.0
_IMPACT_BLOCK = 64  # impacts scheduled per step; fixed so chunking never changes the stream
_RING_DECAY_NEPERS = 9.0  # ringing is cut once it has decayed by e^-9 (~1e-4)


@dataclass(frozen=True)
class BearingGeometry:
    """Rolling-bearing geometry; `fault_orders()` gives defect frequencies per shaft revolution."""

    n_balls: int
    ball_diameter_mm: float
    pitch_diameter_mm: float
    contact_angle_deg: float = 0.0

    def __post_init__(self) -> None:
        if self.n_balls < 3:
            raise ValueError(f"BearingGeometry.n_balls must be >= 3, got {self.n_balls!r}")
        if not 0 < self.ball_diameter_mm < self.pitch_diameter_mm:
            raise ValueError(
                "BearingGeometry needs 0 < ball_diameter_mm < pitch_diameter_mm, got "
                f"ball_diameter_mm={self.ball_diameter_mm!r}, "
                f"pitch_diameter_mm={self.pitch_diameter_mm!r}"
            )
        if not 0 <= self.contact_angle_deg < 90:
            raise ValueError(
                "BearingGeometry.contact_angle_deg must be in [0, 90), got "
                f"{self.contact_angle_deg!r}"
            )

    def fault_orders(self) -> dict[str, float]:
        """Defect frequencies as multiples of shaft speed: keys bpfo, bpfi, bsf, ftf."""
        ratio = self.ball_diameter_mm / self.pitch_diameter_mm
        r = ratio * math.cos(math.radians(self.contact_angle_deg))
        return {
            "bpfo": self.n_balls / 2 * (1 - r),
            "bpfi": self.n_balls / 2 * (1 + r),
            "bsf": 1 / (2 * ratio) * (1 - r * r),
            "ftf": 0.5 * (1 - r),
        }


SKF_6205 = BearingGeometry(n_balls=9, ball_diameter_mm=7.94, pitch_diameter_mm=39.04)


def severity_from_fault_size(fault_size_in: float) -> float:
    """Map a defect diameter in inches to severity 0..1 (0.007 -> 0.25, 0.028 and up -> 1)."""
    if not math.isfinite(fault_size_in) or fault_size_in < 0:
        raise ValueError(f"fault_size_in must be a finite number >= 0, got {fault_size_in!r}")
    return min(1.0, fault_size_in / FULL_SEVERITY_SIZE_IN)


@dataclass(frozen=True)
class Conditions:
    """Operating point, bearing state and sensor of one stretch of signal.

    rpm: shaft speed. load: 0..1 of rated. fault: one of FAULTS. severity: 0..1 impact strength
    (see `severity_from_fault_size`). speed_jitter: relative slow speed wander (std).
    slip: relative random jitter of each impact interval (rolling elements slip, ~0.01-0.02).
    gain: sensor sensitivity relative to nominal. noise_floor_g: sensor noise (rms, g).
    dc_offset_g: added constant (g). clip_g: the sensor saturates at +-clip_g (None = never).
    """

    rpm: float = 1797.0
    load: float = 0.5
    fault: Fault = "normal"
    severity: float = 0.5
    speed_jitter: float = 0.002
    slip: float = 0.01
    gain: float = 1.0
    noise_floor_g: float = 0.002
    dc_offset_g: float = 0.0
    clip_g: float | None = None

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"Conditions.fault must be one of {FAULTS}, got {self.fault!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "fault" or (f.name == "clip_g" and value is None):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"Conditions.{f.name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"Conditions.{f.name} must be finite, got {value!r}")
        checks = (
            ("rpm", 0 < self.rpm <= 60_000, "in (0, 60000]"),
            ("load", 0 <= self.load <= 1, "in [0, 1]"),
            ("severity", 0 <= self.severity <= 1, "in [0, 1]"),
            ("speed_jitter", 0 <= self.speed_jitter <= 0.2, "in [0, 0.2]"),
            ("slip", 0 <= self.slip <= 0.2, "in [0, 0.2]"),
            ("gain", self.gain > 0, "> 0"),
            ("noise_floor_g", self.noise_floor_g >= 0, ">= 0"),
            ("clip_g", self.clip_g is None or self.clip_g > 0, "> 0 or None"),
        )
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"Conditions.{name} must be {rule}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class _Machine:
    """Structure drawn from the machine seed: resonances, shaft/gear tones, load zone, noise."""

    mode_hz: np.ndarray  # (M,)
    mode_zeta: np.ndarray  # (M,)
    mode_weight: np.ndarray  # (M,), sums to 1
    harmonic_g: np.ndarray  # (3,) amplitudes of 1x, 2x, 3x shaft
    harmonic_phase: np.ndarray  # (3,) rad
    gear_teeth: int
    gear_g: float
    gear_mod_depth: float
    gear_phase: tuple[float, float]
    load_zone_rev: float  # angle (revolutions) of the load zone centre
    noise_g: float  # broadband machine noise rms at load 0.5

    @classmethod
    def draw(cls, rng: np.random.Generator, sample_rate_hz: int) -> _Machine:
        n_modes = int(rng.integers(2, 4))
        top_hz = 0.42 * sample_rate_hz  # stay below Nyquist at low sample rates
        mode_hz = np.sort(np.minimum(rng.uniform(2500.0, 4500.0, n_modes), top_hz))
        weight = rng.uniform(0.5, 1.0, n_modes)
        return cls(
            mode_hz=mode_hz,
            mode_zeta=rng.uniform(0.035, 0.065, n_modes),
            mode_weight=weight / weight.sum(),
            harmonic_g=np.array(
                [rng.uniform(0.02, 0.04), rng.uniform(0.008, 0.02), rng.uniform(0.003, 0.01)]
            ),
            harmonic_phase=rng.uniform(0, 2 * np.pi, 3),
            gear_teeth=int(rng.integers(18, 40)),
            gear_g=float(rng.uniform(0.01, 0.03)),
            gear_mod_depth=float(rng.uniform(0.2, 0.5)),
            gear_phase=(float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0, 2 * np.pi))),
            load_zone_rev=float(rng.uniform(0, 1)),
            noise_g=float(rng.uniform(0.015, 0.03)),
        )


class BearingSimulator:
    """Stateful vibration stream of one bearing on one machine, in g.

    seed: the run (noise, impact jitter, speed wander). machine_seed: the structure (resonances,
    gear, tone levels); defaults to `seed`. Reading 10 x 1000 samples gives the same signal as
    reading 10000 at once; `set_conditions` changes speed, fault or sensor from the next sample.
    """

    def __init__(
        self,
        conditions: Conditions,
        sample_rate_hz: int = 12_000,
        seed: int = 0,
        geometry: BearingGeometry = SKF_6205,
        *,
        machine_seed: int | None = None,
    ) -> None:
        if isinstance(sample_rate_hz, bool) or not isinstance(sample_rate_hz, (int, np.integer)):
            raise ValueError(f"sample_rate_hz must be an integer, got {sample_rate_hz!r}")
        if sample_rate_hz < 1000:
            raise ValueError(f"sample_rate_hz must be >= 1000, got {sample_rate_hz}")
        if not isinstance(conditions, Conditions):
            raise TypeError(f"conditions must be a Conditions, got {type(conditions).__name__}")
        self.sample_rate_hz = int(sample_rate_hz)
        self.geometry = geometry
        self._orders = geometry.fault_orders()
        machine_ss = np.random.SeedSequence(seed if machine_seed is None else machine_seed)
        self._machine = _Machine.draw(np.random.default_rng(machine_ss), self.sample_rate_hz)
        run_rng, noise_ss, floor_ss, impact_ss = np.random.SeedSequence([seed, 1]).spawn(4)
        run = np.random.default_rng(run_rng)
        self._noise_rng = np.random.default_rng(noise_ss)
        self._floor_rng = np.random.default_rng(floor_ss)
        self._impact_rng = np.random.default_rng(impact_ss)
        # Slow speed wander: 3 sinusoids with unit total variance.
        self._wander_hz = run.uniform(0.03, 0.3, 3)
        self._wander_phase = run.uniform(0, 2 * np.pi, 3)
        self._n = 0  # samples produced so far
        self._rev = float(run.uniform(0, 1))  # shaft position (revolutions) at sample self._n
        omega = 2 * np.pi * self._machine.mode_hz
        zeta = self._machine.mode_zeta
        self._poles = -zeta * omega + 1j * omega * np.sqrt(1 - zeta**2)  # (M,) 1/s
        self._ring = self._ring_basis()  # (M, L) complex
        self._carry = np.zeros(self._ring.shape[1] + 1)  # ringing spilling into the next chunk
        self._conditions = conditions
        self._pending = _empty_impacts()
        self._sched_rev: float | None = None  # last scheduled impact position
        self._sched_count = 0
        self._last_impact_rev: float | None = None
        self._restart_impacts()

    @property
    def conditions(self) -> Conditions:
        return self._conditions

    @property
    def samples_read(self) -> int:
        return self._n

    def fault_frequency_hz(self) -> float:
        """Nominal impact rate of the current fault at the current rpm (0 for normal)."""
        return self._impact_order() * self._conditions.rpm / 60.0

    def set_conditions(self, conditions: Conditions) -> None:
        """Apply new conditions from the next sample on (inject a fault, change speed, drift)."""
        if not isinstance(conditions, Conditions):
            raise TypeError(f"conditions must be a Conditions, got {type(conditions).__name__}")
        old, self._conditions = self._conditions, conditions
        if conditions.fault != old.fault:
            self._last_impact_rev = None
            self._restart_impacts()
        elif conditions.slip != old.slip:
            self._restart_impacts()  # reschedule from the last impact with the new slip

    def read(self, n_samples: int) -> np.ndarray:
        """Next `n_samples` of acceleration: float32 (n_samples,) in g."""
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)):
            raise ValueError(f"n_samples must be an integer, got {n_samples!r}")
        if n_samples < 0:
            raise ValueError(f"n_samples must be >= 0, got {n_samples}")
        n = int(n_samples)
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        c, m, fs = self._conditions, self._machine, self.sample_rate_hz
        idx = self._n + np.arange(n + 1, dtype=np.float64)  # absolute sample index, one extra
        t = idx[:-1] / fs
        wander = np.sqrt(2 / 3) * np.sin(
            2 * np.pi * self._wander_hz[:, None] * t + self._wander_phase[:, None]
        ).sum(axis=0)
        shaft_hz = c.rpm / 60.0 * (1.0 + c.speed_jitter * wander)
        # rev[i] = shaft position at sample i; sequential accumulate keeps chunking exact.
        rev = np.add.accumulate(np.concatenate(([self._rev], shaft_hz / fs)))

        angle = 2 * np.pi * rev[:-1]
        level = 0.8 + 0.4 * c.load
        mech = np.zeros(n)
        for h in range(3):
            mech += level * m.harmonic_g[h] * np.sin((h + 1) * angle + m.harmonic_phase[h])
        gear_am = 1.0 + m.gear_mod_depth * np.cos(angle + m.gear_phase[0])
        mech += level * m.gear_g * gear_am * np.sin(m.gear_teeth * angle + m.gear_phase[1])
        mech += level * m.noise_g * self._noise_rng.standard_normal(n)

        buf = self._render_impacts(rev, idx, n)
        mech += buf[:n]
        self._carry = buf[n:]

        floor = self._floor_rng.standard_normal(n)
        out = c.gain * mech + c.noise_floor_g * floor + c.dc_offset_g
        if c.clip_g is not None:
            np.clip(out, -c.clip_g, c.clip_g, out=out)
        self._n += n
        self._rev = float(rev[-1])
        return out.astype(np.float32)

    # -- impacts -----------------------------------------------------------------------------

    def _impact_order(self) -> float:
        """Impacts per shaft revolution: BPFI, BPFO, or 2 x BSF (a ball hits both races)."""
        fault = self._conditions.fault
        if fault == "inner_race":
            return self._orders["bpfi"]
        if fault == "outer_race":
            return self._orders["bpfo"]
        if fault == "ball":
            return 2 * self._orders["bsf"]
        return 0.0

    def _ring_basis(self) -> np.ndarray:
        """exp(s_m * l / fs) for each resonance m and lag l: complex (M, L)."""
        fs = self.sample_rate_hz
        length = int(np.ceil(_RING_DECAY_NEPERS / np.min(-self._poles.real) * fs))
        lags = np.arange(length) / fs
        return np.exp(self._poles[:, None] * lags[None, :])

    def _restart_impacts(self) -> None:
        """Drop scheduled impacts; continue from the last one, or start at a random phase."""
        self._pending = _empty_impacts()
        order = self._impact_order()
        if order == 0:
            self._sched_rev = None
            return
        if self._last_impact_rev is None:
            self._last_impact_rev = self._rev - float(self._impact_rng.uniform(0, 1)) / order
        self._sched_rev = self._last_impact_rev

    def _schedule_until(self, rev_end: float) -> None:
        """Extend the schedule, a fixed block at a time, past shaft position `rev_end`."""
        order, slip = self._impact_order(), self._conditions.slip
        while self._sched_rev is not None and self._sched_rev < rev_end:
            draws = self._impact_rng.standard_normal((_IMPACT_BLOCK, 2))
            step = np.maximum(1.0 + slip * draws[:, 0], 0.5) / order
            pos = self._sched_rev + np.cumsum(step)
            count = self._sched_count + np.arange(_IMPACT_BLOCK)
            scale = np.exp(0.15 * draws[:, 1])  # impact-to-impact amplitude scatter
            self._pending = tuple(
                np.concatenate((old, new))
                for old, new in zip(self._pending, (pos, scale, count), strict=True)
            )
            self._sched_rev = float(pos[-1])
            self._sched_count += _IMPACT_BLOCK

    def _impact_amplitude(
        self, pos: np.ndarray, scale: np.ndarray, count: np.ndarray
    ) -> np.ndarray:
        """Peak response (g) of each impact: severity, load, load-zone modulation, scatter."""
        c, m = self._conditions, self._machine
        base = IMPACT_PEAK_G * c.severity * (0.6 + 0.8 * c.load) * scale
        depth = 0.8 - 0.3 * c.load  # heavier load widens the load zone: less modulation
        if c.fault == "inner_race":  # defect turns with the shaft through the load zone
            zone = np.cos(2 * np.pi * (pos - m.load_zone_rev))
        elif c.fault == "ball":  # defective ball travels with the cage
            zone = np.cos(2 * np.pi * (pos * self._orders["ftf"] - m.load_zone_rev))
            base = base * np.where(count % 2 == 0, 1.0, 0.55)  # inner vs outer race contact
        else:  # outer race defect sits still in the load zone
            return base
        return base * (1 - depth + depth * 0.5 * (1 + zone))

    def _render_impacts(self, rev: np.ndarray, idx: np.ndarray, n: int) -> np.ndarray:
        """Ringing of impacts falling in this chunk plus carried ringing: float64 (n + L + 1,)."""
        buf = np.zeros(n + self._carry.shape[0])
        buf[: self._carry.shape[0]] += self._carry
        if self._sched_rev is None:
            return buf
        self._schedule_until(rev[-1])
        pos, scale, count = self._pending
        now = pos < rev[-1]
        keep = now & (pos >= rev[0])  # impacts scheduled before a restart point are dropped
        self._pending = tuple(a[~now] for a in self._pending)
        if not keep.any():
            return buf
        pos, scale, count = pos[keep], scale[keep], count[keep]
        self._last_impact_rev = float(pos[-1])
        at = np.interp(pos, rev, idx)  # fractional absolute sample index of each impact
        first = np.ceil(at)
        frac = (first - at) / self.sample_rate_hz  # s from impact to its first sample
        amp = self._impact_amplitude(pos, scale, count)
        weights = self._machine.mode_weight
        coef = amp[:, None] * weights[None, :] * np.exp(self._poles[None, :] * frac[:, None])
        ring = (coef @ self._ring).imag  # (K, L)
        offset = (first - idx[0]).astype(np.int64)[:, None] + np.arange(ring.shape[1])
        buf += np.bincount(offset.ravel(), weights=ring.ravel(), minlength=buf.shape[0])
        return buf


def _empty_impacts() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)


def simulate(
    conditions: Conditions, duration_s: float, sample_rate_hz: int = 12_000, seed: int = 0
) -> np.ndarray:
    """`duration_s` of signal under fixed conditions: float32 (round(duration_s * fs),) in g."""
    if not math.isfinite(duration_s) or duration_s < 0:
        raise ValueError(f"duration_s must be a finite number >= 0, got {duration_s!r}")
    sim = BearingSimulator(conditions, sample_rate_hz=sample_rate_hz, seed=seed)
    return sim.read(round(duration_s * sample_rate_hz))


def run_to_failure_severity(life_fraction: float, final: float = 0.5, growth: float = 6.0) -> float:
    """Defect severity over a life: 0 in the first half, then exponential growth to `final`."""
    if life_fraction < 0.5:
        return 0.0
    u = (life_fraction - 0.5) / 0.5
    return final * math.expm1(growth * u) / math.expm1(growth)


def simulate_run_to_failure(
    seed: int,
    fault: Fault,
    steps: int = 800,
    *,
    snapshot: int = 1024,
    sample_rate_hz: int = 12_000,
    final_severity: float = 0.5,
    growth: float = 6.0,
) -> np.ndarray:
    """A bearing's life as one short snapshot per time step: float32 (steps, snapshot) in g.

    Healthy for the first half, then `fault` with severity `run_to_failure_severity(step /
    steps)`; speed (1797 rpm +- 1 %), load (0.5 +- 0.05) and the sensor noise floor vary a little
    from step to step. Snapshots, not a continuous multi-hour stream: what a trend sees.
    """
    if steps < 1 or snapshot < 1:
        raise ValueError(
            f"simulate_run_to_failure needs steps >= 1 and snapshot >= 1, got {steps=}, {snapshot=}"
        )
    rng = np.random.default_rng(seed + 1000)
    sim = BearingSimulator(Conditions(severity=0.0), sample_rate_hz, seed=seed)
    out = np.empty((steps, snapshot), dtype=np.float32)
    for step in range(steps):
        sim.set_conditions(
            Conditions(
                rpm=1797.0 * (1 + 0.01 * rng.standard_normal()),
                load=float(np.clip(0.5 + 0.05 * rng.standard_normal(), 0, 1)),
                fault=fault if step >= steps // 2 else "normal",
                severity=run_to_failure_severity(step / steps, final_severity, growth),
                noise_floor_g=0.002 * (1 + 0.2 * rng.random()),
            )
        )
        out[step] = sim.read(snapshot)
    return out

"""Synthetic sensor: edge_agent.physics.bearing_sim.BearingSimulator driven by a scripted schedule.

The schedule (config `source.schedule`) changes the machine at given stream times: inject a
fault at 60 s, ramp the sensor gain over ten minutes to imitate drift, change speed. Stream time
counts samples, so a fast (not realtime) run gives exactly the same signal as a realtime one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import ClassVar

import numpy as np

from edge_agent.config import SimulatorSourceConfig, SimulatorStep
from edge_agent.physics.bearing_sim import BearingSimulator, Conditions
from edge_agent.sources.base import Chunk, Pacer, SourceBase, SourceError

logger = logging.getLogger(__name__)

RAMPABLE = (
    "severity",
    "rpm",
    "load",
    "speed_jitter",
    "slip",
    "gain",
    "noise_floor_g",
    "dc_offset_g",
    "clip_g",
)


class SimulatorSource(SourceBase):
    """Streams simulated vibration in g; `conditions` is the ground truth of the latest sample."""

    name: ClassVar[str] = "simulator"

    def __init__(self, cfg: SimulatorSourceConfig, target_rate_hz: int | None = None) -> None:
        if target_rate_hz is not None and target_rate_hz != cfg.sample_rate_hz:
            raise SourceError(
                f"simulator runs at {cfg.sample_rate_hz} Hz but the bundle needs "
                f"{target_rate_hz} Hz; set source.sample_rate_hz = {target_rate_hz}"
            )
        self.cfg = cfg
        self.sample_rate_hz = cfg.sample_rate_hz
        self._pacer = Pacer(cfg.sample_rate_hz, cfg.realtime)
        self._reset()

    def _reset(self) -> None:
        self.conditions = Conditions()
        self._sim = BearingSimulator(self.conditions, self.sample_rate_hz, seed=self.cfg.seed)
        self._next_step = 0
        self._ramps: dict[str, tuple[float, float, float, float]] = {}  # t0, t1, v0, v1
        self._emitted = 0
        self._t_start = time.time()
        self._running = False

    def start(self) -> None:
        self._reset()
        self._pacer.restart()
        self._running = True
        logger.info(
            "simulator: %d Hz, seed %d, %d schedule step(s), %s",
            self.sample_rate_hz,
            self.cfg.seed,
            len(self.cfg.schedule),
            "realtime" if self.cfg.realtime else "fast",
        )

    def stop(self) -> None:
        self._running = False

    @property
    def stream_time_s(self) -> float:
        return self._emitted / self.sample_rate_hz

    def read(self, timeout_s: float) -> Chunk | None:
        if not self._running:
            raise SourceError("simulator source: call start() (or use `with`) before read()")
        n = self.cfg.chunk_samples
        if not self._pacer.wait_until(self._emitted + n, timeout_s):
            return None
        t_first = self._t_start + self._emitted / self.sample_rate_hz
        pieces = []
        end = self._emitted + n
        while self._emitted < end:
            self._apply_due_steps()
            piece_end = min(end, self._next_step_sample())
            pieces.append(self._sim.read(piece_end - self._emitted))
            self._emitted = piece_end
        return Chunk(np.concatenate(pieces), t_first, 0)

    def _next_step_sample(self) -> int:
        """Sample index at which the next schedule step applies (a large number if none)."""
        if self._next_step >= len(self.cfg.schedule):
            return 2**62
        return self._step_sample(self.cfg.schedule[self._next_step])

    def _step_sample(self, step: SimulatorStep) -> int:
        return math.ceil(step.at_s * self.sample_rate_hz - 1e-6)

    def _apply_due_steps(self) -> None:
        now = self.stream_time_s
        schedule = self.cfg.schedule
        while (
            self._next_step < len(schedule)
            and self._step_sample(schedule[self._next_step]) <= self._emitted
        ):
            self._start_step(schedule[self._next_step], now)
            self._next_step += 1
        values = {}
        for field, (t0, t1, v0, v1) in list(self._ramps.items()):
            frac = min(1.0, (now - t0) / (t1 - t0))
            values[field] = v0 + frac * (v1 - v0)
            if frac >= 1.0:
                del self._ramps[field]
        if values:
            self._set(values)

    def _start_step(self, step: SimulatorStep, now: float) -> None:
        changes = step.model_dump(exclude={"at_s", "ramp_s"}, exclude_none=True)
        immediate = {}
        for field, target in changes.items():
            current = getattr(self.conditions, field)
            if step.ramp_s > 0 and field in RAMPABLE and current is not None:
                self._ramps[field] = (now, now + step.ramp_s, float(current), float(target))
            else:
                self._ramps.pop(field, None)
                immediate[field] = target
        logger.info("simulator: t=%.2f s step %s", now, changes)
        if immediate:
            self._set(immediate)

    def _set(self, values: dict) -> None:
        self.conditions = dataclasses.replace(self.conditions, **values)
        self._sim.set_conditions(self.conditions)

"""Synthetic sensor: edge_agent.physics.bearing_sim.BearingSimulator driven by a scripted schedule.

The schedule (config `source.schedule`) changes the machine at given stream times: inject a
fault at 60 s, ramp the sensor gain over ten minutes to imitate drift, change speed. Stream time
counts samples, so a fast (not realtime) run gives exactly the same signal as a realtime one.
With `channels`, each channel is an independent machine (its own seed and schedule) and a chunk
holds one column per machine.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from edge_agent.config import SimulatorSourceConfig, SimulatorStep
from edge_agent.physics.bearing_sim import BearingSimulator, Conditions
from edge_agent.sources.base import (
    Chunk,
    Pacer,
    SourceBase,
    SourceChannel,
    SourceError,
    check_inputs,
)

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


def channel_seed(seed: int, machine: int) -> int:
    """Seed of simulated machine `machine` of a multi-channel run: fixed by both, distinct;
    machine 0 is the single-channel simulator of the same seed."""
    if machine == 0:
        return seed
    return int(np.random.SeedSequence([seed, machine]).generate_state(1)[0])


class ScheduledMachine:
    """One BearingSimulator following its schedule; `conditions` is the latest sample's truth."""

    def __init__(
        self, schedule: Sequence[SimulatorStep], sample_rate_hz: int, seed: int, label: str = ""
    ) -> None:
        self.schedule, self.sample_rate_hz, self.label = list(schedule), sample_rate_hz, label
        self.conditions = Conditions()
        self._sim = BearingSimulator(self.conditions, sample_rate_hz, seed=seed)
        self._next_step = 0
        self._ramps: dict[str, tuple[float, float, float, float]] = {}  # t0, t1, v0, v1
        self._emitted = 0

    def read(self, n: int) -> np.ndarray:
        """Next n samples, float32 (n,) in g, with the schedule applied sample-exactly."""
        pieces = []
        end = self._emitted + n
        while self._emitted < end:
            self._apply_due_steps()
            piece_end = min(end, self._next_step_sample())
            pieces.append(self._sim.read(piece_end - self._emitted))
            self._emitted = piece_end
        return np.concatenate(pieces)

    def _next_step_sample(self) -> int:
        """Sample index at which the next schedule step applies (a large number if none)."""
        if self._next_step >= len(self.schedule):
            return 2**62
        return self._step_sample(self.schedule[self._next_step])

    def _step_sample(self, step: SimulatorStep) -> int:
        return math.ceil(step.at_s * self.sample_rate_hz - 1e-6)

    def _apply_due_steps(self) -> None:
        now = self._emitted / self.sample_rate_hz
        schedule = self.schedule
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
        logger.info("simulator%s: t=%.2f s step %s", self.label, now, changes)
        if immediate:
            self._set(immediate)

    def _set(self, values: dict) -> None:
        self.conditions = dataclasses.replace(self.conditions, **values)
        self._sim.set_conditions(self.conditions)


class SimulatorSource(SourceBase):
    """Streams simulated vibration in g: (n,) from `cfg`, or (n, channels) with `channels`.

    Single channel: one machine with `cfg.seed` and `cfg.schedule`. Channel j of a multi-channel
    source: machine `channel_seed(cfg.seed, input)` with `channels[j].schedule or cfg.schedule`.
    `machines[j].conditions` is the ground truth of channel j's latest sample.
    """

    name: ClassVar[str] = "simulator"

    def __init__(
        self,
        cfg: SimulatorSourceConfig,
        target_rate_hz: int | None = None,
        *,
        channels: Sequence[SourceChannel] | None = None,
    ) -> None:
        if target_rate_hz is not None and target_rate_hz != cfg.sample_rate_hz:
            raise SourceError(
                f"simulator runs at {cfg.sample_rate_hz} Hz but the bundle needs "
                f"{target_rate_hz} Hz; set source.sample_rate_hz = {target_rate_hz}"
            )
        self.cfg = cfg
        self.channels = None if channels is None else list(channels)
        if self.channels is not None:
            check_inputs(self.channels)
            for channel in self.channels:
                times = [step.at_s for step in channel.schedule or []]
                if times != sorted(times):
                    raise SourceError(
                        f"simulator input {channel.input}: schedule steps must be in increasing "
                        f"at_s, got {times}"
                    )
        self.sample_rate_hz = cfg.sample_rate_hz
        self._pacer = Pacer(cfg.sample_rate_hz, cfg.realtime)
        self._reset()

    def _reset(self) -> None:
        cfg, rate = self.cfg, self.sample_rate_hz
        if self.channels is None:
            self.machines = [ScheduledMachine(cfg.schedule, rate, cfg.seed)]
        else:
            self.machines = [
                ScheduledMachine(
                    cfg.schedule if ch.schedule is None else ch.schedule,
                    rate,
                    channel_seed(cfg.seed, ch.input),
                    f" input {ch.input}",
                )
                for ch in self.channels
            ]
        self._emitted = 0
        self._t_start = time.time()
        self._running = False

    @property
    def conditions(self) -> Conditions:
        """Ground truth of the latest sample (of the first channel)."""
        return self.machines[0].conditions

    def start(self) -> None:
        self._reset()
        self._pacer.restart()
        self._running = True
        logger.info(
            "simulator: %d Hz, seed %d, %s, %s",
            self.sample_rate_hz,
            self.cfg.seed,
            ", ".join(f"{len(m.schedule)} schedule step(s){m.label}" for m in self.machines),
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
        columns = [machine.read(n) for machine in self.machines]
        self._emitted += n
        samples = columns[0] if self.channels is None else np.stack(columns, axis=1)
        return Chunk(samples, t_first, 0)

"""What every acquisition source delivers (Chunk), the Source interface, and shared helpers.

A source yields chunks of acceleration in g at `sample_rate_hz`; the windowing
(pipeline.ringbuffer) does not care whether they come from a USB audio interface, a file or
the simulator. `StreamResampler` turns a device rate into the bundle's rate chunk by chunk;
`Pacer` paces file/simulated streams to the wall clock. A multi-channel source reads the
`SourceChannel`s it is given and delivers one column per channel.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from edge_agent.config import SensorConfig, SimulatorStep


class SourceError(RuntimeError):
    """A source that cannot start or read; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Chunk:
    """Consecutive samples from a source.

    samples: float32 acceleration in g, (n,) from a single-channel source, (n, channels) from a
    multi-channel one (column j = the source's channels[j], all columns sample-aligned).
    t_first: time (s, epoch-based stream clock) of the first sample. dropped: samples lost just
    before this chunk (input overflow, slow consumer); > 0 means there is a gap between the
    previous chunk and this one. shaft_hz: the shaft speed measured by the source's tachometer
    channel, when it has one and it is turning.
    """

    samples: np.ndarray
    t_first: float
    dropped: int = 0
    shaft_hz: float | None = None


def chunk_column(chunk: Chunk, j: int) -> np.ndarray:
    """Channel j of a chunk as float32 (n,); a single-channel chunk has channel 0 only."""
    columns = 1 if chunk.samples.ndim == 1 else chunk.samples.shape[1]
    if not 0 <= j < columns:
        raise IndexError(f"chunk has {columns} channel(s), asked for channel {j}")
    return chunk.samples if chunk.samples.ndim == 1 else chunk.samples[:, j]


@dataclass(frozen=True)
class SourceChannel:
    """One sensor channel read by a multi-channel source.

    input: interface channel (sounddevice), column (file) or simulated machine index (simulator).
    sensor: scaling to g of this input (sounddevice, integer/WAV replay); None = the source's
    `sensor` argument. schedule: simulator only; None = the source's own schedule.
    """

    input: int
    sensor: SensorConfig | None = None
    schedule: list[SimulatorStep] | None = None


def check_inputs(channels: Sequence[SourceChannel]) -> list[int]:
    """The channels' inputs; SourceError for no channel, a negative or a repeated input."""
    if len(channels) == 0:
        raise SourceError(
            "channels is empty: give at least one SourceChannel, or None for the source's own "
            "single channel"
        )
    inputs = []
    for j, channel in enumerate(channels):
        value = channel.input
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise SourceError(
                f"channels[{j}].input must be an integer >= 0 (inputs are numbered from 0), "
                f"got {value!r}"
            )
        if value in inputs:
            raise SourceError(
                f"input {value} is listed twice (channels[{inputs.index(value)}] and "
                f"channels[{j}]); each input feeds one channel"
            )
        inputs.append(int(value))
    return inputs


@runtime_checkable
class Source(Protocol):
    name: ClassVar[str]
    sample_rate_hz: int

    def start(self) -> None: ...

    def read(self, timeout_s: float) -> Chunk | None:
        """Next chunk, or None when none arrived within timeout_s (or the source finished)."""
        ...

    def stop(self) -> None: ...

    def __enter__(self) -> Source: ...

    def __exit__(self, *exc: object) -> None: ...


class SourceBase:
    """Context-manager plumbing and the `finished` flag shared by the concrete sources."""

    name: ClassVar[str] = "base"
    sample_rate_hz: int
    finished: bool = False  # True once a finite source has delivered its last chunk

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> SourceBase:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class StreamResampler:
    """Polyphase resampling of a stream in arbitrary chunks, without seams at chunk edges.

    Same filter as scipy.signal.resample_poly; the output is resample_poly's output of the whole
    stream delayed by `delay_out` samples (group delay of the causal filter).
    """

    def __init__(self, from_hz: int, to_hz: int) -> None:
        if from_hz <= 0 or to_hz <= 0:
            raise ValueError(f"sample rates must be > 0, got {from_hz=}, {to_hz=}")
        from scipy.signal import firwin

        ratio = Fraction(int(to_hz), int(from_hz))
        self.up, self.down = ratio.numerator, ratio.denominator
        self.from_hz, self.to_hz = int(from_hz), int(to_hz)
        self.delay_out = 0
        if self.up == self.down:
            return
        max_rate = max(self.up, self.down)
        half_len = 10 * max_rate
        h = firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * self.up
        n_pre_pad = self.down - half_len % self.down
        self._h = np.concatenate([np.zeros(n_pre_pad), h])
        self.delay_out = (half_len + n_pre_pad) // self.down
        blocks = -(-len(self._h) // (self.up * self.down)) + 1
        self._history_len = blocks * self.down  # multiple of down, covers the filter
        self.reset()

    def reset(self) -> None:
        """Forget the past (after a gap): the next output starts from silence."""
        if self.up == self.down:
            return
        self._history = np.zeros(self._history_len, dtype=np.float64)
        self._pending = np.zeros(0, dtype=np.float64)

    def process(self, samples: np.ndarray) -> np.ndarray:
        """(n,) input at from_hz -> float32 (m,) output at to_hz, m ≈ n*up/down."""
        if self.up == self.down:
            return np.asarray(samples, dtype=np.float32)
        from scipy.signal import upfirdn

        self._pending = np.concatenate([self._pending, np.asarray(samples, dtype=np.float64)])
        usable = (len(self._pending) // self.down) * self.down
        if usable == 0:
            return np.zeros(0, dtype=np.float32)
        x = np.concatenate([self._history, self._pending[:usable]])
        self._pending = self._pending[usable:]
        self._history = x[-self._history_len :]
        y = upfirdn(self._h, x, self.up, self.down)
        first = self._history_len * self.up // self.down
        return y[first : first + usable * self.up // self.down].astype(np.float32)


class Pacer:
    """Releases samples no faster than real time (or at once when realtime is False)."""

    def __init__(self, sample_rate_hz: int, realtime: bool) -> None:
        self.sample_rate_hz = sample_rate_hz
        self.realtime = realtime
        self._t0 = time.monotonic()

    def restart(self) -> None:
        self._t0 = time.monotonic()

    def wait_until(self, samples_done: int, timeout_s: float) -> bool:
        """Sleep until `samples_done` samples are due; False if that is beyond timeout_s."""
        if not self.realtime:
            return True
        delay = self._t0 + samples_done / self.sample_rate_hz - time.monotonic()
        if delay > timeout_s:
            time.sleep(max(timeout_s, 0.0))
            return False
        if delay > 0:
            time.sleep(delay)
        return True

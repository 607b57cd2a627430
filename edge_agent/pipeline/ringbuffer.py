"""Cut a chunked sample stream into overlapping windows, exactly like `preprocess.frame`.

`WindowBuffer` keeps the last samples in a preallocated circular array (stored twice, so every
window is one contiguous slice). Pushing chunks of any size and reading `windows()` gives the
same windows as `frame()` on the concatenated signal. Two things break the stream on purpose:

- a gap (`chunk.dropped > 0`): windowing restarts after it, so no window spans lost samples;
- an overrun (the consumer fell behind and unread samples were overwritten): the lost windows
  are skipped and counted in `overruns`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator

import numpy as np

from edge_agent.contract.preprocess import PreprocessSpec
from edge_agent.sources.base import Chunk

logger = logging.getLogger(__name__)


class WindowBuffer:
    """Windows of `window` samples every `hop` samples from pushed chunks.

    Holds `window + hop * (capacity_windows - 1)` samples: up to `capacity_windows` complete
    windows can wait unread. A single chunk longer than `hop * (capacity_windows - 1)` samples
    overruns even with a prompt reader. `sample_rate_hz` converts positions to times.
    """

    def __init__(
        self, window: int, hop: int, capacity_windows: int = 32, *, sample_rate_hz: float
    ) -> None:
        if window < 1 or hop < 1:
            raise ValueError(f"WindowBuffer needs window >= 1 and hop >= 1, got {window=}, {hop=}")
        if capacity_windows < 1:
            raise ValueError(f"capacity_windows must be >= 1, got {capacity_windows}")
        if not sample_rate_hz > 0:
            raise ValueError(f"sample_rate_hz must be > 0, got {sample_rate_hz}")
        self.window, self.hop = window, hop
        self.capacity_windows = capacity_windows
        self.sample_rate_hz = float(sample_rate_hz)
        self.capacity = window + hop * (capacity_windows - 1)  # samples kept
        self._buf = np.zeros(2 * self.capacity, dtype=np.float32)  # mirrored halves
        self._ready: deque[tuple[np.ndarray, float]] = deque()  # windows cut before a gap
        self.overruns = 0  # windows lost because the reader fell behind
        self.dropped_samples = 0  # samples the source reported lost (chunk.dropped)
        self.gaps = 0  # times windowing restarted after a gap
        self.windows_out = 0
        self._restart(t_first=0.0)

    @classmethod
    def from_spec(cls, spec: PreprocessSpec, capacity_windows: int = 32) -> WindowBuffer:
        return cls(spec.window, spec.hop, capacity_windows, sample_rate_hz=spec.sample_rate_hz)

    def _restart(self, t_first: float) -> None:
        self._written = 0  # samples pushed since the (re)start
        self._next = 0  # start of the next window, in the same count
        self._anchor_pos, self._anchor_t = 0, t_first

    @property
    def pending(self) -> int:
        """Complete windows waiting to be read."""
        ahead = self._written - self.window - self._next
        return len(self._ready) + (ahead // self.hop + 1 if ahead >= 0 else 0)

    def push(self, chunk: Chunk) -> None:
        """Append a chunk (float32 (n,) in g); a chunk with dropped > 0 starts a new segment."""
        x = np.asarray(chunk.samples, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"chunk samples must be 1-D, got shape {x.shape}")
        if chunk.dropped > 0:
            self.dropped_samples += int(chunk.dropped)
            self.gaps += 1
            self._keep_unread_windows()
            self._restart(chunk.t_first)
        self._anchor_pos, self._anchor_t = self._written, float(chunk.t_first)
        n = len(x)
        if n == 0:
            return
        if n > self.capacity:  # only the tail can be kept
            self._write(x[-self.capacity :], self._written + n - self.capacity)
        else:
            self._write(x, self._written)
        self._written += n
        oldest = self._written - self.capacity
        if self._next < oldest:
            lost = -(-(oldest - self._next) // self.hop)
            self._next += lost * self.hop
            self.overruns += lost
            logger.debug("window buffer overrun: %d windows lost", lost)

    def _write(self, x: np.ndarray, at: int) -> None:
        """Store x at stream position `at` in both halves of the mirrored array."""
        c = self.capacity
        p = at % c
        first = min(len(x), c - p)
        self._buf[p : p + first] = x[:first]
        self._buf[p + c : p + c + first] = x[:first]
        rest = len(x) - first
        if rest:
            self._buf[:rest] = x[first:]
            self._buf[c : c + rest] = x[first:]

    def _keep_unread_windows(self) -> None:
        """Before a restart: copy out complete unread windows (bounded by capacity_windows)."""
        for item in self._cut():
            self._ready.append(item)
        while len(self._ready) > self.capacity_windows:
            self._ready.popleft()
            self.overruns += 1

    def _cut(self) -> Iterator[tuple[np.ndarray, float]]:
        while self._next + self.window <= self._written:
            start = self._next
            p = start % self.capacity
            last = start + self.window - 1
            t_end = self._anchor_t + (last - self._anchor_pos) / self.sample_rate_hz
            self._next += self.hop
            yield self._buf[p : p + self.window].copy(), t_end

    def windows(self) -> Iterator[tuple[np.ndarray, float]]:
        """Yield each complete unread window: (float32 (window,), t_end = its last sample time)."""
        while self._ready:
            self.windows_out += 1
            yield self._ready.popleft()
        for item in self._cut():
            self.windows_out += 1
            yield item

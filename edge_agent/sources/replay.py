"""Replay a recording (WAV, NPY or CSV) as if a sensor were streaming it.

The whole file is read, checked and scaled to g when the source is built, so a wrong rate or a
corrupt file fails at start-up, not mid-shift. Paced to the wall clock or as fast as possible,
optionally looping. With `channels`, several columns are replayed side by side, each scaled
with its own sensor. numpy + scipy only (nothing from train/).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from edge_agent.config import FileSourceConfig, SensorConfig
from edge_agent.contract.preprocess import adc_to_g, resample
from edge_agent.sources.base import (
    Chunk,
    Pacer,
    SourceBase,
    SourceChannel,
    SourceError,
    check_inputs,
)

logger = logging.getLogger(__name__)

SUFFIXES = (".wav", ".npy", ".csv")


def read_recording(path: Path) -> tuple[np.ndarray, int | None]:
    """Samples of a recording, (n,) or (n, channels) in the file's dtype, and its rate (WAV only).

    Raises SourceError for a missing, unsupported, empty or unreadable file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise SourceError(f"{path}: unsupported recording type {suffix!r}; use one of {SUFFIXES}")
    if not path.is_file():
        raise SourceError(f"{path}: replay file not found; check source.path")
    rate: int | None = None
    try:
        if suffix == ".wav":
            from scipy.io import wavfile

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", wavfile.WavFileWarning)
                rate, data = wavfile.read(path)
            for warning in caught:  # e.g. "Reached EOF prematurely": a file cut mid-data
                logger.warning(
                    "%s: %s; the file is damaged (cut short?), only what it holds is used",
                    path, warning.message,
                )  # fmt: skip
            if data.dtype == np.uint8:  # 8-bit WAV is unsigned, centred on 128
                data = (data.astype(np.int16) - 128).astype(np.int8)
        elif suffix == ".npy":
            data = np.load(path, allow_pickle=False, mmap_mode="r")  # read as needed
        else:
            data = _read_csv(path)
    except SourceError:
        raise
    except Exception as exc:  # each reader raises its own types for truncated/garbled files
        raise SourceError(
            f"{path}: cannot read as {suffix[1:].upper()} ({type(exc).__name__}: {exc}); "
            "the file is corrupt or not what its name says"
        ) from exc
    if data.size == 0:
        raise SourceError(f"{path}: contains no samples; record some or check the path")
    if data.ndim not in (1, 2):
        raise SourceError(f"{path}: expected (samples,) or (samples, channels), got {data.shape}")
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise SourceError(f"{path}: samples must be numbers, got dtype {data.dtype}")
    return data, rate


def _read_csv(path: Path) -> np.ndarray:
    """Numeric CSV, one row per sample; a single header line is skipped."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
        try:
            return np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float32)
        except ValueError:
            return np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float32, skiprows=1)


class ReplaySource(SourceBase):
    """Streams a recording in g at its own rate (or the bundle's, resampled).

    One column (`cfg.channel`) as (n,), or with `channels` the columns channels[j].input as
    (n, len(channels)). Scaling: `cfg.scale_g` (g per file unit) if set; else integer data and
    WAV files are ADC output converted with the sensor's settings (channels[j].sensor, else
    `sensor`); float NPY/CSV are taken as g already.
    """

    name: ClassVar[str] = "file"

    def __init__(
        self,
        cfg: FileSourceConfig,
        sensor: SensorConfig | None = None,
        target_rate_hz: int | None = None,
        *,
        channels: Sequence[SourceChannel] | None = None,
    ) -> None:
        self.cfg = cfg
        path = Path(cfg.path)
        data, header_rate = read_recording(path)
        rate = self._rate(path, header_rate)
        table = data if data.ndim == 2 else data[:, None]  # (n, columns)
        if channels is None:
            if cfg.channel >= table.shape[1]:
                raise SourceError(
                    f"{path}: source.channel {cfg.channel} asked for, but the file has "
                    f"{table.shape[1]} channel(s) (numbered from 0)"
                )
            g = self._to_g(path, table[:, cfg.channel], sensor)
        else:
            check_inputs(channels)
            g = np.empty((table.shape[0], len(channels)), np.float32)  # one copy of the file
            for j, ch in enumerate(channels):
                g[:, j] = self._column_g(path, table, ch, sensor)
        del data, table  # a memory-mapped NPY is released here
        if target_rate_hz is not None and target_rate_hz != rate:
            if not cfg.resample:
                raise SourceError(
                    f"{path}: recorded at {rate} Hz but the bundle needs {target_rate_hz} Hz; "
                    "set source.resample = true or replay a matching recording"
                )
            g = resample(g.T, rate, target_rate_hz).T  # along time, per column
            rate = target_rate_hz
        self.samples_g = np.ascontiguousarray(g, dtype=np.float32)
        self.sample_rate_hz = int(rate)
        self._pos = 0
        self._emitted = 0
        self._t_start = 0.0
        self._pacer = Pacer(self.sample_rate_hz, cfg.realtime)
        self._running = False

    @property
    def duration_s(self) -> float:
        return len(self.samples_g) / self.sample_rate_hz

    def _rate(self, path: Path, header_rate: int | None) -> int:
        configured = self.cfg.sample_rate_hz
        if header_rate is None:
            if configured is None:
                raise SourceError(
                    f"{path}: {path.suffix} files carry no sample rate; set source.sample_rate_hz"
                )
            return configured
        if configured is not None and configured != header_rate:
            raise SourceError(
                f"{path}: the WAV header says {header_rate} Hz but source.sample_rate_hz is "
                f"{configured} Hz; remove source.sample_rate_hz or fix it"
            )
        return int(header_rate)

    def _column_g(
        self,
        path: Path,
        table: np.ndarray,
        channel: SourceChannel,
        sensor: SensorConfig | None,
    ) -> np.ndarray:
        """Column channel.input of the (n, columns) table in g; SourceError if absent.

        NaN stays in: the agent's sensor check flags those windows on that channel alone."""
        index = channel.input
        if index >= table.shape[1]:
            raise SourceError(
                f"{path}: channel input {index} asked for, but the file has {table.shape[1]} "
                "column(s) (numbered from 0)"
            )
        return self._to_g(path, table[:, index], channel.sensor or sensor)

    def _to_g(self, path: Path, column: np.ndarray, sensor: SensorConfig | None) -> np.ndarray:
        if self.cfg.scale_g is not None:
            return column.astype(np.float32) * np.float32(self.cfg.scale_g)
        is_adc = np.issubdtype(column.dtype, np.integer) or path.suffix.lower() == ".wav"
        if not is_adc:
            return column.astype(np.float32)
        if sensor is None:
            raise SourceError(
                f"{path}: ADC samples need the [sensor] settings (sensitivity_mv_per_g, "
                "full_scale_volts) to become g; pass them or set source.scale_g"
            )
        return adc_to_g(
            column,
            sensitivity_mv_per_g=sensor.sensitivity_mv_per_g,
            full_scale_volts=sensor.full_scale_volts,
        )

    def start(self) -> None:
        self._pos = 0
        self._emitted = 0
        self.finished = False
        self._t_start = time.time()
        self._pacer.restart()
        self._running = True
        logger.info(
            "file: replaying %s (%.1f s at %d Hz, %s%s)",
            self.cfg.path,
            self.duration_s,
            self.sample_rate_hz,
            "realtime" if self.cfg.realtime else "fast",
            ", looping" if self.cfg.loop else "",
        )

    def read(self, timeout_s: float) -> Chunk | None:
        if not self._running:
            raise SourceError("file source: call start() (or use `with`) before read()")
        if self.finished:
            return None
        if self._pos >= len(self.samples_g):
            if not self.cfg.loop:
                self.finished = True
                return None
            self._pos = 0
        n = min(self.cfg.chunk_samples, len(self.samples_g) - self._pos)
        if not self._pacer.wait_until(self._emitted + n, timeout_s):
            return None
        samples = self.samples_g[self._pos : self._pos + n].copy()
        chunk = Chunk(samples, self._t_start + self._emitted / self.sample_rate_hz, 0)
        self._pos += n
        self._emitted += n
        if self._pos >= len(self.samples_g) and not self.cfg.loop:
            self.finished = True
        return chunk

    def stop(self) -> None:
        self._running = False

"""Live acquisition from a USB audio interface (any PortAudio input) through sounddevice.

The PortAudio callback only copies the sensor channel(s) into a bounded queue; it never blocks.
When the agent falls behind, whole blocks are dropped and counted, and the next chunk carries
`dropped` > 0 so no window spans the gap. Scaling to g and resampling happen in `read()`.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from edge_agent.config import SensorConfig, SoundDeviceSourceConfig
from edge_agent.contract.preprocess import adc_to_g
from edge_agent.sources.base import (
    Chunk,
    SourceBase,
    SourceChannel,
    SourceError,
    StreamResampler,
    check_inputs,
)
from edge_agent.sources.tacho import TachoCounter

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "sounddevice source needs the sounddevice package and libportaudio2: "
    "apt install libportaudio2 (and pip install sounddevice)"
)


def import_sounddevice() -> Any:
    """Import sounddevice lazily; SourceError with an install hint if it or PortAudio is missing."""
    try:
        import sounddevice
    except (ImportError, OSError) as exc:  # OSError: "PortAudio library not found"
        raise SourceError(f"{INSTALL_HINT} ({exc})") from exc
    return sounddevice


def list_input_devices(sd: Any) -> list[str]:
    """`index: name (channels in, rate Hz)` for every device that can record."""
    try:
        devices = sd.query_devices()
    except Exception as exc:  # PortAudio can fail while enumerating broken devices
        return [f"(could not list devices: {exc})"]
    return [
        f"{i}: {d['name']} ({d['max_input_channels']} in, {d['default_samplerate']:.0f} Hz)"
        for i, d in enumerate(devices)
        if d["max_input_channels"] > 0
    ]


class AudioSource(SourceBase):
    """Reads channels of a PortAudio input stream, scaled to g.

    `cfg.channel` as (n,), or with `channels` the interface channels channels[j].input as
    (n, len(channels)), each scaled with its own sensor (channels[j].sensor, else `sensor`).
    Delivers at the interface rate, or at `target_rate_hz` when `cfg.resample` is on.
    `overflows` counts PortAudio input overflows; `dropped_total` all samples lost.
    """

    name: ClassVar[str] = "sounddevice"

    def __init__(
        self,
        cfg: SoundDeviceSourceConfig,
        sensor: SensorConfig | None,
        target_rate_hz: int | None = None,
        *,
        channels: Sequence[SourceChannel] | None = None,
    ) -> None:
        self.cfg, self.sensor, self.channels = cfg, sensor, channels
        self._inputs = np.array(self._check_inputs(cfg, channels), dtype=np.intp)
        sensors = [sensor] if channels is None else [ch.sensor or sensor for ch in channels]
        if any(s is None for s in sensors):
            raise SourceError("sounddevice source needs the [sensor] settings to scale to g")
        self._scales = [
            dict(sensitivity_mv_per_g=s.sensitivity_mv_per_g, full_scale_volts=s.full_scale_volts)
            for s in sensors  # type: ignore[union-attr]
        ]
        rate = cfg.sample_rate_hz
        self._resamplers: list[StreamResampler] | None = None
        if target_rate_hz is not None and target_rate_hz != rate:
            if not cfg.resample:
                raise SourceError(
                    f"sounddevice source runs at {rate} Hz but the bundle needs "
                    f"{target_rate_hz} Hz; set source.resample = true or "
                    f"source.sample_rate_hz = {target_rate_hz}"
                )
            self._resamplers = [StreamResampler(rate, target_rate_hz) for _ in self._inputs]
        self.sample_rate_hz = target_rate_hz if self._resamplers else rate
        self.overflows = 0
        self.dropped_total = 0
        self._queue: queue.Queue[tuple[np.ndarray, np.ndarray | None, float, int]] = queue.Queue(
            cfg.queue_blocks
        )
        self._tacho = (
            None
            if cfg.tacho_channel is None
            else TachoCounter(cfg.sample_rate_hz, cfg.tacho_pulses_per_rev)
        )
        self._lost = 0  # samples lost since the last queued block (callback thread only)
        self._stream: Any = None
        self._carry_dropped = 0
        self._out_t0 = 0.0
        self._out_count = 0
        self._fresh = True

    @staticmethod
    def _check_inputs(
        cfg: SoundDeviceSourceConfig, channels: Sequence[SourceChannel] | None
    ) -> list[int]:
        """Interface channels to copy, one per delivered column; SourceError if one is not open."""
        if channels is None:
            return [cfg.channel]
        inputs = check_inputs(channels)
        for input_ in inputs:
            if input_ >= cfg.channels:
                raise SourceError(
                    f"channel input {input_} is not recorded: source.channels = {cfg.channels} "
                    f"opens inputs 0..{cfg.channels - 1}; raise source.channels"
                )
            if input_ == cfg.tacho_channel:
                raise SourceError(
                    f"channel input {input_} is also source.tacho_channel; a sensor needs its "
                    "own input"
                )
        return inputs

    def start(self) -> None:
        if self._stream is not None:
            return
        sd = import_sounddevice()
        cfg = self.cfg
        device = self._check_device(sd)
        try:
            sd.check_input_settings(
                device=device,
                channels=cfg.channels,
                dtype=cfg.dtype,
                samplerate=cfg.sample_rate_hz,
            )
            self._stream = sd.InputStream(
                samplerate=cfg.sample_rate_hz,
                blocksize=cfg.blocksize,
                device=device,
                channels=cfg.channels,
                dtype=cfg.dtype,
                latency="high",
                callback=self._callback,
            )
            self._stream.start()
        except (ValueError, sd.PortAudioError) as exc:
            self._stream = None
            raise SourceError(
                f"input device {device} cannot record {cfg.channels} channel(s) of "
                f"{cfg.dtype} at {cfg.sample_rate_hz} Hz ({exc}); check source.sample_rate_hz, "
                "source.channels and source.dtype against the interface"
            ) from exc
        logger.info(
            "sounddevice: recording device %s channel %s of %d at %d Hz (%s)%s",
            device,
            ", ".join(map(str, self._inputs)),
            cfg.channels,
            cfg.sample_rate_hz,
            cfg.dtype,
            f", resampled to {self.sample_rate_hz} Hz" if self._resamplers else "",
        )

    def _check_device(self, sd: Any) -> int:
        """Index of the configured input device; SourceError listing the inputs if absent."""
        wanted = self.cfg.device
        try:
            info = sd.query_devices(wanted, kind="input")
        except (ValueError, sd.PortAudioError) as exc:
            inputs = list_input_devices(sd) or ["(none)"]
            what = "no default input device" if wanted is None else f"input device {wanted!r}"
            raise SourceError(
                f"{what} not found ({exc}). Available input devices: {'; '.join(inputs)}. "
                "Set source.device to one of these names or indices"
            ) from exc
        if info["max_input_channels"] < self.cfg.channels:
            raise SourceError(
                f"input device {info['name']!r} has {info['max_input_channels']} input channels, "
                f"source.channels asks for {self.cfg.channels}"
            )
        return int(info["index"])

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio thread: copy the sensor channels out (one take), never block."""
        lost = 0
        if status.input_overflow:
            self.overflows += 1
            lost = frames  # PortAudio does not say how much was lost; count one block
        tacho = None if self.cfg.tacho_channel is None else indata[:, self.cfg.tacho_channel].copy()
        item = (np.take(indata, self._inputs, axis=1), tacho, time.time(), self._lost + lost)
        try:
            self._queue.put_nowait(item)
            self._lost = 0
        except queue.Full:
            self._lost += lost + frames

    def read(self, timeout_s: float) -> Chunk | None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                raw, tacho, t_callback, lost = self._queue.get(
                    timeout=max(deadline - time.monotonic(), 0.0)
                )
            except queue.Empty:
                stream = self._stream
                if stream is not None and not stream.active:
                    raise SourceError(
                        "sounddevice: the input stream stopped (interface unplugged or "
                        "PortAudio error); restart the agent"
                    ) from None
                return None
            if self._tacho is not None and tacho is not None:
                self._tacho.feed(tacho)
            chunk = self._convert(raw, t_callback, lost)
            if chunk is not None:
                return chunk

    def _convert(self, raw: np.ndarray, t_callback: float, lost: int) -> Chunk | None:
        """(n, inputs) ADC block -> chunk in g, resampled; None while the resampler fills."""
        columns = [adc_to_g(raw[:, j], **scale) for j, scale in enumerate(self._scales)]
        t_first_in = t_callback - len(raw) / self.cfg.sample_rate_hz
        if lost:
            self.dropped_total += lost
            scale = self.sample_rate_hz / self.cfg.sample_rate_hz
            self._carry_dropped += max(1, round(lost * scale))
            self._fresh = True
        t_first = t_first_in
        if self._resamplers is not None:
            if self._fresh:
                for resampler in self._resamplers:
                    resampler.reset()
                delay_out = self._resamplers[0].delay_out
                self._out_t0 = t_first_in - delay_out / self.sample_rate_hz
                self._out_count = 0
            columns = [r.process(x) for r, x in zip(self._resamplers, columns, strict=True)]
            t_first = self._out_t0 + self._out_count / self.sample_rate_hz
            self._out_count += len(columns[0])
        self._fresh = False
        if len(columns[0]) == 0:
            return None
        out = columns[0] if self.channels is None else np.stack(columns, axis=1)
        dropped, self._carry_dropped = self._carry_dropped, 0
        shaft_hz = None if self._tacho is None else self._tacho.shaft_hz
        return Chunk(out, t_first, dropped, shaft_hz)

    def stop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            return
        try:
            stream.abort()  # unlike stop(), does not wait for buffers a stalled driver never fills
        finally:
            stream.close()
        if self.dropped_total:
            logger.warning(
                "sounddevice: %d samples dropped (%d input overflows)",
                self.dropped_total,
                self.overflows,
            )

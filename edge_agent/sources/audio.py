"""Live acquisition from a USB audio interface (any PortAudio input) through sounddevice.

The PortAudio callback only copies the sensor channel into a bounded queue; it never blocks.
When the agent falls behind, whole blocks are dropped and counted, and the next chunk carries
`dropped` > 0 so no window spans the gap. Scaling to g and resampling happen in `read()`.
"""

from __future__ import annotations

import logging
import queue
import time
from typing import Any, ClassVar

import numpy as np

from edge_agent.config import SensorConfig, SoundDeviceSourceConfig
from edge_agent.contract.preprocess import adc_to_g
from edge_agent.sources.base import Chunk, SourceBase, SourceError, StreamResampler
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
    """Reads one channel of a PortAudio input stream, scaled to g.

    Delivers at the interface rate, or at `target_rate_hz` when `cfg.resample` is on.
    `overflows` counts PortAudio input overflows; `dropped_total` all samples lost.
    """

    name: ClassVar[str] = "sounddevice"

    def __init__(
        self,
        cfg: SoundDeviceSourceConfig,
        sensor: SensorConfig,
        target_rate_hz: int | None = None,
    ) -> None:
        self.cfg, self.sensor = cfg, sensor
        rate = cfg.sample_rate_hz
        self._resampler: StreamResampler | None = None
        if target_rate_hz is not None and target_rate_hz != rate:
            if not cfg.resample:
                raise SourceError(
                    f"sounddevice source runs at {rate} Hz but the bundle needs "
                    f"{target_rate_hz} Hz; set source.resample = true or "
                    f"source.sample_rate_hz = {target_rate_hz}"
                )
            self._resampler = StreamResampler(rate, target_rate_hz)
        self.sample_rate_hz = target_rate_hz if self._resampler else rate
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
            "sounddevice: recording device %s channel %d of %d at %d Hz (%s)%s",
            device,
            cfg.channel,
            cfg.channels,
            cfg.sample_rate_hz,
            cfg.dtype,
            f", resampled to {self.sample_rate_hz} Hz" if self._resampler else "",
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
        """PortAudio thread: copy the sensor channel out, never block."""
        lost = 0
        if status.input_overflow:
            self.overflows += 1
            lost = frames  # PortAudio does not say how much was lost; count one block
        tacho = None if self.cfg.tacho_channel is None else indata[:, self.cfg.tacho_channel].copy()
        item = (indata[:, self.cfg.channel].copy(), tacho, time.time(), self._lost + lost)
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
        g = adc_to_g(
            raw,
            sensitivity_mv_per_g=self.sensor.sensitivity_mv_per_g,
            full_scale_volts=self.sensor.full_scale_volts,
        )
        t_first_in = t_callback - len(raw) / self.cfg.sample_rate_hz
        if lost:
            self.dropped_total += lost
            scale = self.sample_rate_hz / self.cfg.sample_rate_hz
            self._carry_dropped += max(1, round(lost * scale))
            self._fresh = True
        if self._resampler is None:
            out, t_first = g, t_first_in
        else:
            if self._fresh:
                self._resampler.reset()
                self._out_t0 = t_first_in - self._resampler.delay_out / self.sample_rate_hz
                self._out_count = 0
            out = self._resampler.process(g)
            t_first = self._out_t0 + self._out_count / self.sample_rate_hz
            self._out_count += len(out)
        self._fresh = False
        if len(out) == 0:
            return None
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

"""Acquisition sources behind one interface; the TOML's `source.type` picks one.

with make_source(cfg.source, cfg.sensor, target_rate_hz=manifest_rate) as source:
    chunk = source.read(timeout_s=1.0)   # Chunk(samples g, t_first, dropped) or None
"""

from __future__ import annotations

from edge_agent.config import SensorConfig, SourceConfig
from edge_agent.sources.audio import AudioSource
from edge_agent.sources.base import Chunk, Source, SourceError, StreamResampler
from edge_agent.sources.replay import ReplaySource
from edge_agent.sources.simulator import SimulatorSource

SOURCES: dict[str, type] = {
    "sounddevice": AudioSource,
    "file": ReplaySource,
    "simulator": SimulatorSource,
}

__all__ = [
    "SOURCES",
    "AudioSource",
    "Chunk",
    "ReplaySource",
    "SimulatorSource",
    "Source",
    "SourceError",
    "StreamResampler",
    "make_source",
]


def make_source(
    cfg: SourceConfig, sensor: SensorConfig | None = None, target_rate_hz: int | None = None
) -> Source:
    """Build the source named by `cfg.type`.

    sensor: ADC scaling (needed by sounddevice and integer/WAV replays). target_rate_hz: the
    bundle's rate; a source at another rate resamples (`resample = true`) or raises SourceError.
    """
    kind = getattr(cfg, "type", None)
    if kind not in SOURCES:
        raise SourceError(f"unknown source type {kind!r}; valid: {', '.join(SOURCES)}")
    if kind == "sounddevice":
        if sensor is None:
            raise SourceError("sounddevice source needs the [sensor] settings to scale to g")
        return AudioSource(cfg, sensor, target_rate_hz)  # type: ignore[arg-type]
    if kind == "file":
        return ReplaySource(cfg, sensor, target_rate_hz)  # type: ignore[arg-type]
    return SimulatorSource(cfg, target_rate_hz)  # type: ignore[arg-type]

"""Acquisition sources behind one interface; the TOML's `source.type` picks one.

with make_source(cfg.source, cfg.sensor, target_rate_hz=manifest_rate) as source:
    chunk = source.read(timeout_s=1.0)   # Chunk(samples g, t_first, dropped) or None

With `channels=[SourceChannel(0), SourceChannel(2, sensor=...)]` one source reads several
sensors: `chunk.samples` is (n, 2), column j from channels[j].
"""

from __future__ import annotations

from collections.abc import Sequence

from edge_agent.config import SensorConfig, SourceConfig
from edge_agent.sources.audio import AudioSource
from edge_agent.sources.base import (
    Chunk,
    Source,
    SourceChannel,
    SourceError,
    StreamResampler,
    chunk_column,
)
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
    "SourceChannel",
    "SourceError",
    "StreamResampler",
    "chunk_column",
    "make_source",
]


def make_source(
    cfg: SourceConfig,
    sensor: SensorConfig | None = None,
    target_rate_hz: int | None = None,
    *,
    channels: Sequence[SourceChannel] | None = None,
) -> Source:
    """Build the source named by `cfg.type`.

    sensor: ADC scaling (needed by sounddevice and integer/WAV replays). target_rate_hz: the
    bundle's rate; a source at another rate resamples (`resample = true`) or raises SourceError.
    channels: None reads `cfg.channel` as (n,) chunks; else one (n, len(channels)) column per
    SourceChannel, and `cfg.channel` is ignored.
    """
    kind = getattr(cfg, "type", None)
    if kind not in SOURCES:
        raise SourceError(f"unknown source type {kind!r}; valid: {', '.join(SOURCES)}")
    if kind == "sounddevice":
        return AudioSource(cfg, sensor, target_rate_hz, channels=channels)  # type: ignore[arg-type]
    if kind == "file":
        return ReplaySource(cfg, sensor, target_rate_hz, channels=channels)  # type: ignore[arg-type]
    return SimulatorSource(cfg, target_rate_hz, channels=channels)  # type: ignore[arg-type]

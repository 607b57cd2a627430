"""Physics evidence on a live channel: envelope analysis once a second, and what it means.

`EvidenceStream` keeps the last `EVIDENCE_SAMPLES` samples of the channel (from the new part of
each sensor-valid window), picks the resonance band by spectral kurtosis once it has
`BAND_SECONDS` of signal (and again every `REBAND_S`), and every `every_s` scores the defect
lines of the configured bearing at the configured or estimated shaft speed
(`physics.evidence`). A line counts as *clear* when the same fault class is `strongest` in
`PERSIST` readings in a row; `clear_class` is then that class, else None.

`basis(model_class, factory_head, labeled)` says who decides the published diagnosis: the model
alone (`model`), model and evidence agreeing (`both`), or, where a clear line disagrees with a
head that has no operator's label for the window, the evidence (`evidence`): while the device
still runs the factory head (never calibrated here, so possibly out of its depth on this
machine), and after calibration on windows beyond the reach of the labels (`calibration.reach`:
another bearing, size or load than the labeled ones). `bearing.follow_evidence = "uncalibrated"`
keeps the first only, `"never"` neither.
"""

from __future__ import annotations

import logging
from collections import deque

import numpy as np

from edge_agent.config import BearingConfig
from edge_agent.physics.evidence import (
    Band,
    EnvelopeEvidence,
    EvidenceError,
    estimate_shaft_hz,
    evidence,
)
from edge_agent.physics.evidence import select_band as band_by_kurtosis

logger = logging.getLogger(__name__)

EVIDENCE_SAMPLES = 4096  # 0.34 s at 12 kHz: the CWRU lines need this much (2048 is not enough)
BAND_SECONDS = 2.0  # signal the band is chosen from
REBAND_S = 600.0  # choose the band again this often (window time)
PERSIST = 3  # readings in a row with the same strongest class make a clear line


class EvidenceStream:
    """Envelope evidence of one channel (see the module docstring). Times are window times, s."""

    def __init__(self, cfg: BearingConfig, sample_rate_hz: int, every_s: float = 1.0) -> None:
        self.cfg, self.fs, self.every_s = cfg, int(sample_rate_hz), float(every_s)
        self.geometry = cfg.geometry()
        keep = max(EVIDENCE_SAMPLES, int(BAND_SECONDS * self.fs))
        self._ring = np.zeros(keep, dtype=np.float32)
        self._write = 0  # next slot of the ring
        self._filled = 0
        self._band: Band | None = None
        self._band_at = -np.inf
        self._next_at = -np.inf
        self._recent: deque[str | None] = deque(maxlen=PERSIST)
        self.latest: EnvelopeEvidence | None = None
        self.measured_shaft_hz: float | None = None  # from a tachometer channel, when there is one

    @property
    def clear_class(self) -> str | None:
        """The fault class of a line that stood out in the last PERSIST readings, else None."""
        if len(self._recent) < PERSIST or self._recent[0] is None:
            return None
        return self._recent[0] if len(set(self._recent)) == 1 else None

    def feed(self, new_samples_g: np.ndarray, t: float) -> EnvelopeEvidence | None:
        """Append the window's new samples (g); returns a fresh reading when one was due."""
        x = np.asarray(new_samples_g, dtype=np.float32)[-len(self._ring) :]
        slots = (self._write + np.arange(len(x))) % len(self._ring)
        self._ring[slots] = x
        self._write = (self._write + len(x)) % len(self._ring)
        self._filled = min(len(self._ring), self._filled + len(x))
        if t < self._next_at or self._filled < len(self._ring):
            return None
        self._next_at = t + self.every_s
        signal = np.concatenate([self._ring[self._write :], self._ring[: self._write]])
        try:
            if self._band is None or t - self._band_at >= REBAND_S:
                self._band, self._band_at = band_by_kurtosis(signal, self.fs), t
            shaft_hz = self._shaft_hz(signal)
            reading = evidence(signal[-EVIDENCE_SAMPLES:], self.fs, shaft_hz, self.geometry,
                               self._band)  # fmt: skip
        except EvidenceError as exc:  # a flat or odd stretch: no reading this time
            logger.debug("evidence skipped: %s", exc)
            self._recent.append(None)
            return None
        self.latest = reading
        self._recent.append(reading.strongest)
        return reading

    def basis(
        self, model_class: str | None, factory_head: bool, labeled: bool
    ) -> tuple[str, str | None]:
        """`who_decides` given this stream's clear line and follow_evidence."""
        return who_decides(
            self.clear_class, model_class, factory_head, labeled, self.cfg.follow_evidence
        )

    def known_shaft_hz(self) -> float | None:
        """The shaft speed as far as it is known now: configured, measured by a tachometer, or
        the latest reading's estimate; None before the first estimate."""
        if self.cfg.shaft_rpm is not None:
            return self.cfg.shaft_rpm / 60.0
        if self.measured_shaft_hz is not None:
            return self.measured_shaft_hz
        return self.latest.shaft_hz if self.latest is not None else None

    def _shaft_hz(self, signal: np.ndarray) -> float:
        if self.cfg.shaft_rpm is not None:
            return self.cfg.shaft_rpm / 60.0
        if self.measured_shaft_hz is not None:
            return self.measured_shaft_hz
        lo, hi = self.cfg.shaft_search_rpm
        return estimate_shaft_hz(signal, self.fs, lo / 60.0, hi / 60.0)


def who_decides(
    clear: str | None, model_class: str | None, factory_head: bool, labeled: bool, follow: str
) -> tuple[str, str | None]:
    """(basis, the class to publish instead of the model's, or None to keep the model's), given
    the clear line's class (`clear`, None: no clear line), whether the head is the factory's,
    whether the window lies within reach of the labels it was refitted on (`labeled`) and
    `bearing.follow_evidence` (`follow`)."""
    if clear is None:
        return "model", None
    if clear == model_class:
        return "both", None
    if (factory_head and follow != "never") or (follow == "unlabeled" and not labeled):
        return "evidence", clear
    return "model", None

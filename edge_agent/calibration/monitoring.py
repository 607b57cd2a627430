"""Per-channel condition monitoring beside the classifier: no I/O, findings to publish.

For each window that passed the sensor checks, `ConditionMonitor.window()`:

- scores drift against this device's own commissioned baseline on every window (`Commissioning`),
  whatever class the head gives it: a sustained rise is a `drift` warning, its end an info;
- until that baseline exists, scores the distance of windows decided normal to the bundle's
  training fleet (`DriftMonitor`) and says, as information, when the machine sits outside it
  (a foreign machine, not a degrading one: calibrate or renormalize);
- computes the condition indicators of every non-overlapping window and trends them against the
  commissioning baseline (`HealthTrend`): a sustained rise is a `health` alarm.

The health baseline is stored in `state_dir/health.json` (indicators do not depend on the model,
so it survives bundle updates). The `commission` command restarts both learning periods.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.calibration.commissioning import Commissioning
from edge_agent.calibration.drift import DriftMonitor, DriftReading
from edge_agent.calibration.health import HealthParams, HealthReading, HealthTrend, Indicators
from edge_agent.calibration.health import condition_indicators as indicators_of
from edge_agent.config import AgentConfig
from edge_agent.contract.bundle import Manifest
from edge_agent.contract.durable import atomic_write
from edge_agent.physics.stream import EvidenceStream

logger = logging.getLogger(__name__)

HEALTH_FILE = "health.json"
REPEAT_S = 3600.0  # a standing drift finding is repeated this often (window time)
MAX_HEALTH_COMMISSION_WINDOWS = 2000


@dataclass(frozen=True)
class Finding:
    """Something worth an event: kind (`drift` or `health`), severity and one line."""

    kind: str
    severity: str
    message: str
    drift_score: float | None = None


class ConditionMonitor:
    """Commissioning, drift and health of one channel (see the module docstring)."""

    def __init__(self, cfg: AgentConfig, manifest: Manifest, stride: int) -> None:
        spec = manifest.preprocessing
        self.sample_rate_hz, self.stride = spec.sample_rate_hz, stride
        window_s = stride * spec.hop / spec.sample_rate_hz  # between non-overlapping windows
        c = cfg.commissioning
        threshold = cfg.decisions.drift_threshold or manifest.thresholds.drift_score
        self.commissioning = Commissioning(
            cfg.state_dir, manifest.model_version, manifest.embedding_dim,
            period_s=c.period_s, min_windows=c.min_windows,
            drift_window=cfg.decisions.drift_window, threshold=threshold,
        )  # fmt: skip
        if self.commissioning.baseline is None and c.automatic:
            self.commissioning.start()
        try:
            self.fleet: DriftMonitor | None = DriftMonitor(
                manifest.reference_stats, manifest.normal_class, cfg.decisions.drift_window,
                threshold,
            )  # fmt: skip
        except ValueError as exc:
            logger.warning("fleet drift off: %s", exc)
            self.fleet = None
        learn = max(c.min_windows, min(MAX_HEALTH_COMMISSION_WINDOWS, int(c.period_s / window_s)))
        self.health_params = HealthParams(
            commission_windows=learn,
            machine_group=cfg.health.machine_group,
            foundation=cfg.health.foundation,
        )
        self.health_path = Path(cfg.state_dir) / HEALTH_FILE
        self.trend = self._load_trend()
        self.hop = spec.hop
        self.evidence = (
            None if cfg.bearing is None else EvidenceStream(cfg.bearing, spec.sample_rate_hz)
        )
        self._fed_evidence = False
        self._confirmed: str | None = None  # fault state the evidence confirmed (once each)
        self.indicators: Indicators | None = None  # of the latest non-overlapping window
        self.health: HealthReading | None = None
        self.device_drift: DriftReading | None = None
        self.fleet_drift: DriftReading | None = None
        self._valid = 0
        self._alerted: dict[str, float] = {}  # finding key -> window time it was last raised

    # ---- per window --------------------------------------------------------------------------

    def unknown_threshold(self, bundle_threshold: float | None) -> float | None:
        """The open-set threshold in force: None (no open-set decision) until this device is
        commissioned, then the larger of the bundle's and the device's own."""
        baseline = self.commissioning.baseline
        if bundle_threshold is None or baseline is None or baseline.unknown_above is None:
            return None
        return max(bundle_threshold, baseline.unknown_above)

    def window(
        self,
        raw_g: np.ndarray,
        emb: np.ndarray,
        state: str,
        decided_normal: bool,
        t: float,
        unknown_score: float | None = None,
    ) -> list[Finding]:
        """One sensor-valid window: raw (W,) g, raw embedding (D,), the debounced state, whether
        that state and this window's label are the normal class, and its end time (s)."""
        findings: list[Finding] = []
        if self.evidence is not None:
            new = raw_g if not self._fed_evidence else raw_g[-self.hop :]
            self._fed_evidence = True
            if self.evidence.feed(new, t) is not None:
                findings += self._evidence_finding(state, decided_normal, t)
        self._valid += 1
        if self._valid % self.stride:  # the rest looks at non-overlapping windows only
            return findings
        reading = self.commissioning.feed(emb, t, unknown_score)
        if reading is not None:
            self.device_drift = reading
            findings += self._drift_finding("device", reading, t)
        if decided_normal and self.fleet is not None:
            fleet = self.fleet.update(emb)
            if fleet is not None:
                self.fleet_drift = fleet
                if self.commissioning.baseline is None:
                    findings += self._drift_finding("fleet", fleet, t)
        findings += self._health_finding(raw_g)
        return findings

    def commission(self) -> str:
        """Restart learning this device's normal (the `commission` command); returns one line."""
        self.commissioning.start()
        self.trend.recommission()
        self._alerted.clear()
        return (
            f"learning this device's normal for {self.commissioning.period_s:.0f} s (at least "
            f"{self.commissioning.min_windows} windows); keep the machine in normal operation"
        )

    def status(self) -> dict[str, object]:
        """For the status command and telemetry."""
        ind = self.indicators
        return {
            **self.commissioning.progress(),
            "device_drift_score": _score(self.device_drift),
            "fleet_drift_score": _score(self.fleet_drift),
            "health_score": self.health.smoothed if self.health else None,
            "health_alarm": bool(self.health and self.health.alarm),
            "iso_zone": self.health.zone if self.health else None,
            "velocity_rms_mm_s": ind.velocity_rms_mm_s if ind else None,
            "envelope_rms_g": ind.envelope_rms_g if ind else None,
        }

    # ---- findings ----------------------------------------------------------------------------

    def _drift_finding(self, source: str, reading: DriftReading, t: float) -> list[Finding]:
        threshold = self.commissioning.threshold
        figures = f"score {reading.score:.2f}, threshold {threshold:.2f}, {reading.n} windows"
        last = self._alerted.get(source)
        if reading.drifted:
            if last is not None and t - last < REPEAT_S:
                return []
            self._alerted[source] = t
            if source == "device":
                text = f"operation changed since this device was commissioned ({figures})"
                return [Finding("drift", "warning", text, reading.score)]
            text = (
                f"this machine runs outside the training data ({figures}): calibrate or "
                "renormalize this device"
            )
            return [Finding("drift", "info", text, reading.score)]
        if last is None:
            return []
        del self._alerted[source]
        return [Finding("drift", "info", f"drift cleared ({figures})", reading.score)]

    def _evidence_finding(self, state: str, decided_normal: bool, t: float) -> list[Finding]:
        """What a clear defect line says about the state: a line while the model says normal
        (warning), one that points elsewhere than the model's fault (warning), or one that
        confirms it (info, once per fault episode)."""
        assert self.evidence is not None
        clear, latest = self.evidence.clear_class, self.evidence.latest
        if self._confirmed is not None and self._confirmed != state:
            self._confirmed = None
        last = self._alerted.get("evidence")
        if clear is not None and latest is not None:
            line = next(ln for ln in latest.lines.values() if ln.fault_class == clear)
            figures = (
                f"{line.name.upper()} line {line.score_db:.0f} dB over its background near "
                f"{line.expected_hz:.1f} Hz"
            )
            if clear == state:
                if self._confirmed == state:
                    return []
                self._confirmed = state
                return [
                    Finding("evidence", "info", f"envelope spectrum confirms {state}: {figures}")
                ]
            if last is not None and t - last < REPEAT_S:
                return []
            self._alerted["evidence"] = t
            said = "normal" if decided_normal else state
            text = f"envelope spectrum points to {clear} ({figures}) while the model says {said}"
            return [Finding("evidence", "warning", text)]
        if clear is None and last is not None:
            del self._alerted["evidence"]
            return [
                Finding("evidence", "info", "the defect line is gone from the envelope spectrum")
            ]
        return []

    def evidence_dict(self) -> dict | None:
        """The latest envelope evidence for an event, or None."""
        latest = None if self.evidence is None else self.evidence.latest
        return None if latest is None else latest.to_dict()

    def _health_finding(self, raw_g: np.ndarray) -> list[Finding]:
        try:
            self.indicators = indicators_of(raw_g, self.sample_rate_hz)
        except ValueError as exc:  # a window the sanity checks let through but the FFT cannot use
            logger.debug("condition indicators skipped: %s", exc)
            return []
        was_ready = self.trend.baseline_ready
        self.health = reading = self.trend.update(self.indicators)
        if reading.baseline_ready and not was_ready:
            self._save_trend()
        if not reading.changed:
            return []
        ind = self.indicators
        figures = (
            f"velocity {ind.velocity_rms_mm_s:.2f} mm/s (ISO zone {reading.zone}), envelope "
            f"{ind.envelope_rms_g:.3f} g, kurtosis {ind.kurtosis:.1f}"
        )
        if reading.alarm:
            text = (
                f"condition worsened since commissioning: {reading.driver} up (score "
                f"{reading.smoothed:.1f}); {figures}"
            )
            return [Finding("health", "alarm", text)]
        return [Finding("health", "info", f"condition back to its commissioned level; {figures}")]

    # ---- the health baseline on disk ---------------------------------------------------------

    def _load_trend(self) -> HealthTrend:
        if self.health_path.is_file():
            try:
                state = json.loads(self.health_path.read_text(encoding="utf-8"))
                return HealthTrend.from_state(state, self.health_params)
            except (OSError, ValueError) as exc:
                logger.warning("health: ignoring unreadable %s (%s)", self.health_path, exc)
        return HealthTrend(self.health_params)

    def _save_trend(self) -> None:
        try:
            atomic_write(self.health_path, json.dumps(self.trend.state()).encode())
        except OSError as exc:
            logger.error("health: could not store the baseline in %s (%s)", self.health_path, exc)


def _score(reading: DriftReading | None) -> float | None:
    return None if reading is None or not math.isfinite(reading.score) else reading.score

"""What the agent tells the world: fault events, the retained state, telemetry and status.

Events go through the outbox (durable), state and telemetry straight to the MQTT link; each
telemetry interval also gives one structured log line and a systemd STATUS= line. `Publishing`
is a mixin of `Agent`: the annotations below name what it uses of the agent.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edge_agent.agent.interval import IntervalStats
from edge_agent.agent.log import log_fields
from edge_agent.agent.notify import notify
from edge_agent.config import AgentConfig
from edge_agent.contract.events import FaultEvent, StateMessage, Telemetry, WindowStats
from edge_agent.contract.wire import utc
from edge_agent.mqtt.link import MqttLink
from edge_agent.mqtt.outbox import Outbox
from edge_agent.pipeline.decisions import SENSOR_FAULT, UNCERTAIN, UNKNOWN, Decision
from edge_agent.pipeline.runtime import ModelRuntime, Pipeline
from edge_agent.pipeline.sanity import SanityResult


class Publishing:
    """Build and publish events, state, telemetry and status (mixed into `Agent`)."""

    cfg: AgentConfig
    model: ModelRuntime
    pipe: Pipeline
    outbox: Outbox
    link: MqttLink | None
    windows_total: int
    events_total: int
    last_event_id: str | None
    _started: float
    _source_down: bool
    _shown_state: str | None
    _storage_problem: str | None
    _basis: str | None
    _unknown_score: float | None
    _unknown_threshold: Callable[[], float | None]
    _interval: IntervalStats
    _rate: float

    # ---- events -----------------------------------------------------------------------------

    def _event(self, kind: str, severity: str, **fields: Any) -> FaultEvent:
        m, mqtt = self.model.manifest, self.cfg.mqtt
        return FaultEvent(
            kind=kind,  # type: ignore[arg-type]
            severity=severity,  # type: ignore[arg-type]
            site=mqtt.site,
            asset=mqtt.asset,
            device=mqtt.device,
            model_name=m.model_name,
            model_version=m.model_version,
            head_version=str(self.model.head_version),
            **fields,
        )

    def _state_changed(
        self, decision: Decision, probs: np.ndarray | None, check: SanityResult
    ) -> None:
        state, normal = decision.state, self.pipe.decisions.normal_class
        previous = decision.previous
        if previous == UNKNOWN and self._shown_state is not None:
            previous = self._shown_state  # what subscribers saw last (e.g. a source failure)
        self._shown_state = None
        why = f" ({decision.sanity_reason})" if decision.sanity_reason else ""
        if state == SENSOR_FAULT:
            kind, severity = "sensor_fault", "warning"
        elif state == UNCERTAIN:
            kind, severity = "uncertain", "warning"
        elif state == UNKNOWN:  # the open set: unlike every class the bundle was trained on
            kind, severity = "state_change", "warning"
            threshold = self._unknown_threshold()
            why = f" (unlike every trained class: unknown score above {threshold:.2f})"
        else:
            kind, severity = "state_change", "info" if state == normal else "alarm"
            if self._basis == "evidence":
                why = " (decided by the envelope spectrum: the head is not calibrated here yet)"
        sure = f", confidence {decision.confidence:.2f}" if decision.confidence is not None else ""
        s = check.stats
        names = self.pipe.decisions.class_names
        event = self._event(
            kind,
            severity,
            window_end_utc=utc(decision.t),
            previous_state=previous,
            state=state,
            class_name=decision.class_name,
            probabilities={} if probs is None else dict(zip(names, probs.tolist(), strict=True)),
            evidence=self.pipe.monitor.evidence_dict() if state != SENSOR_FAULT else None,
            basis=self._basis if state not in (SENSOR_FAULT, UNCERTAIN) else None,
            unknown_score=self._unknown_score if state != SENSOR_FAULT else None,
            confidence=decision.confidence,
            window_stats=WindowStats(
                rms_g=s["rms"],
                peak_g=s["peak"],
                crest_factor=s["crest_factor"],
                kurtosis=s["kurtosis"],
            ),
            message=f"{previous} -> {state}{why}{sure}",
        )
        self._publish(event)
        self._publish_state(state, decision.class_name, decision.confidence, decision.t)
        notify(STATUS=self._status_line())

    def _publish(self, event: FaultEvent) -> None:
        """Hand `event` to the outbox, then log it, saying whether it is on disk."""
        self.events_total += 1
        self.last_event_id = event.event_id
        stored = "no link"
        if self.link is not None:
            item = self.link.publish_event(event)
            if item.committed.is_set():
                stored = "committed" if item.seq is not None else "dropped (outbox full)"
            else:
                stored = "in memory (storage failing)"
        log_fields(
            logging.WARNING if event.severity != "info" else logging.INFO,
            "event",
            kind=event.kind,
            severity=event.severity,
            state=event.state,
            previous=event.previous_state,
            event_id=event.event_id,
            outbox=stored,
            detail=event.message,
        )

    def _check_storage(self) -> None:
        """A `storage` event (and a status refresh) when durable storage fails or recovers."""
        if self.link is None:
            return
        problem = self.link.storage_problem()
        if problem == self._storage_problem:
            return
        was, self._storage_problem = self._storage_problem, problem
        if problem is not None and was is not None:
            return  # still failing, in other words: one event per episode
        if problem is not None:
            severity, text = "warning", f"storage fault: {problem}; events are sent directly"
        else:
            severity, text = "info", "storage works again: events are stored durably"
        self._publish(
            self._event("storage", severity, state=self.pipe.decisions.state, message=text)
        )
        self.link.publish_status()

    def _publish_state(
        self, state: str, class_name: str | None, confidence: float | None, since: float | None
    ) -> None:
        if self.link is None:
            return
        mqtt, m = self.cfg.mqtt, self.model.manifest
        self.link.publish_state(
            StateMessage(
                site=mqtt.site,
                asset=mqtt.asset,
                device=mqtt.device,
                state=state,
                class_name=class_name,
                confidence=confidence,
                since_utc=utc(since) if since is not None else None,
                last_event_id=self.last_event_id,
                model_version=m.model_version,
                head_version=str(self.model.head_version),
            )
        )

    # ---- telemetry and status ---------------------------------------------------------------

    def _pending(self) -> int:
        """Events not yet delivered (outbox and memory)."""
        return self.link.pending if self.link is not None else len(self.outbox)

    def _reset_interval(self, now: float) -> None:
        self._interval.start(now, self.windows_total)

    def _end_interval(self, now: float) -> None:
        stats = self._interval.summary(now, self.windows_total)
        self._rate = stats["windows_per_s"]
        buffer = self.pipe.buffer
        condition = self.pipe.monitor.status()
        telemetry = Telemetry(
            site=self.cfg.mqtt.site,
            asset=self.cfg.mqtt.asset,
            device=self.cfg.mqtt.device,
            **{
                k: stats[k]
                for k in (
                    "rms_g",
                    "peak_g",
                    "crest_factor",
                    "kurtosis",
                    "inference_ms",
                    "cpu_percent",
                )
            },
            windows_total=self.windows_total,
            dropped_samples=buffer.dropped_samples,
            overruns=buffer.overruns,
            outbox_pending=self._pending(),
            velocity_rms_mm_s=condition["velocity_rms_mm_s"],
            envelope_rms_g=condition["envelope_rms_g"],
            iso_zone=condition["iso_zone"],
            health_score=condition["health_score"],
            drift_score=condition["device_drift_score"],
            commissioning=condition["learning"],
        )
        if self.link is not None:
            self.link.publish_telemetry(telemetry)
            self.link.publish_status()
        log_fields(
            logging.INFO,
            "telemetry",
            state=self.pipe.decisions.state,
            windows=self.windows_total,
            windows_per_s=self._rate,
            inference_ms_mean=stats["inference_ms"],
            inference_ms_p99=stats["inference_ms_p99"],
            cpu_percent=stats["cpu_percent"],
            max_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            rms_g=telemetry.rms_g,
            **{k: "n/a" if v is None else v for k, v in condition.items()},
            dropped_samples=buffer.dropped_samples,
            overruns=buffer.overruns,
            outbox_pending=telemetry.outbox_pending,
            mqtt="connected" if self.link is not None and self.link.connected else "offline",
        )
        notify(STATUS=self._status_line())
        self._reset_interval(now)

    def _status_line(self) -> str:
        mqtt = "connected" if self.link is not None and self.link.connected else "offline"
        return (
            f"state={self.pipe.decisions.state} windows/s={self._rate:.1f} "
            f"windows={self.windows_total} mqtt={mqtt} outbox={self._pending()}"
        )

    def status_data(self) -> dict[str, Any]:
        """Counters and state, as the `status` command reports them."""
        pipe, m = self.pipe, self.model.manifest
        span = pipe.log.time_range()
        since = pipe.decisions.since
        return {
            "state": pipe.decisions.state,
            "since_utc": utc(since).isoformat() if since is not None else None,
            "uptime_s": round(time.monotonic() - self._started, 3),
            "windows_total": self.windows_total,
            "windows_per_s": round(self._rate, 2),
            "events_total": self.events_total,
            "dropped_samples": pipe.buffer.dropped_samples,
            "overruns": pipe.buffer.overruns,
            "outbox_pending": self._pending(),
            "storage_error": self._storage_problem,
            "mqtt_connected": bool(self.link is not None and self.link.connected),
            "source_ok": not self._source_down,
            "model_name": m.model_name,
            "model_version": m.model_version,
            "head_version": self.model.head_version,
            "condition": self.pipe.monitor.status(),
            "embedding_log": {
                "rows": len(pipe.log),
                "first_utc": utc(span[0]).isoformat() if span else None,
                "last_utc": utc(span[1]).isoformat() if span else None,
            },
            "calibration_set": pipe.calibration_set.counts(),
        }

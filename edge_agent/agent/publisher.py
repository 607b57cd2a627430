"""What the agent tells the world: fault events, the retained state, telemetry and status.

`Publisher` turns each channel's `WindowOutcome`s and findings into `FaultEvent`s (through the
outbox: durable), the retained `StateMessage` and, every telemetry interval, one `Telemetry`
message per channel plus one structured log line. Every payload carries its channel's MQTT
asset, which routes it to the channel's subtree. The link is set once the agent runs (`link`);
before that events are only counted and logged.
"""

from __future__ import annotations

import logging
import resource
from typing import Any

from edge_agent.agent.interval import IntervalStats
from edge_agent.agent.log import log_fields
from edge_agent.config import AgentConfig
from edge_agent.contract.events import FaultEvent, StateMessage, Telemetry, WindowStats
from edge_agent.contract.wire import utc
from edge_agent.mqtt.link import MqttLink
from edge_agent.mqtt.outbox import Outbox
from edge_agent.pipeline.channel import Channel, WindowOutcome
from edge_agent.pipeline.decisions import SENSOR_FAULT, UNCERTAIN, UNKNOWN
from edge_agent.pipeline.sanity import SanityResult


class Publisher:
    """Events, state and telemetry of every channel, over one link."""

    def __init__(self, cfg: AgentConfig, outbox: Outbox, channels: list[Channel]) -> None:
        self.cfg = cfg
        self.outbox = outbox
        self.link: MqttLink | Any | None = None  # an MqttLink, or a MemoryLink offline
        self.storage_problem: str | None = None  # as last announced in a `storage` event
        self.intervals = {ch.name: IntervalStats() for ch in channels}
        self.multi = len(channels) > 1

    # ---- events -----------------------------------------------------------------------------

    def event(self, ch: Channel, kind: str, severity: str, **fields: Any) -> FaultEvent:
        m, mqtt = ch.model.manifest, ch.cfg.mqtt
        return FaultEvent(
            kind=kind,  # type: ignore[arg-type]
            severity=severity,  # type: ignore[arg-type]
            site=mqtt.site,
            asset=mqtt.asset,
            device=mqtt.device,
            model_name=m.model_name,
            model_version=m.model_version,
            head_version=str(ch.head_version),
            **fields,
        )

    def outcome(self, ch: Channel, out: WindowOutcome) -> None:
        """Publish what one window deserves: a storm summary, a state change, its findings."""
        self.intervals[ch.name].add_window(out.check.stats)
        if out.summary is not None:
            state = ch.limiter.current
            severity = "alarm" if ch.limiter.is_alarm(state) else "info"
            self.publish(
                ch, self.event(ch, "state_change", severity, state=state, message=out.summary)
            )
            self.state(ch, state, None, None, out.decision.t)
        if out.announce:
            self._state_changed(ch, out)
        for finding in out.findings:
            event = self.event(
                ch,
                finding.kind,
                finding.severity,
                window_end_utc=utc(out.decision.t),
                state=ch.decisions.state,
                drift_score=None if finding.drift_score is None else max(finding.drift_score, 0),
                evidence=ch.monitor.evidence_dict() if finding.kind == "evidence" else None,
                message=finding.message,
            )
            self.publish(ch, event)

    def _state_changed(self, ch: Channel, out: WindowOutcome) -> None:
        decision, probs, check = out.decision, out.probs, out.check
        state, normal = decision.state, ch.decisions.normal_class
        previous = decision.previous
        if previous == UNKNOWN and ch.shown_state is not None:
            previous = ch.shown_state  # what subscribers saw last (e.g. a source failure)
        ch.shown_state = None
        why = f" ({decision.sanity_reason})" if decision.sanity_reason else ""
        if state == SENSOR_FAULT:
            kind, severity = "sensor_fault", "warning"
        elif state == UNCERTAIN:
            kind, severity = "uncertain", "warning"
        elif state == UNKNOWN:  # the open set: unlike every class the bundle was trained on
            kind, severity = "state_change", "warning"
            threshold = ch.unknown_threshold()
            why = f" (unlike every trained class: unknown score above {threshold:.2f})"
        else:
            kind, severity = "state_change", "info" if state == normal else "alarm"
            if out.basis == "evidence":
                why = " (decided by the envelope spectrum: " + (
                    "the head is not calibrated here yet)"
                    if ch.factory_head
                    else "the windows are unlike every window labeled on this device)"
                )
        sure = f", confidence {decision.confidence:.2f}" if decision.confidence is not None else ""
        names = ch.decisions.class_names
        event = self.event(
            ch,
            kind,
            severity,
            window_end_utc=utc(decision.t),
            previous_state=previous,
            state=state,
            class_name=decision.class_name,
            probabilities={} if probs is None else dict(zip(names, probs.tolist(), strict=True)),
            evidence=ch.monitor.evidence_dict() if state != SENSOR_FAULT else None,
            basis=out.basis if state not in (SENSOR_FAULT, UNCERTAIN) else None,
            unknown_score=out.unknown_score if state != SENSOR_FAULT else None,
            confidence=decision.confidence,
            window_stats=_window_stats(check),
            message=f"{previous} -> {state}{why}{sure}",
        )
        self.publish(ch, event)
        self.state(ch, state, decision.class_name, decision.confidence, decision.t)

    def sensor_fault(self, ch: Channel, message: str) -> None:
        """The whole source failed: one `sensor_fault` event and state for this channel."""
        previous = ch.decisions.state
        ch.decisions.reset()  # the next good windows re-announce the state
        ch.shown_state = SENSOR_FAULT
        event = self.event(
            ch,
            "sensor_fault",
            "warning",
            state=SENSOR_FAULT,
            previous_state=previous,
            message=message,
        )
        self.publish(ch, event)
        self.state(ch, SENSOR_FAULT, None, None, None)

    def publish(self, ch: Channel, event: FaultEvent) -> None:
        """Hand `event` to the outbox, then log it, saying whether it is on disk."""
        ch.events_total += 1
        ch.last_event_id = event.event_id
        stored = "no link"
        if self.link is not None:
            item = self.link.publish_event(event)
            if item.committed.is_set():
                stored = "committed" if item.seq is not None else "dropped (outbox full)"
            else:
                stored = "in memory (storage failing)"
        channel = {"channel": ch.name} if self.multi else {}
        log_fields(
            logging.WARNING if event.severity != "info" else logging.INFO,
            "event",
            **channel,
            kind=event.kind,
            severity=event.severity,
            state=event.state,
            previous=event.previous_state,
            event_id=event.event_id,
            outbox=stored,
            detail=event.message,
        )

    def check_storage(self, channels: list[Channel]) -> None:
        """A `storage` event on every channel (and a status refresh) when durable storage fails
        or recovers; one per episode."""
        if self.link is None:
            return
        problem = self.link.storage_problem()
        if problem == self.storage_problem:
            return
        was, self.storage_problem = self.storage_problem, problem
        if problem is not None and was is not None:
            return  # still failing, in other words: one event per episode
        if problem is not None:
            severity, text = "warning", f"storage fault: {problem}; events are sent directly"
        else:
            severity, text = "info", "storage works again: events are stored durably"
        for ch in channels:
            self.publish(
                ch, self.event(ch, "storage", severity, state=ch.decisions.state, message=text)
            )
        self.link.publish_status()

    def state(
        self,
        ch: Channel,
        state: str,
        class_name: str | None,
        confidence: float | None,
        since: float | None,
    ) -> None:
        """The channel's retained state message."""
        if self.link is None:
            return
        mqtt, m = ch.cfg.mqtt, ch.model.manifest
        self.link.publish_state(
            StateMessage(
                site=mqtt.site,
                asset=mqtt.asset,
                device=mqtt.device,
                state=state,
                class_name=class_name,
                confidence=confidence,
                since_utc=utc(since) if since is not None else None,
                last_event_id=ch.last_event_id,
                model_version=m.model_version,
                head_version=str(ch.head_version),
            )
        )

    # ---- telemetry --------------------------------------------------------------------------

    def pending(self) -> int:
        """Events not yet delivered (outbox and memory)."""
        return self.link.pending if self.link is not None else len(self.outbox)

    @property
    def connected(self) -> bool:
        return bool(self.link is not None and self.link.connected)

    def add_inference(self, ch: Channel, ms_per_window: float) -> None:
        self.intervals[ch.name].add_inference(ms_per_window)

    def restart_intervals(self, now: float, channels: list[Channel]) -> None:
        for ch in channels:
            self.intervals[ch.name].start(now, ch.windows_total)

    def telemetry(self, ch: Channel, now: float) -> float:
        """Close the channel's interval: its `Telemetry` message and log line; windows/s."""
        stats = self.intervals[ch.name].summary(now, ch.windows_total)
        buffer = ch.buffer
        condition = ch.monitor.status()
        mqtt = ch.cfg.mqtt
        signal = ("rms_g", "peak_g", "crest_factor", "kurtosis", "inference_ms", "cpu_percent")
        telemetry = Telemetry(
            site=mqtt.site,
            asset=mqtt.asset,
            device=mqtt.device,
            **{k: stats[k] for k in signal},
            windows_total=ch.windows_total,
            dropped_samples=buffer.dropped_samples,
            overruns=buffer.overruns,
            outbox_pending=self.pending(),
            velocity_rms_mm_s=condition["velocity_rms_mm_s"],
            envelope_rms_g=condition["envelope_rms_g"],
            iso_zone=condition["iso_zone"],
            health_score=condition["health_score"],
            drift_score=condition["device_drift_score"],
            commissioning=condition["learning"],
        )
        if self.link is not None:
            self.link.publish_telemetry(telemetry)
        channel = {"channel": ch.name} if self.multi else {}
        log_fields(
            logging.INFO,
            "telemetry",
            **channel,
            state=ch.decisions.state,
            windows=ch.windows_total,
            windows_per_s=stats["windows_per_s"],
            inference_ms_mean=stats["inference_ms"],
            inference_ms_p99=stats["inference_ms_p99"],
            cpu_percent=stats["cpu_percent"],
            max_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            rms_g=telemetry.rms_g,
            **{k: "n/a" if v is None else v for k, v in condition.items()},
            dropped_samples=buffer.dropped_samples,
            overruns=buffer.overruns,
            outbox_pending=telemetry.outbox_pending,
            mqtt="connected" if self.connected else "offline",
        )
        self.intervals[ch.name].start(now, ch.windows_total)
        return float(stats["windows_per_s"])


def _window_stats(check: SanityResult) -> WindowStats:
    s = check.stats
    return WindowStats(
        rms_g=s["rms"], peak_g=s["peak"], crest_factor=s["crest_factor"], kurtosis=s["kurtosis"]
    )

"""The gateway agent: acquisition -> sanity -> encoder -> head -> debounced decisions -> MQTT.

`Agent(cfg)` validates everything at start-up, never halfway through a shift: the bundle's
checksums (`BundleError`), config against bundle (`ConfigError`), the head store (the device's
calibrated head, or the bundle's factory head), the backend (`BackendError`), the source
(`SourceError`) and the outbox (`OutboxError`). `run()` then loops:

    chunk -> WindowBuffer -> up to `inference.batch_windows` ready windows ->
    sanity check on the g window (bad: a `sensor_fault` window, no inference) ->
    normalize -> backend.embed -> head.probabilities -> DecisionMachine.update ->
    on a state change: FaultEvent (through the outbox) + retained state

Per window it also records the embedding in the `EmbeddingLog` (for `calibrate` over a time
range) and gives the window to the channel's `ConditionMonitor` (commissioning, drift against
the device's own baseline, health trend; `calibration.monitoring`), whose findings become events.
Every `telemetry_interval_s`: a `Telemetry` message, a
status refresh and one structured log line (mean/p99 inference ms, CPU %, RSS).

Commands arrive on the MQTT link's worker thread and are run on the agent thread, between
batches (`command_handlers.py`); events, state, telemetry and status go out through
`publishing.py`; the bundle, backend and per-bundle window state come from `runtime.py`.
A source that fails mid-run (USB interface unplugged), or delivers no samples for
`sensor.no_data_after_s` (a stalled stream: `no_data`), gives one `sensor_fault` event and is
restarted with exponential backoff; stopping a source is bounded (`SOURCE_STOP_S`), a driver that
hangs is abandoned. A full or failing disk never stops the loop: the outbox's spool keeps events
in memory and sends them directly, and a `storage` event says so (and when it recovers).
sd_notify: READY=1 after the first window (or READY_FALLBACK_S), WATCHDOG=1 at half of
WatchdogSec while samples arrive (or while a failed source is being restarted), STATUS= lines,
STOPPING=1 before the flush.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any

import numpy as np

from edge_agent.agent.handlers import CommandHandlers
from edge_agent.agent.interval import IntervalStats
from edge_agent.agent.log import log_fields, logger
from edge_agent.agent.notify import notify, watchdog_interval_s
from edge_agent.agent.publisher import Publishing
from edge_agent.calibration.headstore import HeadStore
from edge_agent.config import AgentConfig, ConfigError, outbox_path
from edge_agent.contract.commands import Command
from edge_agent.contract.preprocess import normalize
from edge_agent.contract.wire import utc
from edge_agent.mqtt.link import MqttLink
from edge_agent.mqtt.outbox import Outbox
from edge_agent.physics.view import line_view
from edge_agent.pipeline.decisions import SENSOR_FAULT, Decision
from edge_agent.pipeline.ringbuffer import WindowBuffer
from edge_agent.pipeline.runtime import ModelRuntime, Pipeline, build_pipeline, load_runtime
from edge_agent.pipeline.sanity import SanityResult, check_window
from edge_agent.sources import Chunk, Source, SourceError, make_source

__all__ = ["Agent", "ModelRuntime", "Pipeline", "load_runtime", "log_fields"]  # importers' names

READ_TIMEOUT_S = 0.2  # longest the loop waits for a chunk before serving commands/timers
READY_FALLBACK_S = 5.0  # READY=1 even without a window by then (a quiet source)
FLUSH_TIMEOUT_S = 5.0  # outbox drain at shutdown; well inside systemd's TimeoutStopSec=20
SOURCE_RETRY_S = (1.0, 60.0)  # first and longest wait before restarting a failed source
SOURCE_STOP_S = 2.0  # a source that takes longer to stop (driver blocked) is abandoned
EVIDENCE_CONFIDENCE = 0.9  # what a clear defect line (10 dB, 3 readings in a row) stands for


class Agent(CommandHandlers, Publishing):
    """One gateway agent; use as a context manager, call `run()` once."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        try:
            cfg.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError([f"state_dir: cannot create {cfg.state_dir} ({exc})"]) from exc
        self.store = HeadStore(cfg.state_dir / "heads")
        self.model = load_runtime(cfg, self.store)
        rate = self.model.spec.sample_rate_hz
        self.source: Source = make_source(cfg.source, cfg.sensor, rate)
        self.pipe = build_pipeline(cfg, self.model)
        self.outbox = Outbox(outbox_path(cfg), cfg.outbox.max_events, cfg.outbox.when_full)
        self.link: MqttLink | None = None
        self._commands: queue.Queue[tuple[Command, Future]] = queue.Queue()
        self._running = False
        self._started = time.monotonic()
        self.windows_total = 0
        self.events_total = 0
        self.last_event_id: str | None = None
        self._source_down = False
        self._retry_at = 0.0
        self._retry_wait = SOURCE_RETRY_S[0]
        self._shown_state: str | None = None  # state published outside the DecisionMachine
        self._storage_problem: str | None = None  # as last announced in a `storage` event
        self._basis: str | None = None  # who decided the latest window (model/evidence/both)
        self._unknown_score: float | None = None  # open-set score of the latest window
        self._last_data_at = time.monotonic()  # when the source last delivered samples
        self._awaiting_data = False  # restarted after a failure, no samples yet
        self.source_abandoned = False  # a source's driver blocked its stop (see _stop_source)
        self._interval = IntervalStats()
        self._rate = 0.0  # windows/s over the last telemetry interval
        self._reset_interval(time.monotonic())
        m = self.model.manifest
        if m.physics is not None and cfg.bearing is None:
            logger.warning(
                "the bundle carries a physics view (defect lines at the shaft speed) that this "
                "config cannot use: add a [bearing] section (designation, and shaft_rpm or a "
                "tachometer channel) to fuse it; the model alone decides meanwhile"
            )
        log_fields(
            logging.INFO,
            "agent_ready",
            device=cfg.device.id,
            model=m.model_name,
            model_version=m.model_version,
            head_version=self.model.head_version,
            backend=f"{cfg.inference.backend}/{cfg.inference.precision}",
            rate_hz=rate,
            window=m.preprocessing.window,
            hop=m.preprocessing.hop,
            source=cfg.source.type,
            physics="none" if m.physics is None else "on" if cfg.bearing is not None else "off",
        )

    # ---- set-up -----------------------------------------------------------------------------

    def close(self) -> None:
        """Release the source and the outbox (run() closes the MQTT link itself)."""
        if self.link is not None:
            self.link.close(FLUSH_TIMEOUT_S)
        self._stop_source()
        self.outbox.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- main loop --------------------------------------------------------------------------

    def run(
        self,
        stop_event: threading.Event | None = None,
        max_windows: int | None = None,
        max_seconds: float | None = None,
    ) -> dict[str, Any]:
        """Run until `stop_event` is set, a limit is reached or a file source finishes.

        Raises SourceError when the source cannot start (start-up). Returns status_data().
        """
        stop = stop_event or threading.Event()
        self.source.start()
        recording = getattr(self.source, "samples_g", None)  # a finite file source
        window = self.pipe.spec.window
        if recording is not None and len(recording) < window:
            self._stop_source()
            raise SourceError(
                f"{self.cfg.source.path}: {len(recording)} samples at "  # type: ignore[union-attr]
                f"{self.source.sample_rate_hz} Hz, shorter than one window ({window}); nothing "
                "to analyse: record longer"
            )
        try:
            self.link = MqttLink(self.cfg.mqtt, self.outbox, self._submit_command)
        except (OSError, ValueError) as exc:  # TLS files unreadable, bad certificate...
            self._stop_source()
            raise ConfigError([f"mqtt: cannot set up the connection: {exc}"]) from exc
        self._running = True
        started = time.monotonic()
        self._last_data_at = started
        self._reset_interval(started)
        ready = False
        watchdog_s = watchdog_interval_s()
        next_watchdog = started
        notify(STATUS="starting")
        try:
            while not stop.is_set():
                now = time.monotonic()
                if watchdog_s is not None and now >= next_watchdog and self._source_alive(now):
                    notify(WATCHDOG=1)
                    next_watchdog = now + watchdog_s
                self._run_commands()
                self._check_storage()
                if now >= self._interval.began + self.cfg.telemetry_interval_s:
                    self._end_interval(now)
                if not ready and (self.windows_total or now - started > READY_FALLBACK_S):
                    notify(READY=1, STATUS=self._status_line())
                    ready = True
                if max_seconds is not None and now - started >= max_seconds:
                    break
                if max_windows is not None and self.windows_total >= max_windows:
                    break
                chunk = self._read_chunk(stop)
                if chunk is None:
                    if getattr(self.source, "finished", False):
                        logger.info("source finished: stopping")
                        break
                    self._check_no_data()
                    continue
                self._last_data_at = time.monotonic()
                if chunk.shaft_hz is not None and self.pipe.monitor.evidence is not None:
                    self.pipe.monitor.evidence.measured_shaft_hz = chunk.shaft_hz
                if self._awaiting_data:
                    self._awaiting_data = False
                    self._retry_wait = SOURCE_RETRY_S[0]
                self.pipe.buffer.push(chunk)
                self._drain(max_windows)
        finally:
            self._running = False
            notify(STOPPING=1, STATUS="stopping: flushing the outbox")
            self._fail_pending_commands()
            summary = self.status_data()
            link, self.link = self.link, None
            link.close(FLUSH_TIMEOUT_S)
            self._stop_source()
            log_fields(
                logging.INFO,
                "agent_stopped",
                windows=self.windows_total,
                events=self.events_total,
                outbox_pending=self._pending(),
            )
        return summary

    def _read_chunk(self, stop: threading.Event) -> Chunk | None:
        """Next chunk; a failing source is reported once and restarted with backoff."""
        if self._source_down:
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                stop.wait(min(wait, READ_TIMEOUT_S))
                return None
            try:
                self.source.start()
            except SourceError as exc:
                self._schedule_retry(exc)
                return None
            logger.info("source restarted after the failure")
            self._source_down = False
            self._awaiting_data = True  # the backoff resets only once samples arrive
            self._last_data_at = time.monotonic()
            self.pipe.buffer = WindowBuffer.from_spec(
                self.pipe.spec, self.pipe.buffer.capacity_windows
            )
        try:
            return self.source.read(READ_TIMEOUT_S)
        except SourceError as exc:
            self._source_failed(exc)
            return None

    def _source_alive(self, now: float) -> bool:
        """Samples arrive, or a failed source is being restarted: the loop is doing its job."""
        return self._source_down or now - self._last_data_at <= self.cfg.sensor.no_data_after_s

    def _check_no_data(self) -> None:
        quiet = time.monotonic() - self._last_data_at
        if not self._source_down and quiet > self.cfg.sensor.no_data_after_s:
            self._source_failed(
                SourceError(
                    f"no samples for {quiet:.1f} s (sensor.no_data_after_s = "
                    f"{self.cfg.sensor.no_data_after_s:g}); the interface stopped delivering data"
                ),
                reason="no_data",
            )

    def _stop_source(self) -> None:
        """Stop the source, waiting at most SOURCE_STOP_S (a blocked driver is abandoned)."""
        source = self.source

        def stop() -> None:
            try:
                source.stop()
            except Exception as exc:  # a broken device may fail to close too
                logger.debug("source stop: %s", exc)

        worker = threading.Thread(target=stop, name="source-stop", daemon=True)
        worker.start()
        worker.join(SOURCE_STOP_S)
        if worker.is_alive():
            self.source_abandoned = True
            logger.error(
                "source %s did not stop within %.0f s (its driver is blocked); abandoned it",
                source.name, SOURCE_STOP_S,
            )  # fmt: skip

    def _source_failed(self, exc: SourceError, reason: str = "source_error") -> None:
        if self._awaiting_data:  # a restart that never delivered: the fault is already reported
            self._stop_source()
            self._source_down, self._awaiting_data = True, False
            self._schedule_retry(exc)
            return
        logger.error("source failed (%s): %s; restarting it with backoff", reason, exc)
        previous = self.pipe.decisions.state
        self.pipe.decisions.reset()  # the next good windows re-announce the state
        self._shown_state = SENSOR_FAULT
        event = self._event(
            "sensor_fault",
            "warning",
            state=SENSOR_FAULT,
            previous_state=previous,
            message=f"{reason}: {exc}",
        )
        self._publish(event)
        self._publish_state(SENSOR_FAULT, None, None, time.time())
        self._stop_source()  # after telling the world: a blocked driver takes SOURCE_STOP_S
        self._source_down = True
        self._retry_wait = SOURCE_RETRY_S[0]
        self._retry_at = time.monotonic() + self._retry_wait

    def _schedule_retry(self, exc: SourceError) -> None:
        self._retry_wait = min(self._retry_wait * 2, SOURCE_RETRY_S[1])
        self._retry_at = time.monotonic() + self._retry_wait
        logger.warning("source still failing (%s); next try in %.1f s", exc, self._retry_wait)

    # ---- windows ----------------------------------------------------------------------------

    def _drain(self, max_windows: int | None) -> None:
        """Process the ready windows in batches of up to `inference.batch_windows`."""
        pipe = self.pipe
        size = len(pipe.batch)
        n = 0
        for window, t_end in pipe.buffer.windows():
            pipe.batch[n] = window
            pipe.batch_t[n] = t_end
            n += 1
            if n == size:
                self._process_batch(n)
                n = 0
                if max_windows is not None and self.windows_total >= max_windows:
                    return
        if n:
            self._process_batch(n)

    def _process_batch(self, n: int) -> None:
        pipe, sensor, model = self.pipe, self.cfg.sensor, self.model
        checks = [
            check_window(
                pipe.batch[i],
                clip_g=sensor.clip_g,
                min_rms_g=sensor.min_rms_g,
                max_rms_g=sensor.max_rms_g,
            )
            for i in range(n)
        ]
        ok = [i for i, c in enumerate(checks) if c.ok]
        emb = probs = None
        novel = unknown = np.zeros(0)
        codes = np.empty(len(ok), dtype=np.int16)  # label code of each embedded window
        if ok:
            x_raw = pipe.batch[:n] if len(ok) == n else pipe.batch[ok]
            x = normalize(x_raw, pipe.spec.normalization)
            start = time.perf_counter()
            emb = model.backend.embed(x)
            self._interval.add_inference((time.perf_counter() - start) * 1000 / len(ok))
            probs = model.head.probabilities(emb)
            if model.physics is not None:
                probs = self._fuse_physics(probs, x_raw)
            if pipe.openset is not None:
                unknown = pipe.openset.score(model.head.adapt(emb))
                threshold = self._unknown_threshold()
                novel = unknown > threshold if threshold is not None else np.zeros(len(ok), bool)
        factory_head = model.factory_head  # once per batch: the head changes between batches
        j = 0
        for i, check in enumerate(checks):
            self._interval.add_window(check.stats)
            t_end = float(pipe.batch_t[i])
            if check.ok:
                steered = self._steer(probs[j], factory_head)
                self._unknown_score = float(unknown[j]) if len(unknown) else None
                decision = pipe.decisions.update(
                    steered,
                    sanity_ok=True,
                    t=t_end,
                    novel=bool(len(novel) and novel[j]),
                    prompt=self._basis == "evidence",
                )
                codes[j] = pipe.label_codes[decision.label]
                self._monitor(decision, pipe.batch[i], emb[j])
                row = probs[j]
                j += 1
            else:
                decision = pipe.decisions.update(
                    pipe.no_probabilities, sanity_ok=False, sanity_reason=check.reason, t=t_end
                )
                row = None
            self._announce(decision, row, check)
        if ok:
            pipe.log.append(emb, pipe.batch_t[ok], codes)
        self.windows_total += n

    def _fuse_physics(self, probs: np.ndarray, windows_g: np.ndarray) -> np.ndarray:
        """The device head's probabilities fused with the bundle's physics view, when the bearing
        is configured (the evidence stream exists) and its shaft speed known; else unchanged."""
        physics, evidence = self.model.physics, self.pipe.monitor.evidence
        shaft_hz = evidence.known_shaft_hz() if evidence is not None else None
        if physics is None or evidence is None or shaft_hz is None:
            return probs
        fs = self.pipe.spec.sample_rate_hz
        view = line_view(windows_g, fs, shaft_hz, evidence.geometry, physics.band_hz)
        return physics.fuse(probs, view)

    def _unknown_threshold(self) -> float | None:
        """The config's fixed threshold, else the commissioned one (see monitoring)."""
        if self.pipe.openset is None:
            return None
        fixed = self.cfg.inference.unknown_above
        return (
            fixed
            if fixed is not None
            else self.pipe.monitor.unknown_threshold(self.pipe.unknown_above)
        )

    def _steer(self, probs: np.ndarray, factory_head: bool) -> np.ndarray:
        """The probabilities the decisions see: the model's; EVIDENCE_CONFIDENCE on the line's
        class where a clear defect line disagrees with an uncalibrated head (the evidence
        decides) or agrees with an unsure model (the evidence confirms)."""
        evidence = self.pipe.monitor.evidence
        if evidence is None:
            self._basis = None
            return probs
        names = self.pipe.decisions.class_names
        top = int(probs.argmax())
        self._basis, override = evidence.basis(names[top], factory_head)
        if self._basis == "both" and probs[top] < EVIDENCE_CONFIDENCE:
            override = names[top]
        if override is None or override not in names:
            return probs
        steered = np.full_like(probs, (1.0 - EVIDENCE_CONFIDENCE) / (len(probs) - 1))
        steered[names.index(override)] = EVIDENCE_CONFIDENCE
        return steered

    def _announce(self, decision: Decision, probs: np.ndarray | None, check: SanityResult) -> None:
        """Publish a state change, unless this hour's event budget is spent (then it is counted
        and summarized once there is room again)."""
        limiter = self.pipe.limiter
        summary = limiter.summary(decision.t)
        if summary is not None:
            state = limiter.current
            severity = "alarm" if limiter.is_alarm(state) else "info"
            self._publish(self._event("state_change", severity, state=state, message=summary))
            self._publish_state(state, None, None, decision.t)
        if decision.changed and limiter.allow(decision.state, decision.t):
            self._state_changed(decision, probs, check)

    def _monitor(self, decision: Decision, window: np.ndarray, emb: np.ndarray) -> None:
        """Commissioning, drift and health of one valid window; their findings as events."""
        normal = self.pipe.decisions.normal_class
        decided_normal = decision.state == normal and decision.label == normal
        findings = self.pipe.monitor.window(
            window, emb, decision.state, decided_normal, decision.t, self._unknown_score
        )
        for finding in findings:
            event = self._event(
                finding.kind,
                finding.severity,
                window_end_utc=utc(decision.t),
                state=self.pipe.decisions.state,
                drift_score=None if finding.drift_score is None else max(finding.drift_score, 0),
                evidence=self.pipe.monitor.evidence_dict() if finding.kind == "evidence" else None,
                message=finding.message,
            )
            self._publish(event)

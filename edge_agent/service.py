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
range) and feeds windows decided `normal` to the `DriftMonitor` (every `ceil(window / hop)`-th
one, so fed windows do not overlap). Every `telemetry_interval_s`: a `Telemetry` message, a
status refresh and one structured log line (mean/p99 inference ms, CPU %, RSS).

Commands arrive on the MQTT link's worker thread and are run here, on the agent thread, between
batches (a queue and a future); a failing command answers ok=False and never stops the loop.
A source that fails mid-run (USB interface unplugged) gives one `sensor_fault` event and is
restarted with exponential backoff. sd_notify: READY=1 after the first window (or
READY_FALLBACK_S), WATCHDOG=1 at half of WatchdogSec, STATUS= lines, STOPPING=1 before the flush.
"""

from __future__ import annotations

import logging
import math
import queue
import resource
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.backends import Backend, load_backend
from edge_agent.bundle import Manifest, load_bundle
from edge_agent.commands import (
    CalibrateCommand,
    Command,
    CommandResult,
    PingCommand,
    ReloadBundleCommand,
    RollbackHeadCommand,
    StatusCommand,
    execute,
)
from edge_agent.config import AgentConfig, ConfigError, check_against_bundle, outbox_path
from edge_agent.decisions import SENSOR_FAULT, UNCERTAIN, UNKNOWN, Decision, DecisionMachine
from edge_agent.drift import DriftMonitor, DriftReading
from edge_agent.embedding_log import (
    CALIBRATION_SET_FILE,
    UNCERTAIN_CODE,
    CalibrationSet,
    EmbeddingLog,
    calibrate_with_set,
    embed_recordings,
)
from edge_agent.events import FaultEvent, StateMessage, Telemetry, WindowStats
from edge_agent.head import Head
from edge_agent.headstore import HeadStore
from edge_agent.interval import IntervalStats
from edge_agent.mqtt import MqttLink
from edge_agent.notify import notify, watchdog_interval_s
from edge_agent.outbox import Outbox
from edge_agent.preprocess import PreprocessSpec, normalize
from edge_agent.ringbuffer import WindowBuffer
from edge_agent.sanity import SanityResult, check_window
from edge_agent.sources import Chunk, Source, SourceError, make_source

logger = logging.getLogger(__name__)

READ_TIMEOUT_S = 0.2  # longest the loop waits for a chunk before serving commands/timers
READY_FALLBACK_S = 5.0  # READY=1 even without a window by then (a quiet source)
COMMAND_TIMEOUT_S = 300.0  # a command not answered by then is reported as failed
FLUSH_TIMEOUT_S = 5.0  # outbox drain at shutdown; well inside systemd's TimeoutStopSec=20
DRIFT_REPEAT_S = 3600.0  # repeat the drift event this often while drifted
SOURCE_RETRY_S = (1.0, 60.0)  # first and longest wait before restarting a failed source


def log_fields(level: int, event: str, **fields: Any) -> None:
    """One structured line: `event k=v k=v` (the JSON log format gets the fields as keys)."""
    text = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
    logger.log(level, "%s %s", event, text, extra={"fields": {"event": event, **fields}})


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return f'"{text}"' if " " in text or not text else text


def utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=timezone.utc)


@dataclass
class ModelRuntime:
    """A verified bundle with its backend and the device head in use."""

    folder: Path
    manifest: Manifest
    factory: Head
    backend: Backend
    head: Head
    head_version: int

    @property
    def spec(self) -> PreprocessSpec:
        return self.manifest.preprocessing.spec()


def load_runtime(
    cfg: AgentConfig,
    store: HeadStore,
    bundle: Path | None = None,
    *,
    source_rate_hz: int | None = None,
) -> ModelRuntime:
    """Verify the bundle, check it against `cfg`, load the backend, then pick the device head.

    source_rate_hz: the rate of an already running source, which the bundle must match.
    The head store is touched only once everything else passed, so a refused bundle leaves it as
    it was. Raises BundleError, ConfigError (config/bundle mismatch), BackendError or ValueError.
    """
    folder, manifest, factory = load_bundle(bundle or cfg.inference.bundle)
    problems = check_against_bundle(cfg, manifest)
    rate = manifest.preprocessing.sample_rate_hz
    if source_rate_hz is not None and rate != source_rate_hz:
        problems.append(
            f"inference.bundle: the bundle needs {rate} Hz but the running source delivers "
            f"{source_rate_hz} Hz; restart the agent to change the sample rate"
        )
    if problems:
        raise ConfigError(problems)
    DecisionMachine.from_manifest(manifest)  # class names usable as states (ValueError if not)
    inference = cfg.inference
    backend = load_backend(
        folder,
        manifest,
        inference.backend,
        inference.threads,
        precision=inference.precision,
        providers=inference.providers,
    )
    store.init_from_factory(factory, manifest.model_version)
    version, head = store.current()
    return ModelRuntime(folder, manifest, factory, backend, head, version)


@dataclass
class Pipeline:
    """Per-bundle state of the window path (rebuilt by reload_bundle)."""

    spec: PreprocessSpec
    buffer: WindowBuffer
    decisions: DecisionMachine
    drift: DriftMonitor | None
    drift_stride: int
    log: EmbeddingLog
    calibration_set: CalibrationSet
    batch: np.ndarray  # (B, W) float32 raw windows in g
    batch_t: np.ndarray  # (B,) window end times, s
    no_probabilities: np.ndarray  # (C,) zeros, for windows that failed the sensor checks
    label_codes: dict[str, int]  # window label -> EmbeddingLog code


class Agent:
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
        self.pipe = self._build_pipeline(self.model)
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
        self._drift_alert_at: float | None = None  # monotonic time of the last drift event
        self._drift_score: float | None = None
        self._shown_state: str | None = None  # state published outside the DecisionMachine
        self._interval = IntervalStats()
        self._normal_seen = 0  # windows decided normal (every drift_stride-th feeds drift)
        self._rate = 0.0  # windows/s over the last telemetry interval
        self._reset_interval(time.monotonic())
        m = self.model.manifest
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
        )

    # ---- set-up -----------------------------------------------------------------------------

    def _build_pipeline(self, model: ModelRuntime) -> Pipeline:
        cfg, manifest, spec = self.cfg, model.manifest, model.spec
        names = manifest.class_names
        decisions = DecisionMachine(
            manifest.class_names,
            manifest.normal_class,
            cfg.decisions.k,
            cfg.decisions.n,
            cfg.inference.uncertain_below or manifest.thresholds.uncertain_below,
        )
        threshold = cfg.decisions.drift_threshold or manifest.thresholds.drift_score
        try:
            drift: DriftMonitor | None = DriftMonitor(
                manifest.reference_stats,
                manifest.normal_class,
                cfg.decisions.drift_window,
                threshold,
            )
        except ValueError as exc:
            logger.warning("drift monitoring off: %s", exc)
            drift = None
        batch = cfg.inference.batch_windows
        chunk = max(getattr(cfg.source, "chunk_samples", 0), getattr(cfg.source, "blocksize", 0))
        capacity = max(64, 2 * batch, chunk // spec.hop + 2)  # one chunk never overruns
        return Pipeline(
            spec=spec,
            buffer=WindowBuffer.from_spec(spec, capacity_windows=capacity),
            decisions=decisions,
            drift=drift,
            drift_stride=max(1, math.ceil(spec.window / spec.hop)),
            log=EmbeddingLog(cfg.embedding_log_rows, manifest.embedding_dim),
            calibration_set=CalibrationSet(
                cfg.state_dir / CALIBRATION_SET_FILE,
                manifest.model_version,
                manifest.class_names,
                manifest.embedding_dim,
            ),
            batch=np.zeros((batch, spec.window), dtype=np.float32),
            batch_t=np.zeros(batch),
            no_probabilities=np.zeros(len(manifest.class_names)),
            label_codes={UNCERTAIN: UNCERTAIN_CODE, **{c: i for i, c in enumerate(names)}},
        )

    def close(self) -> None:
        """Release the source and the outbox (run() closes the MQTT link itself)."""
        if self.link is not None:
            self.link.close(FLUSH_TIMEOUT_S)
        self.source.stop()
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
        try:
            self.link = MqttLink(self.cfg.mqtt, self.outbox, self._submit_command)
        except (OSError, ValueError) as exc:  # TLS files unreadable, bad certificate...
            self.source.stop()
            raise ConfigError([f"mqtt: cannot set up the connection: {exc}"]) from exc
        self._running = True
        started = time.monotonic()
        self._reset_interval(started)
        ready = False
        watchdog_s = watchdog_interval_s()
        next_watchdog = started
        notify(STATUS="starting")
        try:
            while not stop.is_set():
                now = time.monotonic()
                if watchdog_s is not None and now >= next_watchdog:
                    notify(WATCHDOG=1)
                    next_watchdog = now + watchdog_s
                self._run_commands()
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
                    continue
                self.pipe.buffer.push(chunk)
                self._drain(max_windows)
        finally:
            self._running = False
            notify(STOPPING=1, STATUS="stopping: flushing the outbox")
            self._fail_pending_commands()
            summary = self.status_data()
            link, self.link = self.link, None
            link.close(FLUSH_TIMEOUT_S)
            self.source.stop()
            log_fields(
                logging.INFO,
                "agent_stopped",
                windows=self.windows_total,
                events=self.events_total,
                outbox_pending=len(self.outbox),
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
            self._retry_wait = SOURCE_RETRY_S[0]
            self.pipe.buffer = WindowBuffer.from_spec(
                self.pipe.spec, self.pipe.buffer.capacity_windows
            )
        try:
            return self.source.read(READ_TIMEOUT_S)
        except SourceError as exc:
            self._source_failed(exc)
            return None

    def _source_failed(self, exc: SourceError) -> None:
        logger.error("source failed: %s; restarting it with backoff", exc)
        previous = self.pipe.decisions.state
        self.pipe.decisions.reset()  # the next good windows re-announce the state
        self._shown_state = SENSOR_FAULT
        try:
            self.source.stop()
        except Exception as stop_exc:  # a broken device may fail to close too
            logger.debug("source stop after failure: %s", stop_exc)
        self._source_down = True
        self._retry_wait = SOURCE_RETRY_S[0]
        self._retry_at = time.monotonic() + self._retry_wait
        event = self._event(
            "sensor_fault",
            "warning",
            state=SENSOR_FAULT,
            previous_state=previous,
            message=f"source failed: {exc}",
        )
        self._publish(event)
        self._publish_state(SENSOR_FAULT, None, None, time.time())

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
        codes = np.empty(len(ok), dtype=np.int16)  # label code of each embedded window
        if ok:
            x = normalize(
                pipe.batch[:n] if len(ok) == n else pipe.batch[ok], pipe.spec.normalization
            )
            start = time.perf_counter()
            emb = model.backend.embed(x)
            self._interval.add_inference((time.perf_counter() - start) * 1000 / len(ok))
            probs = model.head.probabilities(emb)
        j = 0
        for i, check in enumerate(checks):
            self._interval.add_window(check.stats)
            t_end = float(pipe.batch_t[i])
            if check.ok:
                decision = pipe.decisions.update(probs[j], sanity_ok=True, t=t_end)
                codes[j] = pipe.label_codes[decision.label]
                self._feed_drift(decision, emb[j])
                row = probs[j]
                j += 1
            else:
                decision = pipe.decisions.update(
                    pipe.no_probabilities, sanity_ok=False, sanity_reason=check.reason, t=t_end
                )
                row = None
            if decision.changed:
                self._state_changed(decision, row, check)
        if ok:
            pipe.log.append(emb, pipe.batch_t[ok], codes)
        self.windows_total += n

    def _feed_drift(self, decision: Decision, emb: np.ndarray) -> None:
        pipe = self.pipe
        normal = pipe.decisions.normal_class
        if pipe.drift is None or decision.state != normal or decision.label != normal:
            return
        self._normal_seen += 1
        if self._normal_seen % pipe.drift_stride:
            return
        reading = pipe.drift.update(self.model.head.adapt(emb))
        if reading is None:
            return
        if pipe.drift.baseline is None and self.cfg.decisions.commission_baseline:
            pipe.drift.set_baseline_from_recent()
            logger.info("drift baseline commissioned from %d normal windows", reading.n)
        self._check_drift(reading)

    def _check_drift(self, reading: DriftReading) -> None:
        self._drift_score = reading.score
        now = time.monotonic()
        if reading.drifted or reading.baseline_drifted:
            due = self._drift_alert_at is None or now - self._drift_alert_at >= DRIFT_REPEAT_S
            if not due:
                return
            self._drift_alert_at = now
            text = (
                "normal operation drifted from the training data"
                if reading.drifted
                else f"normal operation changed since commissioning (score "
                f"{reading.baseline_score:.2f} vs this device's baseline)"
            )
            severity = "warning"
        elif self._drift_alert_at is not None:
            self._drift_alert_at = None
            severity, text = "info", "drift cleared"
        else:
            return
        threshold = self.pipe.drift.threshold if self.pipe.drift else 0.0
        event = self._event(
            "drift",
            severity,
            state=self.pipe.decisions.state,
            drift_score=max(reading.score, 0.0),
            message=f"{text}: score {reading.score:.2f} (threshold {threshold:.2f}, "
            f"{reading.n} windows)",
        )
        self._publish(event)

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
        if state == SENSOR_FAULT:
            kind, severity = "sensor_fault", "warning"
        elif state == UNCERTAIN:
            kind, severity = "uncertain", "warning"
        else:
            kind, severity = "state_change", "info" if state == normal else "alarm"
        why = f" ({decision.sanity_reason})" if decision.sanity_reason else ""
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
        self.events_total += 1
        self.last_event_id = event.event_id
        log_fields(
            logging.WARNING if event.severity != "info" else logging.INFO,
            "event",
            kind=event.kind,
            severity=event.severity,
            state=event.state,
            previous=event.previous_state,
            event_id=event.event_id,
            detail=event.message,
        )
        if self.link is not None:
            self.link.publish_event(event)

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

    def _reset_interval(self, now: float) -> None:
        self._interval.start(now, self.windows_total)

    def _end_interval(self, now: float) -> None:
        stats = self._interval.summary(now, self.windows_total)
        self._rate = stats["windows_per_s"]
        buffer = self.pipe.buffer
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
            outbox_pending=len(self.outbox),
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
            drift_score=self._drift_score if self._drift_score is not None else "n/a",
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
            f"windows={self.windows_total} mqtt={mqtt} outbox={len(self.outbox)}"
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
            "outbox_pending": len(self.outbox),
            "mqtt_connected": bool(self.link is not None and self.link.connected),
            "source_ok": not self._source_down,
            "model_name": m.model_name,
            "model_version": m.model_version,
            "head_version": self.model.head_version,
            "drift_score": self._drift_score,
            "embedding_log": {
                "rows": len(pipe.log),
                "first_utc": utc(span[0]).isoformat() if span else None,
                "last_utc": utc(span[1]).isoformat() if span else None,
            },
            "calibration_set": pipe.calibration_set.counts(),
        }

    # ---- commands ---------------------------------------------------------------------------

    def _submit_command(self, command: Command) -> CommandResult:
        """MQTT worker thread: hand the command to the agent thread and wait for its result."""
        if not self._running:
            return CommandResult(
                id=command.id, ok=False, message="the agent is starting or stopping; retry"
            )
        future: Future = Future()
        self._commands.put((command, future))
        try:
            return future.result(timeout=COMMAND_TIMEOUT_S)
        except FutureTimeout:
            return CommandResult(
                id=command.id,
                ok=False,
                message=f"{command.name}: no answer within {COMMAND_TIMEOUT_S:.0f} s",
            )

    def _run_commands(self) -> None:
        self._drain_commands(self.handle_command)

    def _fail_pending_commands(self) -> None:
        self._drain_commands(
            lambda command: CommandResult(id=command.id, ok=False, message="the agent is stopping")
        )

    def _drain_commands(self, answer: Callable[[Command], CommandResult]) -> None:
        """Answer every queued command (on the agent thread) until the queue is empty."""
        while True:
            try:
                command, future = self._commands.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                future.set_result(answer(command))

    def handle_command(self, command: Command) -> CommandResult:
        """Run one command on the agent thread; never raises (failures are ok=False results)."""
        self._kick_watchdog()
        result = execute(self._dispatch, command)
        log_fields(
            logging.INFO if result.ok else logging.WARNING,
            "command",
            name=command.name,
            id=command.id,
            ok=result.ok,
            detail=result.message,
        )
        return result

    def _dispatch(self, command: Command) -> CommandResult:
        if isinstance(command, PingCommand):
            data = {"uptime_s": round(time.monotonic() - self._started, 3)}
            return CommandResult(id=command.id, ok=True, message="pong", data=data)
        if isinstance(command, StatusCommand):
            return CommandResult(id=command.id, ok=True, message="status", data=self.status_data())
        if isinstance(command, CalibrateCommand):
            return self._calibrate(command)
        if isinstance(command, RollbackHeadCommand):
            return self._rollback(command)
        if isinstance(command, ReloadBundleCommand):
            return self._reload(command)
        raise TypeError(f"no handler for command {command.name!r}")

    def _kick_watchdog(self) -> None:
        """WATCHDOG=1 around work that may take a while (calibration, reloads)."""
        if watchdog_interval_s() is not None:
            notify(WATCHDOG=1)

    def _fail(self, command: Command, message: str, **data: Any) -> CommandResult:
        return CommandResult(id=command.id, ok=False, message=message, data=data)

    def _calibrate(self, command: CalibrateCommand) -> CommandResult:
        pipe = self.pipe
        names = pipe.decisions.class_names
        if command.label not in names:
            return self._fail(
                command, f"unknown label {command.label!r}; valid: {', '.join(names)}"
            )
        if command.files is not None:
            try:
                emb, t, rejected = embed_recordings(
                    [Path(f) for f in command.files],
                    self.cfg.sensor,
                    self.model.manifest,
                    self.model.backend,
                    self.cfg.inference.batch_windows,
                )
            except SourceError as exc:
                return self._fail(command, f"calibrate: {exc}")
            where = f"{len(command.files)} file(s), {rejected} windows failed the sensor checks"
        else:
            assert command.labels_from_utc is not None and command.labels_to_utc is not None
            t_from, t_to = command.labels_from_utc, command.labels_to_utc
            emb, t, _ = pipe.log.select(t_from.timestamp(), t_to.timestamp())
            span = pipe.log.time_range()
            held = (
                f"{utc(span[0]).isoformat()} to {utc(span[1]).isoformat()}" if span else "nothing"
            )
            where = f"{t_from.isoformat()} to {t_to.isoformat()}"
            if not len(t):
                return self._fail(
                    command,
                    f"no logged windows between {where}; the log holds {held} "
                    f"({len(pipe.log)} windows)",
                )
        if not len(t):
            return self._fail(command, f"calibrate: no usable windows in {where}")
        labels = np.full(len(t), names.index(command.label))
        self._kick_watchdog()
        try:
            outcome = calibrate_with_set(
                self.store, self.model.factory, pipe.calibration_set, emb, t, labels
            )
        except ValueError as exc:
            return self._fail(
                command, f"calibrate: {exc}", set_counts=pipe.calibration_set.counts()
            )
        if outcome.result.accepted:
            self._use_head()
        return CommandResult(
            id=command.id,
            ok=outcome.result.accepted,
            message=f"{len(t)} windows ({where}) labeled {command.label!r}; "
            f"{outcome.result.reason}",
            data=outcome.summary(),
        )

    def _use_head(self) -> None:
        """Switch to the store's current head and restart the decisions from 'unknown'."""
        self.model.head_version, self.model.head = self.store.current()
        self.pipe.decisions.reset()
        if self.pipe.drift is not None:
            self.pipe.drift.reset()
        self._publish_state(UNKNOWN, None, None, None)

    def _rollback(self, command: RollbackHeadCommand) -> CommandResult:
        version = None
        if command.version is not None:
            try:
                version = int(command.version.lstrip("v"))
            except ValueError:
                return self._fail(
                    command, f"version {command.version!r} is not a head version number like '3'"
                )
        before = self.model.head_version
        try:
            self.store.rollback(version)
        except ValueError as exc:
            return self._fail(command, f"rollback_head: {exc}")
        self._use_head()
        return CommandResult(
            id=command.id,
            ok=True,
            message=f"head v{before} -> v{self.model.head_version}",
            data={"previous_version": before, "head_version": self.model.head_version},
        )

    def _reload(self, command: ReloadBundleCommand) -> CommandResult:
        path = Path(command.path) if command.path else self.cfg.inference.bundle
        try:
            model = load_runtime(
                self.cfg, self.store, path, source_rate_hz=self.source.sample_rate_hz
            )
        except Exception as exc:  # BundleError, ConfigError, BackendError, ValueError
            text = "; ".join(exc.messages) if isinstance(exc, ConfigError) else str(exc)
            return self._fail(command, f"reload_bundle: kept the running bundle: {text}")
        self.model, self.pipe = model, self._build_pipeline(model)
        self._drift_alert_at, self._drift_score = None, None
        self._publish_state(UNKNOWN, None, None, None)
        m = model.manifest
        return CommandResult(
            id=command.id,
            ok=True,
            message=f"running {m.model_name} {m.model_version} from {model.folder}",
            data={
                "model_name": m.model_name,
                "model_version": m.model_version,
                "head_version": model.head_version,
            },
        )

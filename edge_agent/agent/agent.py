"""The gateway agent: one source, one model, many channels, one MQTT link.

`Agent(cfg)` validates everything at start-up, never halfway through a shift: the bundle's
checksums (`BundleError`), config against bundle (`ConfigError`), each channel's head store (its
calibrated head, or the bundle's factory head), the backend (`BackendError`), the source
(`SourceError`) and the outbox (`OutboxError`). `run()` then loops:

    chunk -> each channel's WindowBuffer -> up to `inference.batch_windows` windows per channel
    -> sanity checks per channel -> one backend call for the valid windows of every channel
    -> each channel's head, physics fusion, open set, decisions, condition monitor
    -> the publisher: events (through the outbox), retained state, telemetry

The agent wires parts that each do one job: `pipeline.channel.Channel` (a bearing's window path,
no I/O), `agent.publisher.Publisher` (events, state, telemetry), `agent.commands` (name ->
handler), the MQTT link (`mqtt.link`) and the source (`sources`). A channel whose sensor fails
the checks (flat line, clipping) reports `sensor_fault` alone; the other channels go on. A
source that fails mid-run (USB interface unplugged) or delivers no samples for
`sensor.no_data_after_s` (a stalled stream: `no_data`) gives one `sensor_fault` event per
channel and is restarted with exponential backoff; stopping a source is bounded
(`SOURCE_STOP_S`), a driver that hangs is abandoned. A full or failing disk never stops the
loop (see `mqtt.spool`). sd_notify: READY=1 after the first window (or READY_FALLBACK_S),
WATCHDOG=1 at half of WatchdogSec while samples arrive (or while a failed source is being
restarted), STATUS= lines, STOPPING=1 before the flush.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Any

import numpy as np

from edge_agent.agent.commands import CommandQueue
from edge_agent.agent.log import log_fields, logger
from edge_agent.agent.notify import notify, watchdog_interval_s
from edge_agent.agent.ota import Probation
from edge_agent.agent.publisher import Publisher
from edge_agent.config import AgentConfig, ConfigError, outbox_path
from edge_agent.contract.commands import CommandError, CommandResult
from edge_agent.contract.preprocess import normalize
from edge_agent.contract.wire import utc
from edge_agent.mqtt.link import MqttLink
from edge_agent.mqtt.outbox import Outbox
from edge_agent.pipeline.channel import Channel
from edge_agent.pipeline.decisions import UNKNOWN
from edge_agent.pipeline.runtime import ModelRuntime, load_runtime
from edge_agent.sources import Chunk, Source, SourceError, make_source
from edge_agent.sources.base import SourceChannel

READ_TIMEOUT_S = 0.2  # longest the loop waits for a chunk before serving commands/timers
READY_FALLBACK_S = 5.0  # READY=1 even without a window by then (a quiet source)
FLUSH_TIMEOUT_S = 5.0  # outbox drain at shutdown; well inside systemd's TimeoutStopSec=20
SOURCE_RETRY_S = (1.0, 60.0)  # first and longest wait before restarting a failed source
SOURCE_STOP_S = 2.0  # a source that takes longer to stop (driver blocked) is abandoned


class Agent:
    """One gateway agent; use as a context manager, call `run()` once."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        try:
            cfg.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError([f"state_dir: cannot create {cfg.state_dir} ({exc})"]) from exc
        self.model: ModelRuntime = load_runtime(cfg)
        self.channels = [Channel(view, self.model) for view in cfg.channel_views()]
        rate = self.model.spec.sample_rate_hz
        self.source: Source = make_source(cfg.source, cfg.sensor, rate, channels=_inputs(cfg))
        self.outbox = Outbox(outbox_path(cfg), cfg.outbox.max_events, cfg.outbox.when_full)
        self.publisher = Publisher(cfg, self.outbox, self.channels)
        self.commands = CommandQueue()
        self.probation = Probation()  # after update_bundle: a failing bundle is rolled back
        self.started = time.monotonic()
        self._source_down = False
        self._retry_at = 0.0
        self._retry_wait = SOURCE_RETRY_S[0]
        self._last_data_at = time.monotonic()  # when the source last delivered samples
        self._awaiting_data = False  # restarted after a failure, no samples yet
        self._interval_began = time.monotonic()
        self._rates = {ch.name: 0.0 for ch in self.channels}  # windows/s, last interval
        self.source_abandoned = False  # a source's driver blocked its stop (see _stop_source)
        m = self.model.manifest
        unused = [ch.name for ch in self.channels if ch.cfg.bearing is None]
        if m.physics is not None and unused:
            logger.warning(
                "the bundle carries a physics view (defect lines at the shaft speed) that this "
                "config cannot use%s: add a [bearing] section (designation, and shaft_rpm or a "
                "tachometer channel) to fuse it; the model alone decides meanwhile",
                f" on channel(s) {', '.join(unused)}" if cfg.channels else "",
            )
        physics = (
            "none" if m.physics is None else "off" if len(unused) == len(self.channels) else "on"
        )
        log_fields(
            logging.INFO,
            "agent_ready",
            device=cfg.device.id,
            model=m.model_name,
            model_version=m.model_version,
            head_version=self.channels[0].head_version,
            backend=f"{cfg.inference.backend}/{cfg.inference.precision}",
            rate_hz=rate,
            window=m.preprocessing.window,
            hop=m.preprocessing.hop,
            source=cfg.source.type,
            physics=physics,
            spectral="none" if m.spectral is None else "on (factory head)",
            **({"channels": len(self.channels)} if cfg.channels else {}),
        )

    # ---- wiring -----------------------------------------------------------------------------

    @property
    def link(self) -> Any:
        return self.publisher.link

    @link.setter
    def link(self, link: Any) -> None:  # an MqttLink while running; a MemoryLink offline
        self.publisher.link = link

    @property
    def windows_total(self) -> int:
        return sum(ch.windows_total for ch in self.channels)

    def use_model(self, model: ModelRuntime) -> None:
        """Every channel runs `model` (reload, update, rollback); decisions restart from
        'unknown', as each channel's retained state says."""
        self.model = model
        for ch in self.channels:
            ch.bind(model)
            self.publisher.state(ch, UNKNOWN, None, None, None)

    def channel_for(self, asset: str | None) -> Channel | None:
        """The channel reporting as `asset`; the only channel of a single-channel agent."""
        if len(self.channels) == 1:
            return self.channels[0]
        return next((ch for ch in self.channels if ch.cfg.mqtt.asset == asset), None)

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

    def _reply(self, reply: CommandResult | CommandError, asset: str) -> None:
        if self.link is not None:
            self.link.publish_reply(reply, asset)

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
        window = self.model.spec.window
        if recording is not None and len(recording) < window:
            self._stop_source()
            raise SourceError(
                f"{self.cfg.source.path}: {len(recording)} samples at "  # type: ignore[union-attr]
                f"{self.source.sample_rate_hz} Hz, shorter than one window ({window}); nothing "
                "to analyse: record longer"
            )
        assets = [
            ch.cfg.mqtt.asset for ch in self.channels if ch.cfg.mqtt.asset != self.cfg.mqtt.asset
        ]
        try:
            gateway_is_channel = any(
                ch.cfg.mqtt.asset == self.cfg.mqtt.asset for ch in self.channels
            )
            self.link = MqttLink(self.cfg.mqtt, self.outbox, self.commands.submit, assets=assets,
                                 gateway_is_channel=gateway_is_channel)  # fmt: skip
        except (OSError, ValueError) as exc:  # TLS files unreadable, bad certificate...
            self._stop_source()
            raise ConfigError([f"mqtt: cannot set up the connection: {exc}"]) from exc
        self.commands.accepting = True
        started = time.monotonic()
        self._last_data_at = started
        self._start_interval(started)
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
                self.commands.run(self, self._reply)
                self.publisher.check_storage(self.channels)
                if now >= self._interval_began + self.cfg.telemetry_interval_s:
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
                if self._awaiting_data:
                    self._awaiting_data = False
                    self._retry_wait = SOURCE_RETRY_S[0]
                self.push(chunk)
                self._drain(max_windows)
        finally:
            notify(STOPPING=1, STATUS="stopping: flushing the outbox")
            self.commands.refuse_all(self._reply)
            summary = self.status_data()
            link, self.link = self.link, None
            link.close(FLUSH_TIMEOUT_S)
            self._stop_source()
            log_fields(
                logging.INFO,
                "agent_stopped",
                windows=self.windows_total,
                events=sum(ch.events_total for ch in self.channels),
                outbox_pending=self.publisher.pending(),
            )
        return summary

    def push(self, chunk: Chunk) -> None:
        """Give each channel its column of `chunk` (one column: the whole chunk)."""
        one = chunk.samples.ndim == 1
        for j, ch in enumerate(self.channels):
            if chunk.shaft_hz is not None and ch.monitor.evidence is not None:
                ch.monitor.evidence.measured_shaft_hz = chunk.shaft_hz
            ch.buffer.push(chunk if one else replace(chunk, samples=chunk.samples[:, j]))

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
            for ch in self.channels:
                ch.reset_buffer()
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
        for ch in self.channels:
            self.publisher.sensor_fault(ch, f"{reason}: {exc}")
        self._stop_source()  # after telling the world: a blocked driver takes SOURCE_STOP_S
        self._source_down = True
        self._retry_wait = SOURCE_RETRY_S[0]
        self._retry_at = time.monotonic() + self._retry_wait

    def _schedule_retry(self, exc: SourceError) -> None:
        self._retry_wait = min(self._retry_wait * 2, SOURCE_RETRY_S[1])
        self._retry_at = time.monotonic() + self._retry_wait
        logger.warning("source still failing (%s); next try in %.1f s", exc, self._retry_wait)

    # ---- windows ----------------------------------------------------------------------------

    def _drain(self, max_windows: int | None = None) -> None:
        """Process the ready windows of every channel, up to `inference.batch_windows` per
        channel and backend call."""
        size = self.cfg.inference.batch_windows
        ready = [ch.buffer.windows() for ch in self.channels]
        while True:
            counts = []
            for ch, windows in zip(self.channels, ready, strict=True):
                n = 0
                for window, t_end in windows:
                    ch.batch[n], ch.batch_t[n] = window, t_end
                    n += 1
                    if n == size:
                        break
                counts.append(n)
            if not any(counts):
                return
            self._process(counts)
            if max_windows is not None and self.windows_total >= max_windows:
                return

    def _process(self, counts: list[int]) -> None:
        """Sanity per channel, one backend call for every valid window, decisions per channel."""
        checks = [ch.check(n) for ch, n in zip(self.channels, counts, strict=True)]
        valid = [[i for i, c in enumerate(cs) if c.ok] for cs in checks]
        parts = [
            ch.batch[: len(ok)] if len(ok) == n else ch.batch[ok]
            for ch, n, ok in zip(self.channels, counts, valid, strict=True)
            if ok
        ]
        emb = ms = None
        if parts:
            x_raw = parts[0] if len(parts) == 1 else np.concatenate(parts)
            x = normalize(x_raw, self.model.spec.normalization)
            start = time.perf_counter()
            try:
                emb = self.model.backend.embed(x)
            except Exception as exc:
                if not self.probation.roll_back(self, f"the backend raised: {exc}"):
                    raise  # not on probation (or no way back): as before the update existed
                return  # the previous bundle runs again; this batch of windows is dropped
            ms = (time.perf_counter() - start) * 1000 / len(x)
        at = 0
        for ch, n, cs, ok in zip(self.channels, counts, checks, valid, strict=True):
            if not n:
                continue
            mine = None
            if ok:
                assert emb is not None and ms is not None
                mine, at = emb[at : at + len(ok)], at + len(ok)
                self.publisher.add_inference(ch, ms)
            for outcome in ch.decide(n, cs, mine):
                self.publisher.outcome(ch, outcome)

    # ---- telemetry and status ---------------------------------------------------------------

    def _start_interval(self, now: float) -> None:
        self._interval_began = now
        self.publisher.restart_intervals(now, self.channels)

    def _end_interval(self, now: float) -> None:
        for ch in self.channels:
            self._rates[ch.name] = self.publisher.telemetry(ch, now)
        if self.link is not None:
            self.link.publish_status()
        notify(STATUS=self._status_line())
        self._interval_began = now

    def _status_line(self) -> str:
        mqtt = "connected" if self.publisher.connected else "offline"
        states = ",".join(ch.decisions.state for ch in self.channels)
        rate = sum(self._rates.values())
        return (
            f"state={states} windows/s={rate:.1f} windows={self.windows_total} mqtt={mqtt} "
            f"outbox={self.publisher.pending()}"
        )

    def status_data(self) -> dict[str, Any]:
        """Counters and state, as the `status` command reports them; a multi-channel agent
        reports each channel under `channels`."""
        m = self.model.manifest
        gateway = {
            "uptime_s": round(time.monotonic() - self.started, 3),
            "windows_total": self.windows_total,
            "events_total": sum(ch.events_total for ch in self.channels),
            "outbox_pending": self.publisher.pending(),
            "storage_error": self.publisher.storage_problem,
            "mqtt_connected": self.publisher.connected,
            "source_ok": not self._source_down,
            "model_name": m.model_name,
            "model_version": m.model_version,
        }
        per_channel = {ch.name: self._channel_status(ch) for ch in self.channels}
        if len(self.channels) == 1:
            only = per_channel[self.channels[0].name]
            del only["asset"]
            return {**only, **gateway}
        return {**gateway, "channels": per_channel}

    def _channel_status(self, ch: Channel) -> dict[str, Any]:
        span = ch.log.time_range()
        since = ch.decisions.since
        return {
            "state": ch.decisions.state,
            "since_utc": utc(since).isoformat() if since is not None else None,
            "asset": ch.cfg.mqtt.asset,
            "windows_total": ch.windows_total,
            "windows_per_s": round(self._rates[ch.name], 2),
            "events_total": ch.events_total,
            "dropped_samples": ch.buffer.dropped_samples,
            "overruns": ch.buffer.overruns,
            "head_version": ch.head_version,
            "template": ch.template_source,
            "labels_reach": _reach_status(ch),
            "condition": ch.monitor.status(),
            "embedding_log": {
                "rows": len(ch.log),
                "first_utc": utc(span[0]).isoformat() if span else None,
                "last_utc": utc(span[1]).isoformat() if span else None,
            },
            "calibration_set": ch.calibration_set.counts(),
        }


def _reach_status(ch: Channel) -> dict[str, Any] | None:
    """The labels the device head vouches with (calibration.reach); None: a clear line decides
    wherever it disagrees (the factory head) or nowhere beyond the head (labels without views)."""
    reach = ch.head.reach
    if reach is None:
        return None
    return {"windows": len(reach.views), "radius": round(reach.radius, 4)}


def _inputs(cfg: AgentConfig) -> list[SourceChannel] | None:
    """What a multi-channel source reads per channel; None: today's single channel."""
    if not cfg.channels:
        return None
    return [SourceChannel(c.input, c.sensor or cfg.sensor, c.schedule) for c in cfg.channels]

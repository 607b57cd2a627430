"""The agent's command handlers: ping, status, calibrate, rollback_head, reload_bundle, commission.

Commands arrive on the MQTT link's worker thread (`_submit_command`) and are run on the agent
thread between batches (`_run_commands`), through a queue and a future; a failing command answers
ok=False and never stops the loop. `CommandHandlers` is a mixin of `Agent`: the annotations below
name what it uses of the agent.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.agent.log import log_fields
from edge_agent.agent.notify import notify, watchdog_interval_s
from edge_agent.calibration.embedding_log import calibrate_with_set, embed_recordings
from edge_agent.calibration.headstore import HeadStore
from edge_agent.config import AgentConfig, ConfigError
from edge_agent.contract.commands import (
    CalibrateCommand,
    Command,
    CommandResult,
    CommissionCommand,
    PingCommand,
    ReloadBundleCommand,
    RollbackHeadCommand,
    StatusCommand,
    execute,
)
from edge_agent.contract.wire import utc
from edge_agent.pipeline.decisions import UNKNOWN
from edge_agent.pipeline.runtime import ModelRuntime, Pipeline, build_pipeline, load_runtime
from edge_agent.sources import Source, SourceError

COMMAND_TIMEOUT_S = 300.0  # a command not answered by then is reported as failed


class CommandHandlers:
    """Queue, run and answer commands on the agent thread (mixed into `Agent`)."""

    cfg: AgentConfig
    store: HeadStore
    model: ModelRuntime
    pipe: Pipeline
    source: Source
    _commands: queue.Queue[tuple[Command, Future]]
    _running: bool
    _started: float
    status_data: Callable[[], dict[str, Any]]
    _publish_state: Callable[[str, str | None, float | None, float | None], None]

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
        if isinstance(command, CommissionCommand):
            message = self.pipe.monitor.commission()
            return CommandResult(id=command.id, ok=True, message=message)
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
                    rate_hz=command.rate_hz,
                    max_windows=command.max_windows,
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
        self._publish_state(UNKNOWN, None, None, None)

    def _rollback(self, command: RollbackHeadCommand) -> CommandResult:
        version = None if command.version is None else int(command.version.removeprefix("v"))
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
        self.model, self.pipe = model, build_pipeline(self.cfg, model)
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

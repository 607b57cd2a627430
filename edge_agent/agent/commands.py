"""The agent's commands: one table from command name to handler, one queue, one dispatch.

The MQTT link validates a command on its network thread and hands it over with the asset
whose `cmd/` subtree it arrived on (`CommandQueue.submit`, never blocking); the agent thread
runs the queued commands between batches (`CommandQueue.run`) and answers through the link.
Per-channel commands (calibrate, rollback_head, commission) act on the channel that owns the
asset; gateway commands (ping, status, reload_bundle, update_bundle: see agent.ota) on the
whole agent. A failing command answers ok=False and never stops the loop.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.agent.log import log_fields
from edge_agent.agent.notify import kick_watchdog
from edge_agent.agent.ota import apply_update, refusal
from edge_agent.calibration.embedding_log import calibrate_with_set, embed_recordings
from edge_agent.contract.commands import (
    CalibrateCommand,
    Command,
    CommandResult,
    CommissionCommand,
    ReloadBundleCommand,
    RollbackHeadCommand,
    UpdateBundleCommand,
    execute,
)
from edge_agent.contract.wire import one_line, utc
from edge_agent.pipeline.channel import Channel
from edge_agent.pipeline.decisions import UNKNOWN
from edge_agent.pipeline.runtime import load_runtime
from edge_agent.sources import SourceError

if TYPE_CHECKING:
    from edge_agent.agent.agent import Agent

MAX_QUEUED = 32  # commands waiting for the agent thread; more are refused at once

Handler = Callable[["Agent", Channel, Command], CommandResult]


class CommandQueue:
    """Commands from the link's thread to the agent thread, answered through `reply`."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[Command, str]] = queue.Queue(MAX_QUEUED)
        self.accepting = False  # only while the agent runs

    def submit(self, command: Command, asset: str) -> str | None:
        """Link thread: queue `command`; a refusal message when it cannot be taken now."""
        if not self.accepting:
            return "the agent is starting or stopping; retry"
        try:
            self._queue.put_nowait((command, asset))
        except queue.Full:
            return f"{MAX_QUEUED} commands are waiting already; retry later"
        return None

    def run(self, agent: Agent, reply: Callable[[CommandResult, str], None]) -> None:
        """Agent thread: answer every queued command."""
        while True:
            try:
                command, asset = self._queue.get_nowait()
            except queue.Empty:
                return
            reply(handle(agent, command, asset), asset)

    def refuse_all(self, reply: Callable[[CommandResult, str], None]) -> None:
        """At shutdown: answer what is still queued with ok=False."""
        self.accepting = False
        while True:
            try:
                command, asset = self._queue.get_nowait()
            except queue.Empty:
                return
            reply(CommandResult(id=command.id, ok=False, message="the agent is stopping"), asset)


def handle(agent: Agent, command: Command, asset: str | None = None) -> CommandResult:
    """Run one command on the agent thread; never raises (failures are ok=False results)."""
    kick_watchdog()
    handler, per_channel, changes_state = HANDLERS[command.name]
    channel = agent.channel_for(asset)
    issuers = agent.cfg.mqtt.command_issuers
    if changes_state and issuers and command.issuer not in issuers:
        who = "no issuer" if command.issuer is None else f"issuer {command.issuer!r}"
        result = _fail(command, f"{command.name} changes this device: {who} is not one of "
                       "mqtt.command_issuers")  # fmt: skip
    elif per_channel and channel is None:
        assets = ", ".join(ch.cfg.mqtt.asset for ch in agent.channels)
        result = _fail(command, f"{command.name} acts on one channel: send it to the cmd/ "
                       f"topic of its asset ({assets})")  # fmt: skip
    else:
        result = execute(lambda c: handler(agent, channel or agent.channels[0], c), command)
    log_fields(
        logging.INFO if result.ok else logging.WARNING,
        "command",
        name=command.name,
        id=command.id,
        ok=result.ok,
        detail=result.message,
    )
    return result


def _fail(command: Command, message: str, **data: Any) -> CommandResult:
    return CommandResult(id=command.id, ok=False, message=message, data=data)


def ping(agent: Agent, ch: Channel, command: Command) -> CommandResult:
    data = {"uptime_s": round(time.monotonic() - agent.started, 3)}
    return CommandResult(id=command.id, ok=True, message="pong", data=data)


def status(agent: Agent, ch: Channel, command: Command) -> CommandResult:
    return CommandResult(id=command.id, ok=True, message="status", data=agent.status_data())


def commission(agent: Agent, ch: Channel, command: Command) -> CommandResult:
    assert isinstance(command, CommissionCommand)
    return CommandResult(id=command.id, ok=True, message=ch.monitor.commission())


def calibrate(agent: Agent, ch: Channel, command: Command) -> CommandResult:
    assert isinstance(command, CalibrateCommand)
    names = ch.decisions.class_names
    if command.label not in names:
        return _fail(command, f"unknown label {command.label!r}; valid: {', '.join(names)}")
    if command.files is not None:
        try:
            emb, t, views, rejected = embed_recordings(
                [Path(f) for f in command.files],
                ch.cfg.sensor,
                ch.model.manifest,
                ch.model.backend,
                ch.cfg.inference.batch_windows,
                rate_hz=command.rate_hz,
                max_windows=command.max_windows,
                start_s=command.start_s,
                end_s=command.end_s,
            )
        except SourceError as exc:
            return _fail(command, f"calibrate: {exc}")
        where = f"{len(command.files)} file(s), {rejected} windows failed the sensor checks"
    else:
        assert command.labels_from_utc is not None and command.labels_to_utc is not None
        t_from, t_to = command.labels_from_utc, command.labels_to_utc
        emb, t, _, views = ch.log.select(t_from.timestamp(), t_to.timestamp())
        span = ch.log.time_range()
        held = f"{utc(span[0]).isoformat()} to {utc(span[1]).isoformat()}" if span else "nothing"
        where = f"{t_from.isoformat()} to {t_to.isoformat()}"
        if not len(t):
            return _fail(
                command,
                f"no logged windows between {where}; the log holds {held} ({len(ch.log)} windows)",
            )
    if not len(t):
        return _fail(command, f"calibrate: no usable windows in {where}")
    labels = np.full(len(t), names.index(command.label))
    kick_watchdog()
    try:
        outcome = calibrate_with_set(
            ch.store, ch.model.factory, ch.calibration_set, emb, t, labels, views
        )
    except ValueError as exc:
        return _fail(command, f"calibrate: {exc}", set_counts=ch.calibration_set.counts())
    if outcome.result.accepted:
        _use_head(agent, ch)
    return CommandResult(
        id=command.id,
        ok=outcome.result.accepted,
        message=f"{len(t)} windows ({where}) labeled {command.label!r}; {outcome.result.reason}",
        data=outcome.summary(),
    )


def rollback_head(agent: Agent, ch: Channel, command: Command) -> CommandResult:
    assert isinstance(command, RollbackHeadCommand)
    version = None if command.version is None else int(command.version.removeprefix("v"))
    before = ch.head_version
    try:
        ch.store.rollback(version)
    except ValueError as exc:
        return _fail(command, f"rollback_head: {exc}")
    _use_head(agent, ch)
    return CommandResult(
        id=command.id,
        ok=True,
        message=f"head v{before} -> v{ch.head_version}",
        data={"previous_version": before, "head_version": ch.head_version},
    )


def reload_bundle(agent: Agent, ch: Channel, command: Command) -> CommandResult:
    assert isinstance(command, ReloadBundleCommand)
    path = Path(command.path) if command.path else agent.cfg.inference.bundle
    try:
        model = load_runtime(agent.cfg, path, source_rate_hz=agent.source.sample_rate_hz)
    except Exception as exc:  # BundleError, ConfigError, BackendError, ValueError
        return _fail(command, f"reload_bundle: kept the running bundle: {one_line(exc)}")
    agent.use_model(model)
    m = model.manifest
    return CommandResult(
        id=command.id,
        ok=True,
        message=f"running {m.model_name} {m.model_version} from {model.folder}",
        data={
            "model_name": m.model_name,
            "model_version": m.model_version,
            "head_version": agent.channels[0].head_version,
        },
    )


def update_bundle(agent: Agent, ch: Channel, command: Command) -> CommandResult:
    assert isinstance(command, UpdateBundleCommand)
    try:
        data = apply_update(agent, command)
    except Exception as exc:  # UpdateError, SignatureError, BundleError, ConfigError, Backend...
        return _fail(command, f"update_bundle: kept the running bundle: {refusal(exc)}")
    previous = f" (was {data['previous']})" if data["previous"] else " (already running)"
    return CommandResult(
        id=command.id,
        ok=True,
        message=f"running {data['model_name']} {data['model_version']} from {data['bundle']}"
        f"{previous}; probation {data['probation_s']:g} s",
        data=data,
    )


def _use_head(agent: Agent, ch: Channel) -> None:
    """The channel runs its store's current head; decisions restart from 'unknown'."""
    ch.use_head()
    agent.publisher.state(ch, UNKNOWN, None, None, None)


HANDLERS: dict[str, tuple[Handler, bool, bool]] = {
    # name: (handler, acts on one channel, changes the device: needs an allowed issuer)
    "ping": (ping, False, False),
    "status": (status, False, False),
    "calibrate": (calibrate, True, True),
    "rollback_head": (rollback_head, True, True),
    "reload_bundle": (reload_bundle, False, True),
    "commission": (commission, True, True),
    "update_bundle": (update_bundle, False, True),
}

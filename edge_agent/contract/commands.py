"""Inbound commands: validated before anything acts on them, never raised into the caller.

A command is a UTF-8 JSON object published to `<base>/cmd/<name>`:

    ping           {"id": "7"}
    status         {"id": "7"}
    calibrate      {"id": "7", "label": "outer_race",
                    "labels_from_utc": "2025-05-01T10:00:00Z",
                    "labels_to_utc": "2025-05-01T10:05:00Z"}
                   or {"id": "7", "label": "outer_race", "files": ["a.wav", "b.wav"]}
    rollback_head  {"id": "7", "version": "3"}            (version optional: the previous head)
    reload_bundle  {"id": "7", "path": "/opt/fw/b.tgz"}    (path optional: the configured one)
    commission     {"id": "7"}       learn this device's normal again (drift and health baseline)
    update_bundle  {"id": "7", "source": "https://fw.example/m-2.tar.gz", "sha256": "<64 hex>"}
                   download a signed bundle archive, verify, install and run it

`parse_command()` returns a command model or a `CommandError` (published on the `error` topic) for
an oversized payload (checked before parsing), an unknown name, non-UTF-8, non-JSON or wrong fields.
`execute()` runs the service's handler and turns any exception into a failed `CommandResult`
(published on `cmd_result` with the request id).
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import AwareDatetime, Field, ValidationError, model_validator

from edge_agent.contract.wire import SCHEMA_VERSION, StrictModel, WireModel, error_lines, utc_now

logger = logging.getLogger(__name__)

MAX_TOPIC_ECHO = 120  # characters of an offending topic or name quoted back in error messages


class CommandModel(StrictModel):
    name: ClassVar[str]
    id: str = Field(min_length=1, max_length=128, description="Request id, echoed in the result.")
    issuer: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="Who sends it; state-changing commands need one of mqtt.command_issuers "
        "when that list is set.",
    )


class PingCommand(CommandModel):
    """Answer at once; proves the command path works end to end."""

    name: ClassVar[str] = "ping"


class StatusCommand(CommandModel):
    """Reply with the agent's counters and current state."""

    name: ClassVar[str] = "status"


class CalibrateCommand(CommandModel):
    """Label recent data (a UTC time range of the ring buffer, or files) and refit the head."""

    name: ClassVar[str] = "calibrate"
    label: str = Field(min_length=1, max_length=64, description="Class name to assign.")
    labels_from_utc: AwareDatetime | None = None
    labels_to_utc: AwareDatetime | None = None
    files: list[str] | None = Field(None, min_length=1, max_length=1000)
    rate_hz: int | None = Field(
        None, gt=0, le=1_000_000, description="Sample rate of NPY/CSV files (WAV carry theirs)."
    )
    max_windows: int | None = Field(
        None, gt=0, le=100_000, description="At most this many windows per file."
    )
    start_s: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="Label each file from this second on."
    )
    end_s: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Label each file up to this second."
    )

    @model_validator(mode="after")
    def _one_source(self) -> CalibrateCommand:
        has_range = self.labels_from_utc is not None or self.labels_to_utc is not None
        if has_range == (self.files is not None):
            raise ValueError("give either labels_from_utc + labels_to_utc, or files (not both)")
        if has_range:
            if self.labels_from_utc is None or self.labels_to_utc is None:
                raise ValueError("labels_from_utc and labels_to_utc must be given together")
            if self.labels_from_utc >= self.labels_to_utc:
                raise ValueError(
                    f"labels_from_utc ({self.labels_from_utc.isoformat()}) must be before "
                    f"labels_to_utc ({self.labels_to_utc.isoformat()})"
                )
        stretch = self.start_s is not None or self.end_s is not None
        if stretch and self.files is None:
            raise ValueError("start_s and end_s cut files; a time range is cut by its UTC ends")
        if self.start_s is not None and self.end_s is not None and self.start_s >= self.end_s:
            raise ValueError(f"start_s ({self.start_s:g}) must be before end_s ({self.end_s:g})")
        return self


class RollbackHeadCommand(CommandModel):
    """Go back to an earlier calibrated head (default: the previous one)."""

    name: ClassVar[str] = "rollback_head"
    version: str | None = Field(
        None,
        pattern=r"^v?[1-9][0-9]{0,8}$",
        description="A head version number such as '3' or 'v3' (ASCII digits).",
    )


class CommissionCommand(CommandModel):
    """Learn this device's normal again (after a repair, a new mounting or a bearing change)."""

    name: ClassVar[str] = "commission"


class ReloadBundleCommand(CommandModel):
    """Load a model bundle again (default: the configured path), verifying it first."""

    name: ClassVar[str] = "reload_bundle"
    path: str | None = Field(None, min_length=1, max_length=1024)


class UpdateBundleCommand(CommandModel):
    """Download a signed bundle archive, verify it and run it; the running one stays on failure."""

    name: ClassVar[str] = "update_bundle"
    source: str = Field(
        min_length=1,
        max_length=2048,
        pattern=r"^(https?://|/)",
        description="An http(s):// URL of the bundle's .tar.gz, or an absolute path on the device.",
    )
    sha256: str = Field(
        pattern=r"^[0-9a-fA-F]{64}$",
        description="sha256 of the archive (printed by `faultwatch export sign`).",
    )
    allow_class_change: bool = Field(
        False,
        description="Accept a bundle whose class names (or their order, or the normal class) "
        "differ from the running bundle's; the states SCADA receives change with them.",
    )


COMMANDS: dict[str, type[CommandModel]] = {
    m.name: m
    for m in (
        PingCommand,
        StatusCommand,
        CalibrateCommand,
        RollbackHeadCommand,
        ReloadBundleCommand,
        CommissionCommand,
        UpdateBundleCommand,
    )
}
Command = (
    PingCommand
    | StatusCommand
    | CalibrateCommand
    | RollbackHeadCommand
    | ReloadBundleCommand
    | CommissionCommand
    | UpdateBundleCommand
)


class CommandResult(WireModel):
    """The answer to one command, published on `cmd_result`."""

    schema_version: Literal[1] = SCHEMA_VERSION
    id: str = Field(description="The request id of the command answered.")
    ok: bool
    message: str = ""
    data: dict[str, Any] = Field(default_factory=dict)
    time_utc: AwareDatetime = Field(default_factory=utc_now)


class CommandError(WireModel):
    """A command that was refused before running, published on the `error` topic."""

    schema_version: Literal[1] = SCHEMA_VERSION
    topic: str = Field(description="The topic the bad command arrived on.")
    reason: str = Field(description="What was wrong and what to send instead.")
    id: str | None = Field(None, description="The request id, when the payload had a usable one.")
    time_utc: AwareDatetime = Field(default_factory=utc_now)


def _echo(text: str) -> str:
    return repr(text if len(text) <= MAX_TOPIC_ECHO else text[:MAX_TOPIC_ECHO] + "...")


def parse_command(
    topic_suffix: str, payload: bytes, max_bytes: int, *, topic: str | None = None
) -> Command | CommandError:
    """Validate the command `topic_suffix` (the levels after `cmd/`) with its raw payload.

    Never raises: every problem comes back as a `CommandError` naming the topic and the reason.
    `topic` is the full topic quoted in errors (default `cmd/<topic_suffix>`).
    """
    where = topic if topic is not None else f"cmd/{topic_suffix}"

    def refuse(reason: str, request_id: str | None = None) -> CommandError:
        logger.warning("refused command on %s: %s", _echo(where), reason)
        return CommandError(topic=where, reason=reason, id=request_id)

    if len(payload) > max_bytes:
        return refuse(
            f"payload is {len(payload)} bytes, more than mqtt.max_command_bytes={max_bytes}; "
            "send a smaller command"
        )
    model = COMMANDS.get(topic_suffix)
    if model is None:
        close = difflib.get_close_matches(topic_suffix, COMMANDS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return refuse(f"unknown command {_echo(topic_suffix)}; {hint}valid: {', '.join(COMMANDS)}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return refuse(f"payload is not UTF-8 ({exc.reason} at byte {exc.start}); send UTF-8 JSON")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return refuse(
            f"payload is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            'send a JSON object such as {"id": "1"}'
        )
    except (ValueError, RecursionError) as exc:  # e.g. a 5000-digit integer, nesting too deep
        return refuse(f"payload is not usable JSON ({type(exc).__name__}); send a flat JSON object")
    if not isinstance(data, dict):
        return refuse(f"payload must be a JSON object, got {type(data).__name__}")
    try:  # "\ud800" escapes decode to lone surrogates, which no UTF-8 reply could echo
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return refuse(
            "payload has a \\uXXXX escape of an unpaired UTF-16 surrogate (not a character); "
            "send valid Unicode text"
        )
    raw_id = data.get("id")
    request_id = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= 128 else None
    try:
        return model.model_validate(data)  # type: ignore[return-value]
    except ValidationError as exc:
        fields = ", ".join(model.model_fields)
        problems = "; ".join(error_lines(exc, topic_suffix))
        return refuse(f"{problems} (fields: {fields})", request_id)


def execute(handler: Callable[[Command], CommandResult], command: Command) -> CommandResult:
    """Run `handler(command)`; an exception or a wrong return type becomes a failed result."""
    try:
        result = handler(command)
    except Exception as exc:
        logger.exception("command %s (id %s) failed", command.name, command.id)
        return CommandResult(
            id=command.id, ok=False, message=f"{command.name} failed: {type(exc).__name__}: {exc}"
        )
    if not isinstance(result, CommandResult):
        logger.error("handler for %s returned %r, not a CommandResult", command.name, result)
        return CommandResult(
            id=command.id,
            ok=False,
            message=f"{command.name}: the agent's handler returned {type(result).__name__}",
        )
    return result

"""What every message and file between workstation, device and plant shares.

`StrictModel` (unknown fields are errors naming the field; immutable), `error_lines` (one
`field.path: message` line per validation error) and UTC timestamps (`utc_now`, `utc_iso`,
`utc`). Wire payloads (`contract.events`, `contract.commands`), the bundle manifest and the head
store's metadata all build on these.
"""

from __future__ import annotations

from datetime import datetime, timezone

from pydantic import BaseModel, ConfigDict, ValidationError

SCHEMA_VERSION = 1  # of every MQTT payload (`schema_version` field)


class StrictModel(BaseModel):
    """Forbids unknown fields, so a typo is an error naming the field; immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class WireModel(StrictModel):
    """A message on the wire: its JSON Schema (serialization mode) lists every field as required,
    because every field is always present in what the agent publishes (null when unknown)."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


def error_lines(exc: ValidationError, prefix: str = "") -> list[str]:
    """`prefix.field.path: message` per error; `<root>` (or the prefix) when there is no path."""
    lines = []
    for err in exc.errors(include_url=False):
        where = ".".join(p for p in (prefix, ".".join(str(x) for x in err["loc"])) if p)
        lines.append(f"{where or '<root>'}: {err['msg']}")
    return lines


def one_line(exc: BaseException) -> str:
    """An error's message on one line (a ConfigError's `field: problem` lines joined by '; ')."""
    return str(exc).replace("\n", "; ")


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def utc_iso(when: datetime | None = None) -> str:
    """ISO 8601 to the second, e.g. `2026-11-30T08:00:00+00:00` (now when `when` is None)."""
    return (when or utc_now()).isoformat(timespec="seconds")


def utc(t: float) -> datetime:
    """The UTC datetime of a `time.time()` timestamp."""
    return datetime.fromtimestamp(t, tz=timezone.utc)

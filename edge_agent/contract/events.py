"""What the agent publishes: pydantic models serialized to JSON, each with `schema_version`.

`FaultEvent` (topic `.../event`, QoS 1, durable through the outbox), `StateMessage` (`.../state`,
retained), `StatusMessage` (`.../status`, retained, also the last will) and `Telemetry`
(`.../telemetry`, QoS 0, not durable). SCADA integrators get the same contract as JSON Schema files
in `edge_agent/schemas/`, written by `write_schemas()` from these models (a test keeps them equal).

Times are timezone-aware UTC datetimes, serialized as ISO 8601 (`2025-05-01T12:00:00.5Z`).
Events are delivered at least once: de-duplicate by `event_id`.
"""

from __future__ import annotations

import functools
import json
import operator
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, Field, TypeAdapter

from edge_agent.contract.wire import SCHEMA_VERSION, WireModel, utc_now

SCHEMA_FOLDER = Path(__file__).resolve().parent / "schemas"

EventKind = Literal[
    "state_change", "sensor_fault", "drift", "uncertain", "agent", "storage", "health", "evidence"
]
Severity = Literal["info", "warning", "alarm"]
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "alarm": 2}


def _agent_version() -> str:
    try:
        return metadata.version("faultwatch")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


AGENT_VERSION = _agent_version()


def new_event_id() -> str:
    """A fresh uuid4 as 32 lowercase hex digits."""
    return uuid.uuid4().hex


def encode(message: BaseModel) -> bytes:
    """The UTF-8 JSON payload of a message, as published."""
    return message.model_dump_json().encode()


class WindowStats(WireModel):
    """Time-domain statistics of the analysed window, in g (acceleration)."""

    rms_g: float = Field(ge=0)
    peak_g: float = Field(ge=0)
    crest_factor: float = Field(ge=0, description="peak_g / rms_g.")
    kurtosis: float = Field(description="Pearson kurtosis (3 for a Gaussian signal).")


class FaultEvent(WireModel):
    """A change worth telling the control room about; published at QoS 1, at least once."""

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str = Field(
        default_factory=new_event_id,
        pattern=r"^[0-9a-f]{32}$",
        description="uuid4 hex; unique per event, the same on every re-delivery.",
    )
    kind: EventKind
    severity: Severity
    site: str = Field(min_length=1)
    asset: str = Field(min_length=1)
    device: str = Field(min_length=1)
    time_utc: AwareDatetime = Field(default_factory=utc_now, description="When it was raised.")
    window_end_utc: AwareDatetime | None = Field(None, description="End of the analysed window.")
    previous_state: str | None = Field(None, description="State before this event, if any.")
    state: str = Field(min_length=1, description="Class name, 'uncertain' or 'sensor_fault'.")
    class_name: str | None = Field(None, description="Most probable class, even when uncertain.")
    probabilities: dict[str, float] = Field(default_factory=dict, description="Class -> 0..1.")
    confidence: float | None = Field(None, ge=0, le=1, description="Probability of class_name.")
    model_name: str | None = None
    model_version: str | None = None
    head_version: str | None = Field(None, description="Changes with every on-site calibration.")
    window_stats: WindowStats | None = None
    drift_score: float | None = Field(None, ge=0, description="Distance to the training data.")
    evidence: dict[str, Any] | None = Field(
        None,
        description="Envelope-spectrum evidence: shaft_hz, band_hz, strongest class and per "
        "defect line (bpfo, bpfi, bsf, ftf) its expected Hz, peaks, levels and score in dB.",
    )
    unknown_score: float | None = Field(
        None, ge=0, description="Open-set score: distance to the nearest trained class."
    )
    basis: Literal["model", "evidence", "both"] | None = Field(
        None, description="Who decided the state: the model, the physics evidence, or both."
    )
    message: str = Field("", description="One human-readable line.")


class StateMessage(WireModel):
    """The current diagnosis, retained so a SCADA client sees it as soon as it subscribes."""

    schema_version: Literal[1] = SCHEMA_VERSION
    site: str
    asset: str
    device: str
    time_utc: AwareDatetime = Field(default_factory=utc_now)
    state: str = Field(min_length=1)
    class_name: str | None = None
    confidence: float | None = Field(None, ge=0, le=1)
    since_utc: AwareDatetime | None = Field(None, description="When this state began.")
    last_event_id: str | None = Field(None, description="The event that set this state.")
    model_version: str | None = None
    head_version: str | None = None


class StatusMessage(WireModel):
    """Is the agent alive? Retained; the broker publishes the `offline` one as the last will."""

    schema_version: Literal[1] = SCHEMA_VERSION
    status: Literal["online", "offline"]
    site: str
    asset: str
    device: str
    time_utc: AwareDatetime = Field(default_factory=utc_now)
    agent_version: str = Field(default_factory=lambda: AGENT_VERSION)
    started_utc: AwareDatetime
    outbox_pending: int = Field(0, ge=0, description="Events stored, not yet acknowledged.")
    last_error: str | None = None
    storage_error: str | None = Field(
        None, description="Why events cannot be stored durably now (full or failing disk)."
    )


class Telemetry(WireModel):
    """Periodic health numbers; QoS 0, dropped while offline (not durable)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    site: str
    asset: str
    device: str
    time_utc: AwareDatetime = Field(default_factory=utc_now)
    rms_g: float = Field(ge=0)
    peak_g: float = Field(ge=0)
    crest_factor: float = Field(ge=0)
    kurtosis: float
    inference_ms: float = Field(ge=0, description="Mean inference time per window.")
    windows_total: int = Field(ge=0)
    dropped_samples: int = Field(ge=0)
    overruns: int = Field(ge=0, description="Windows skipped because inference fell behind.")
    outbox_pending: int = Field(ge=0)
    cpu_percent: float | None = Field(None, ge=0)
    velocity_rms_mm_s: float | None = Field(None, ge=0, description="10-1000 Hz, latest window.")
    envelope_rms_g: float | None = Field(None, ge=0, description="Latest window.")
    iso_zone: Literal["A", "B", "C", "D"] | None = Field(None, description="ISO 20816-3 zone.")
    health_score: float | None = Field(
        None, ge=0, description="Condition vs the commissioning baseline (robust z, smoothed)."
    )
    drift_score: float | None = Field(
        None, description="Embedding drift vs this device's commissioning baseline."
    )
    commissioning: bool = Field(False, description="Learning this device's normal right now.")


def json_schemas() -> dict[str, dict]:
    """Schema name -> JSON Schema (draft 2020-12) for every message on the wire."""
    from edge_agent.contract.commands import COMMANDS, CommandError, CommandResult

    command_schema = TypeAdapter(functools.reduce(operator.or_, COMMANDS.values())).json_schema()
    command_schema["title"] = "FaultwatchCommand"
    command_schema["description"] = (
        "Payload of a command published to <prefix>/<site>/<asset>/<device>/cmd/<name>; "
        "the topic's last level picks the model (x-faultwatch-commands). At most "
        "mqtt.max_command_bytes bytes of UTF-8 JSON."
    )
    command_schema["x-faultwatch-commands"] = {
        name: f"#/$defs/{model.__name__}" for name, model in COMMANDS.items()
    }
    outbound = {
        "event": FaultEvent,
        "state": StateMessage,
        "status": StatusMessage,
        "telemetry": Telemetry,
        "command_result": CommandResult,
        "command_error": CommandError,
    }
    schemas = {name: m.model_json_schema(mode="serialization") for name, m in outbound.items()}
    schemas["command"] = command_schema  # inbound: validation mode, optional fields optional
    for schema in schemas.values():
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schemas


def schema_text(schema: dict) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_schemas(folder: Path = SCHEMA_FOLDER) -> list[Path]:
    """Write `<name>.schema.json` for every message into `folder`; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, schema in json_schemas().items():
        path = folder / f"{name}.schema.json"
        path.write_text(schema_text(schema), encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":  # python -m edge_agent.contract.events  regenerates edge_agent/schemas/
    for written in write_schemas():
        print(written)

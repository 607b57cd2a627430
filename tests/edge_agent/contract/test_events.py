"""Wire messages: strict models, unique event ids, and JSON Schema files that match the models."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from pydantic import ValidationError

from edge_agent.contract.events import (
    SCHEMA_FOLDER,
    FaultEvent,
    StatusMessage,
    WindowStats,
    encode,
    json_schemas,
    schema_text,
    write_schemas,
)

DEVICE = dict(site="plant", asset="pump7", device="dev1")


def fault(**overrides) -> FaultEvent:
    fields = dict(
        DEVICE,
        kind="state_change",
        severity="alarm",
        previous_state="normal",
        state="inner_race",
        class_name="inner_race",
        probabilities={"normal": 0.05, "inner_race": 0.95},
        confidence=0.95,
        model_name="resnet1d",
        model_version="3",
        head_version="7",
        window_stats=WindowStats(rms_g=0.4, peak_g=2.2, crest_factor=5.5, kurtosis=6.1),
        drift_score=0.8,
        message="bearing inner race fault",
    )
    return FaultEvent(**(fields | overrides))


def test_event_round_trips_through_json_with_a_schema_version():
    event = fault()
    payload = json.loads(encode(event))
    assert payload["schema_version"] == 1
    assert payload["time_utc"].endswith("Z")  # ISO 8601, UTC
    assert FaultEvent.model_validate_json(encode(event)) == event


def test_every_event_gets_its_own_32_hex_id():
    ids = {fault().event_id for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"severity": "critical"}, "severity"),
        ({"kind": "reboot"}, "kind"),
        ({"confidence": 1.5}, "confidence"),
        ({"colour": "red"}, "colour"),
        ({"time_utc": datetime(2025, 1, 1)}, "time_utc"),  # naive: which timezone?
        ({"event_id": "not-hex"}, "event_id"),
    ],
)
def test_bad_fields_are_rejected_naming_the_field(overrides, field):
    with pytest.raises(ValidationError) as info:
        fault(**overrides)
    assert field in str(info.value)


def test_models_are_frozen():
    with pytest.raises(ValidationError):
        fault().state = "normal"


def test_committed_schema_files_equal_the_generated_ones():
    generated = json_schemas()
    committed = {p.name.removesuffix(".schema.json") for p in SCHEMA_FOLDER.glob("*.schema.json")}
    assert committed == set(generated), "run `python -m edge_agent.contract.events` to regenerate"
    for name, schema in generated.items():
        text = (SCHEMA_FOLDER / f"{name}.schema.json").read_text(encoding="utf-8")
        assert text == schema_text(schema), (
            f"{name}.schema.json is stale: python -m edge_agent.contract.events"
        )


def test_schemas_describe_what_is_published(tmp_path):
    written = write_schemas(tmp_path)
    assert {p.name for p in written} >= {
        f"{n}.schema.json"
        for n in ("event", "state", "status", "telemetry", "command", "command_result")
    }
    event_schema = json.loads((tmp_path / "event.schema.json").read_text())
    payload = json.loads(encode(fault()))
    assert set(payload) == set(event_schema["required"]) == set(event_schema["properties"])
    assert event_schema["additionalProperties"] is False
    assert event_schema["properties"]["severity"]["enum"] == ["info", "warning", "alarm"]
    command_schema = json.loads((tmp_path / "command.schema.json").read_text())
    assert set(command_schema["x-faultwatch-commands"]) == {
        "ping", "status", "calibrate", "rollback_head", "reload_bundle", "commission",
        "update_bundle",
    }  # fmt: skip


def test_the_shipped_schemas_are_what_the_models_write(tmp_path):
    from edge_agent.contract.events import SCHEMA_FOLDER

    for path in write_schemas(tmp_path):
        shipped = SCHEMA_FOLDER / path.name
        stale = f"{shipped} is stale: run python -m edge_agent.contract.events"
        assert shipped.read_text() == path.read_text(), stale


def test_status_carries_the_agent_version():
    status = StatusMessage(**DEVICE, status="online", started_utc="2025-05-01T00:00:00Z")
    assert status.agent_version and json.loads(encode(status))["status"] == "online"


def test_published_payloads_validate_against_the_committed_schemas():
    """What a SCADA integrator validates against must accept what the agent sends, and refuse
    a payload with a wrong type or an unknown field."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((SCHEMA_FOLDER / "event.schema.json").read_text())
    payload = json.loads(encode(fault()))
    jsonschema.validate(payload, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**payload, "confidence": "high"}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**payload, "extra": 1}, schema)
    status = json.loads(
        encode(StatusMessage(**DEVICE, status="online", started_utc=datetime.now().astimezone()))
    )
    jsonschema.validate(status, json.loads((SCHEMA_FOLDER / "status.schema.json").read_text()))

"""Inbound commands: valid ones parse, bad ones become CommandErrors, nothing ever raises."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.contract.commands import (
    COMMANDS,
    CalibrateCommand,
    CommandError,
    CommandModel,
    CommandResult,
    PingCommand,
    ReloadBundleCommand,
    RollbackHeadCommand,
    StatusCommand,
    execute,
    parse_command,
)

LIMIT = 4096


def parse(name: str, payload: object, max_bytes: int = LIMIT):
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return parse_command(name, raw, max_bytes)


@pytest.mark.parametrize(
    ("name", "payload", "model"),
    [
        ("ping", {"id": "1"}, PingCommand),
        ("status", {"id": "1"}, StatusCommand),
        ("rollback_head", {"id": "1"}, RollbackHeadCommand),
        ("rollback_head", {"id": "1", "version": "4"}, RollbackHeadCommand),
        ("reload_bundle", {"id": "1", "path": "/opt/fw/b.tar.gz"}, ReloadBundleCommand),
        ("calibrate", {"id": "1", "label": "outer", "files": ["a.wav"]}, CalibrateCommand),
        (
            "calibrate",
            {
                "id": "1",
                "label": "outer",
                "labels_from_utc": "2025-05-01T10:00:00Z",
                "labels_to_utc": "2025-05-01T10:05:00Z",
            },
            CalibrateCommand,
        ),
    ],
)
def test_valid_commands_parse_to_their_model(name, payload, model):
    command = parse(name, payload)
    assert isinstance(command, model) and command.id == "1" and command.name == name


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"id": "1", "label": "x"}, "either labels_from_utc"),
        (
            {"id": "1", "label": "x", "files": ["a"], "labels_from_utc": "2025-05-01T10:00:00Z"},
            "not both",
        ),
        ({"id": "1", "label": "x", "labels_from_utc": "2025-05-01T10:00:00Z"}, "together"),
        (
            {
                "id": "1",
                "label": "x",
                "labels_from_utc": "2025-05-01T10:05:00Z",
                "labels_to_utc": "2025-05-01T10:00:00Z",
            },
            "must be before",
        ),
        ({"id": "1", "label": "x", "files": []}, "calibrate.files"),
        (
            {
                "id": "1",
                "label": "x",
                "labels_from_utc": "2025-05-01T10:00:00Z",
                "labels_to_utc": "2025-05-01T10:05:00Z",
                "start_s": 3,
            },
            "start_s and end_s cut files",
        ),
        ({"id": "1", "label": "x", "files": ["a"], "start_s": 5, "end_s": 2}, "must be before"),
        ({"id": "1", "label": "x", "files": ["a"], "start_s": -1}, "calibrate.start_s"),
        ({"id": "1", "label": "x", "files": ["a"], "end_s": "nan"}, "calibrate.end_s"),
    ],
)
def test_calibrate_needs_exactly_one_valid_data_source(payload, reason):
    error = parse("calibrate", payload)
    assert isinstance(error, CommandError) and reason in error.reason
    assert error.id == "1" and error.topic == "cmd/calibrate"


@pytest.mark.parametrize(
    ("name", "payload", "reason"),
    [
        ("ping", b'{"id": ', "not JSON (Expecting value at line 1 column 8)"),
        ("ping", b"\xc3\x28", "not UTF-8"),
        ("ping", b"[1, 2]", "must be a JSON object, got list"),
        ("ping", b"{}", "ping.id: Field required"),
        ("ping", b'{"id": "1", "force": true}', "ping.force: Extra inputs are not permitted"),
        ("ping", b'{"id": 7}', "ping.id: Input should be a valid string"),
        ("pnig", b'{"id": "1"}', "unknown command 'pnig'; did you mean 'ping'?"),
        ("ping/extra", b'{"id": "1"}', "unknown command 'ping/extra'"),
    ],
)
def test_bad_commands_become_errors_that_say_why(name, payload, reason):
    error = parse_command(name, payload, LIMIT)
    assert isinstance(error, CommandError)
    assert reason in error.reason


def test_oversized_payload_is_refused_before_parsing():
    error = parse_command("ping", b"\xff" * 5000, max_bytes=4096)  # not even UTF-8
    assert isinstance(error, CommandError)
    assert "5000 bytes, more than mqtt.max_command_bytes=4096" in error.reason


def test_deeply_nested_json_is_refused_not_crashed():
    nested = b"[" * 200_000 + b"]" * 200_000  # json.loads would hit the recursion limit
    error = parse_command("ping", nested, max_bytes=1_000_000)
    assert isinstance(error, CommandError) and "usable JSON" in error.reason


def test_error_echo_of_a_long_name_is_truncated():
    error = parse("x" * 5000, {"id": "1"})
    assert isinstance(error, CommandError) and len(error.reason) < 400


@settings(max_examples=300, deadline=None)
@given(topic=st.text(max_size=40), payload=st.binary(max_size=300))
def test_arbitrary_topic_and_bytes_never_raise(topic, payload):
    result = parse_command(topic, payload, max_bytes=200)
    assert isinstance(result, CommandError | CommandModel)
    if isinstance(result, CommandModel):
        assert topic in COMMANDS and len(payload) <= 200


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(list(COMMANDS)),
    payload=st.dictionaries(
        st.sampled_from(["id", "label", "files", "version", "path", "labels_from_utc", "x"]),
        json_values,
    ),
)
def test_json_objects_with_plausible_fields_never_raise(name, payload):
    result = parse(name, payload)
    assert isinstance(result, CommandError | COMMANDS[name])


def test_handler_exceptions_become_failed_results():
    def broken(command):
        raise OSError("bundle file missing")

    result = execute(broken, PingCommand(id="9"))
    assert result == CommandResult(
        id="9",
        ok=False,
        message="ping failed: OSError: bundle file missing",
        time_utc=result.time_utc,
    )
    wrong = execute(lambda c: "done", PingCommand(id="9"))
    assert wrong.ok is False and "returned str" in wrong.message
    fine = execute(lambda c: CommandResult(id=c.id, ok=True, data={"x": 1}), PingCommand(id="9"))
    assert fine.ok and fine.data == {"x": 1}

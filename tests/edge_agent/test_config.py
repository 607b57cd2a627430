"""Agent config: every shipped firmware config validates, and mistakes are reported by field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.config import (
    AgentConfig,
    ConfigError,
    FileSourceConfig,
    SimulatorSourceConfig,
    check_against_bundle,
    load_config,
    outbox_path,
)
from edge_agent.contract.bundle import Manifest

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = sorted((ROOT / "firmware_configs").glob("*.toml"))

BASE: dict = {
    "state_dir": "state",
    "device": {"id": "dev-1", "type": "dev"},
    "sensor": {"sensitivity_mv_per_g": 100.0, "full_scale_volts": 5.0},
    "source": {"type": "simulator", "sample_rate_hz": 12000},
    "inference": {"bundle": "bundle", "backend": "onnx"},
    "mqtt": {"site": "s", "asset": "a", "device": "dev-1"},
}


def write(tmp_path: Path, data: dict, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def with_changes(**sections: dict) -> dict:
    data = copy.deepcopy(BASE)
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    return data


def errors_of(tmp_path: Path, data: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data))
    return info.value.messages


def manifest(rate_hz: int = 12000, formats: tuple[str, ...] = ("int8.onnx",)) -> Manifest:
    files = {f"encoder.{fmt}": "0" * 64 for fmt in formats} | {"head.npz": "0" * 64}
    return Manifest.model_validate(
        {
            "schema_version": 1,
            "model_name": "tiny",
            "model_version": "1",
            "created_utc": "2025-01-01T00:00:00+00:00",
            "class_names": ["normal", "inner_race"],
            "preprocessing": {
                "sample_rate_hz": rate_hz,
                "window": 64,
                "hop": 32,
                "normalization": "zscore",
            },
            "embedding_dim": 8,
            "encoders": [
                {"format": f, "file": f"encoder.{f}", "batch": "dynamic"} for f in formats
            ],
            "files": files,
        }
    )


def test_firmware_configs_are_all_there():
    names = {p.name for p in FIRMWARE}
    expected = {
        "raspberry-pi-4.toml",
        "raspberry-pi-5.toml",
        "jetson-orin-nano.toml",
        "dev-replay.toml",
        "dev-simulator.toml",
    }
    assert expected <= names


@pytest.mark.parametrize("path", FIRMWARE, ids=[p.name for p in FIRMWARE])
def test_every_firmware_config_validates(path: Path):
    cfg = load_config(path)
    assert isinstance(cfg, AgentConfig)
    assert cfg.inference.bundle.is_absolute()
    assert cfg.mqtt.device == cfg.device.id
    problems = check_against_bundle(cfg, manifest(12000, ("int8.onnx", "int8.tflite")))
    assert problems == [], f"{path.name} does not fit a 12 kHz bundle: {problems}"


def test_device_configs_resample_the_interface_to_the_bundle_rate():
    for name in ("raspberry-pi-4.toml", "raspberry-pi-5.toml", "jetson-orin-nano.toml"):
        cfg = load_config(ROOT / "firmware_configs" / name)
        assert cfg.source.type == "sounddevice"
        assert cfg.source.sample_rate_hz == 48000 and cfg.source.resample
    jetson = load_config(ROOT / "firmware_configs" / "jetson-orin-nano.toml")
    assert (jetson.inference.backend, jetson.inference.threads) == ("onnx", 4)


def test_dev_simulator_injects_a_fault_at_60_s_and_drifts():
    cfg = load_config(ROOT / "firmware_configs" / "dev-simulator.toml")
    assert isinstance(cfg.source, SimulatorSourceConfig)
    steps = cfg.source.schedule
    assert any(s.at_s == 60 and s.fault not in (None, "normal") for s in steps)
    assert any(s.ramp_s > 0 and s.gain is not None for s in steps)
    assert cfg.mqtt.host == "127.0.0.1" and cfg.mqtt.port == 1883


def test_minimal_config_gets_defaults(tmp_path: Path):
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.decisions.k <= cfg.decisions.n
    assert cfg.inference.precision == "int8" and cfg.inference.threads == 1
    assert cfg.log_level == "INFO"


def test_bad_value_is_reported_as_section_field_message(tmp_path: Path):
    messages = errors_of(tmp_path, with_changes(sensor={"sensitivity_mv_per_g": 0}))
    assert messages == ["sensor.sensitivity_mv_per_g: Input should be greater than 0"]


def test_unknown_field_is_named_with_the_valid_ones(tmp_path: Path):
    messages = errors_of(tmp_path, with_changes(sensor={"sensitivity": 100}))
    assert len(messages) == 1
    assert messages[0].startswith("sensor.sensitivity: Extra inputs are not permitted")
    assert "sensitivity_mv_per_g" in messages[0]


def test_source_errors_leave_out_the_discriminator_tag(tmp_path: Path):
    data = with_changes(source={"type": "sounddevice", "channels": 0, "bogus": 1})
    messages = errors_of(tmp_path, data)
    assert "source.channels: Input should be greater than or equal to 1" in messages
    assert any(m.startswith("source.bogus: Extra inputs are not permitted") for m in messages)
    assert any("blocksize" in m for m in messages if m.startswith("source.bogus"))


def test_unknown_field_hint_follows_the_source_type_and_schedule(tmp_path: Path):
    (message,) = errors_of(
        tmp_path, with_changes(source={"type": "file", "path": "a.wav", "lop": True})
    )
    assert message.startswith("source.lop: Extra inputs are not permitted")
    assert "loop" in message and "blocksize" not in message
    steps = [{"at_s": 1.0, "fault": "ball", "ramp": 3}]
    (message,) = errors_of(tmp_path, with_changes(source={"type": "simulator", "schedule": steps}))
    assert message.startswith("source.schedule.0.ramp: Extra inputs are not permitted")
    assert "ramp_s" in message


def test_unknown_source_type_lists_the_valid_ones(tmp_path: Path):
    (message,) = errors_of(tmp_path, with_changes(source={"type": "spi"}))
    assert message.startswith("source.type: ") and "'spi'" in message
    for name in ("sounddevice", "file", "simulator"):
        assert name in message


def test_several_problems_are_reported_together(tmp_path: Path):
    data = with_changes(
        sensor={"full_scale_volts": -1}, inference={"threads": 99}, decisions={"k": 0}
    )
    fields = {m.split(":")[0] for m in errors_of(tmp_path, data)}
    assert fields == {"sensor.full_scale_volts", "inference.threads", "decisions.k"}


def test_missing_source_type_is_named(tmp_path: Path):
    data = copy.deepcopy(BASE)
    del data["source"]["type"]
    (message,) = errors_of(tmp_path, data)
    assert message.startswith("source.type: ") and "simulator" in message


def test_missing_section_is_named(tmp_path: Path):
    data = copy.deepcopy(BASE)
    del data["mqtt"]
    assert errors_of(tmp_path, data) == ["mqtt: Field required"]


def test_toml_syntax_error_gives_line_and_column(tmp_path: Path):
    path = tmp_path / "broken.toml"
    path.write_text('[device]\nid = "x"\ntype = dev\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (message,) = info.value.messages
    assert "TOML syntax error" in message and "line 3" in message and "column" in message
    assert str(path) in message


def test_missing_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.toml")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    low=st.floats(0, 50, allow_nan=False),
    high=st.floats(1e-3, 50, allow_nan=False),
)
def test_rms_bounds_validator_names_both_fields(tmp_path: Path, low: float, high: float):
    data = with_changes(sensor={"min_rms_g": low, "max_rms_g": high})
    if low < high:
        cfg = load_config(write(tmp_path, data))
        assert cfg.sensor.min_rms_g == low
    else:
        (message,) = errors_of(tmp_path, data)
        assert message.startswith("sensor: ")
        assert "min_rms_g" in message and "max_rms_g" in message


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(k=st.integers(1, 20), n=st.integers(1, 20))
def test_k_of_n_validator(tmp_path: Path, k: int, n: int):
    data = with_changes(decisions={"k": k, "n": n})
    if k <= n:
        assert load_config(write(tmp_path, data)).decisions.k == k
    else:
        (message,) = errors_of(tmp_path, data)
        assert message == f"decisions: k ({k}) must not exceed n ({n})"


def test_channel_must_exist_on_the_interface(tmp_path: Path):
    data = with_changes(source={"type": "sounddevice", "channels": 2, "channel": 2})
    (message,) = errors_of(tmp_path, data)
    assert message.startswith("source: ") and "channel (2)" in message and "channels (2)" in message


def test_tflite_fp32_is_rejected(tmp_path: Path):
    (message,) = errors_of(
        tmp_path, with_changes(inference={"backend": "tflite", "precision": "fp32"})
    )
    assert message.startswith("inference: ") and "int8" in message


def test_schedule_must_be_in_time_order(tmp_path: Path):
    steps = [{"at_s": 60.0, "fault": "ball"}, {"at_s": 10.0, "gain": 0.9}]
    (message,) = errors_of(tmp_path, with_changes(source={"type": "simulator", "schedule": steps}))
    assert "increasing at_s" in message


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path):
    data = with_changes(source={"type": "file", "path": "rec/a.wav"})
    data["mqtt"]["tls"] = {"ca_file": "tls/ca.pem"}
    (tmp_path / "site").mkdir()
    cfg = load_config(write(tmp_path / "site", data))
    folder = (tmp_path / "site").resolve()
    assert cfg.inference.bundle == folder / "bundle"
    assert isinstance(cfg.source, FileSourceConfig) and cfg.source.path == folder / "rec/a.wav"
    assert cfg.mqtt.tls is not None and cfg.mqtt.tls.ca_file == folder / "tls/ca.pem"
    assert cfg.state_dir == folder / "state"
    assert cfg.outbox.path == Path("outbox.sqlite3")  # stays relative to state_dir
    assert outbox_path(cfg) == folder / "state" / "outbox.sqlite3"


def test_absolute_paths_are_kept(tmp_path: Path):
    data = with_changes(inference={"bundle": "/opt/bundle"})
    data["state_dir"] = "/var/lib/faultwatch"
    cfg = load_config(write(tmp_path, data))
    assert cfg.inference.bundle == Path("/opt/bundle")
    assert outbox_path(cfg) == Path("/var/lib/faultwatch/outbox.sqlite3")


def test_check_against_bundle_rate_mismatch_names_both_rates(tmp_path: Path):
    data = with_changes(source={"type": "sounddevice", "sample_rate_hz": 48000})
    cfg = load_config(write(tmp_path, data))
    (problem,) = check_against_bundle(cfg, manifest(12000))
    assert problem.startswith("source.sample_rate_hz:")
    assert "48000" in problem and "12000" in problem and "resample" in problem

    data["source"]["resample"] = True
    assert check_against_bundle(load_config(write(tmp_path, data)), manifest(12000)) == []


def test_check_against_bundle_missing_encoder(tmp_path: Path):
    data = with_changes(inference={"backend": "onnx", "precision": "fp32"})
    (problem,) = check_against_bundle(load_config(write(tmp_path, data)), manifest())
    assert problem.startswith("inference.backend:")
    assert "fp32.onnx" in problem and "int8.onnx" in problem

"""Agent configuration: one pydantic model per TOML section of firmware_configs/*.toml.

Every model forbids unknown fields, so a typo is an error naming the field, not a silent default.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import BaseModel, Field, ValidationError, model_validator

from edge_agent.contract.bundle import Manifest
from edge_agent.contract.formats import encoder_format
from edge_agent.contract.wire import StrictModel

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class TlsConfig(StrictModel):
    ca_file: Path = Field(description="CA certificate (PEM) that signed the broker's certificate.")
    cert_file: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    key_file: Path | None = Field(None, description="Client private key (PEM).")
    insecure_skip_verify: bool = Field(False, description="Skip host-name checks (testing only).")

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file must be given together")
        return self


_TOPIC_LEVEL = r"^[A-Za-z0-9_.-]+$"  # one MQTT topic level: no '/', '+' or '#'


class SparkplugConfig(StrictModel):
    """Sparkplug B 3.0 edge node: `spBv1.0/<group_id>/<NBIRTH|NDATA|...>/<edge_node_id>[/<device>]`;
    one Sparkplug device per sensor channel (its MQTT asset)."""

    group_id: str = Field(min_length=1, pattern=_TOPIC_LEVEL, description="Sparkplug group.")
    edge_node_id: str | None = Field(
        None, pattern=_TOPIC_LEVEL, description="Defaults to mqtt.device."
    )
    primary_host_id: str | None = Field(
        None,
        pattern=_TOPIC_LEVEL,
        description="Wait for spBv1.0/STATE/<id> online before births; data meanwhile stays in "
        "the outbox and is sent later marked historical. None: no primary host.",
    )


class MqttConfig(StrictModel):
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(1883, ge=1, le=65535)
    client_id: str | None = Field(None, description="Defaults to faultwatch-<device>.")
    topic_prefix: str = Field("faultwatch", min_length=1, description="First topic level.")
    site: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    asset: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    device: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    username: str | None = None
    password: str | None = None
    tls: TlsConfig | None = None
    keepalive_s: int = Field(30, ge=5, le=3600)
    qos_events: Literal[1, 2] = 1
    max_command_bytes: int = Field(4096, ge=64, le=1_048_576)
    protocol: Literal["5", "3.1.1"] = Field(
        "5",
        description="MQTT 5 tells retained commands apart and names a client-id clash; "
        "3.1.1 for brokers without MQTT 5 (the embedded amqtt).",
    )
    commands_per_minute: int = Field(
        60, ge=1, le=6000, description="Per command name; more are refused as rate-limited."
    )
    dialect: Literal["json_v1", "sparkplug_b"] = Field(
        "json_v1", description="Payloads and topics: faultwatch JSON, or a Sparkplug B edge node."
    )
    sparkplug: SparkplugConfig | None = Field(
        None, description='Sparkplug B settings (dialect = "sparkplug_b").'
    )
    command_issuers: list[str] = Field(
        default_factory=list,
        description="Identities allowed to send state-changing commands (calibrate, "
        "commission, rollback_head, reload_bundle, update_bundle), named in the command's "
        "`issuer`; empty: whoever the broker's ACL lets publish on cmd/.",
    )

    @model_validator(mode="after")
    def _credentials(self) -> MqttConfig:
        if self.password is not None and self.username is None:
            raise ValueError("mqtt.password is set but mqtt.username is not")
        if self.dialect == "sparkplug_b" and self.sparkplug is None:
            raise ValueError('mqtt.dialect = "sparkplug_b" needs an [mqtt.sparkplug] section')
        return self


class UpdatesConfig(StrictModel):
    """Over-the-air bundle updates (`update_bundle`): only bundles signed by one of these keys."""

    public_keys: list[Path] = Field(
        default_factory=list,
        description="Ed25519 public keys (PEM) that may sign bundles; relative to this config.",
    )
    max_bytes: int = Field(
        256 * 2**20, ge=2**20, description="Largest bundle download (bytes); more is refused."
    )
    timeout_s: float = Field(60.0, gt=0, le=3600, description="Download timeout.")
    probation_s: float = Field(
        120.0,
        ge=0,
        le=86_400,
        description="After an update, a failure within this many seconds rolls back to the "
        "previous bundle.",
    )


class OutboxConfig(StrictModel):
    path: Path = Field(Path("outbox.sqlite3"), description="Relative paths live in state_dir.")
    max_events: int = Field(100_000, ge=10, description="Bound on stored undelivered events.")
    max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=64 * 1024,
        description="Bound on their payload bytes (the disk they share is small on a gateway).",
    )
    when_full: Literal["drop_oldest_low_severity_first", "drop_oldest"] = Field(
        "drop_oldest_low_severity_first",
        description="What gives way when the outbox is full "
        "(fault and sensor events are kept longest).",
    )


# --------------------------------------------------------------------------------------------
# Device, sensor, source, inference and decisions sections; the top-level AgentConfig + loader.
# --------------------------------------------------------------------------------------------

_NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
DeviceType = Literal["raspberry-pi-4", "raspberry-pi-5", "jetson-orin-nano", "dev"]
SimulatedFault = Literal["normal", "inner_race", "outer_race", "ball"]


class ConfigError(Exception):
    """An agent config that must not be used; `messages` are `section.field: message` lines."""

    def __init__(self, messages: list[str]) -> None:
        self.messages = list(messages)
        super().__init__("\n".join(self.messages))


class DeviceConfig(StrictModel):
    id: str = Field(min_length=1, pattern=_NAME_PATTERN, description="Unique device name.")
    type: DeviceType = Field(description="Hardware family (reported in status messages).")
    description: str = Field("", description="Free text: where it is mounted, what it watches.")


class SensorConfig(StrictModel):
    """The accelerometer and the analog chain in front of the ADC."""

    sensitivity_mv_per_g: float = Field(
        100.0, gt=0, description="Accelerometer sensitivity (typical IEPE: 100 mV/g)."
    )
    full_scale_volts: float = Field(gt=0, description="Input voltage at ADC full scale (peak).")
    clip_g: float | None = Field(
        None, gt=0, description="Level (g) at which the chain clips; None disables the check."
    )
    min_rms_g: float = Field(
        0.001, ge=0, description="Window RMS below this is a dead/disconnected sensor."
    )
    max_rms_g: float = Field(20.0, gt=0, description="Window RMS above this is implausible.")
    no_data_after_s: float = Field(
        3.0, ge=0.5, le=600, description="No samples for this long is a `no_data` sensor fault."
    )

    @model_validator(mode="after")
    def _levels(self) -> SensorConfig:
        if self.min_rms_g >= self.max_rms_g:
            raise ValueError(
                f"min_rms_g ({self.min_rms_g}) must be less than max_rms_g ({self.max_rms_g})"
            )
        if self.clip_g is not None and self.max_rms_g > self.clip_g:
            raise ValueError(
                f"max_rms_g ({self.max_rms_g}) cannot exceed clip_g ({self.clip_g}): "
                "a clipped signal never reaches that RMS"
            )
        return self


class SoundDeviceSourceConfig(StrictModel):
    """A USB audio interface (or any PortAudio input) behind an IEPE signal conditioner."""

    type: Literal["sounddevice"]
    sample_rate_hz: int = Field(48_000, gt=0, description="Rate the interface runs at.")
    device: str | int | None = Field(
        None, description="Input device name (substring) or index; None = system default."
    )
    channels: int = Field(1, ge=1, le=64, description="Channels opened on the interface.")
    channel: int = Field(0, ge=0, description="Which channel (0-based) carries the sensor.")
    dtype: Literal["int16", "int32", "float32"] = Field("int16", description="Sample format.")
    blocksize: int = Field(1024, ge=0, description="Frames per callback; 0 lets PortAudio choose.")
    queue_blocks: int = Field(
        64, ge=2, description="Blocks buffered between callback and agent before samples drop."
    )
    resample: bool = Field(False, description="Resample to the bundle's rate on the device.")
    tacho_channel: int | None = Field(
        None, ge=0, description="Channel with tachometer pulses: the shaft speed of the evidence."
    )
    tacho_pulses_per_rev: int = Field(1, ge=1, le=1000, description="Pulses per revolution.")

    @model_validator(mode="after")
    def _channel(self) -> SoundDeviceSourceConfig:
        if self.channel >= self.channels:
            raise ValueError(
                f"channel ({self.channel}) must be less than channels ({self.channels}); "
                "channels are numbered from 0"
            )
        if self.tacho_channel is not None and self.tacho_channel >= self.channels:
            raise ValueError(
                f"tacho_channel ({self.tacho_channel}) must be less than channels ({self.channels})"
            )
        return self


class FileSourceConfig(StrictModel):
    """Replay a recording (WAV, NPY or CSV) as if it came from a sensor."""

    type: Literal["file"]
    path: Path = Field(description="Recording; relative paths are relative to this config file.")
    sample_rate_hz: int | None = Field(
        None, gt=0, description="Needed for NPY/CSV; for WAV, None = the header's rate."
    )
    channel: int = Field(0, ge=0, description="Column (0-based) to replay.")
    realtime: bool = Field(True, description="Pace to the wall clock; false = as fast as possible.")
    loop: bool = Field(False, description="Start over at the end instead of finishing.")
    resample: bool = Field(False, description="Resample to the bundle's rate at load.")
    scale_g: float | None = Field(
        None,
        gt=0,
        description="g per file unit; None: integer/float WAV via the sensor's ADC settings, "
        "float NPY/CSV taken as g.",
    )
    chunk_samples: int = Field(1024, ge=16, description="Samples per delivered chunk.")


class SimulatorStep(StrictModel):
    """From stream time `at_s`, change the simulated machine; unset fields keep their value.

    With `ramp_s` > 0 the numeric fields move linearly to the new values over that many seconds
    (sensor drift, slow speed changes).
    """

    at_s: float = Field(ge=0, description="Stream time (s) at which the step applies.")
    ramp_s: float = Field(0.0, ge=0, description="Seconds to move linearly to the new values.")
    fault: SimulatedFault | None = None
    severity: float | None = Field(None, ge=0, le=1, description="Impact strength 0..1.")
    rpm: float | None = Field(None, gt=0, le=60_000, description="Shaft speed.")
    load: float | None = Field(None, ge=0, le=1, description="Fraction of rated load.")
    speed_jitter: float | None = Field(None, ge=0, le=0.2, description="Relative speed wander.")
    slip: float | None = Field(None, ge=0, le=0.2, description="Relative impact-interval jitter.")
    gain: float | None = Field(None, gt=0, description="Sensor gain error (1 = calibrated).")
    noise_floor_g: float | None = Field(None, ge=0)
    dc_offset_g: float | None = None
    clip_g: float | None = Field(None, gt=0)


class SimulatorSourceConfig(StrictModel):
    """Synthetic bearing vibration (edge_agent.physics.bearing_sim) with a scripted schedule."""

    type: Literal["simulator"]
    sample_rate_hz: int = Field(12_000, ge=1000, description="Must equal the bundle's rate.")
    seed: int = Field(0, ge=0, description="Random seed: same seed, same signal.")
    realtime: bool = Field(True, description="Pace to the wall clock; false = as fast as possible.")
    chunk_samples: int = Field(1024, ge=16, description="Samples per delivered chunk.")
    schedule: list[SimulatorStep] = Field(
        default_factory=list, description="Steps in increasing at_s (fault injection, drift)."
    )

    @model_validator(mode="after")
    def _ordered(self) -> SimulatorSourceConfig:
        times = [step.at_s for step in self.schedule]
        if times != sorted(times):
            raise ValueError(f"schedule steps must be in increasing at_s, got {times}")
        return self


SourceConfig = Annotated[
    Union[SoundDeviceSourceConfig, FileSourceConfig, SimulatorSourceConfig],  # noqa: UP007
    Field(discriminator="type"),
]
SOURCE_TYPES = ("sounddevice", "file", "simulator")


class InferenceConfig(StrictModel):
    bundle: Path = Field(description="Bundle folder or .tar.gz; relative to this config file.")
    backend: Literal["onnx", "tflite"] = Field("onnx", description="Inference runtime.")
    precision: Literal["int8", "fp32"] = Field("int8", description="Which encoder file to run.")
    threads: int = Field(1, ge=1, le=8, description="Intra-op threads for the encoder.")
    batch_windows: int = Field(1, ge=1, le=64, description="Windows per encoder call.")
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        min_length=1,
        description="onnxruntime execution providers in priority order (Jetson: CUDA/TensorRT).",
    )
    uncertain_below: float | None = Field(
        None, gt=0, lt=1, description="Override the bundle's threshold; None = bundle's."
    )
    unknown_above: float | None = Field(
        None,
        gt=0,
        description="Fixed open-set score above which a window is `unknown`. None: the larger "
        "of the bundle's and this device's own, learned at commissioning (no open-set decision "
        "before commissioning, or when the bundle has no threshold).",
    )

    @model_validator(mode="after")
    def _combination(self) -> InferenceConfig:
        encoder_format(self.backend, self.precision)  # ValueError naming the valid combinations
        return self


class DecisionsConfig(StrictModel):
    k: int = Field(3, ge=1, description="Raise a fault event when k of the last n windows agree.")
    n: int = Field(5, ge=1, le=1000, description="Length of the k-of-n vote (windows).")
    k_exit: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="Windows of the last n that must agree to leave a state (clear a fault, "
        "change fault class, become uncertain); stronger than k. None = min(n, k + 1).",
    )
    min_dwell_s: float = Field(
        60.0,
        ge=0,
        le=86_400,
        description="Seconds of window time a state is held before it may clear or change "
        "sideways, and over which the new label must hold; faults and sensor faults are still "
        "raised after k of n.",
    )
    hold_fraction: float = Field(
        0.8,
        gt=0.5,
        le=1.0,
        description="Share of the windows of the last min_dwell_s (uncertain_after_s for "
        "uncertain) that the new label needs to take over from the current state.",
    )
    uncertain_after_s: float = Field(
        60.0,
        ge=0,
        le=86_400,
        description="Seconds uncertain windows must dominate before the state becomes "
        "uncertain; shorter bursts keep the current state.",
    )
    max_events_per_hour: int = Field(
        12,
        ge=3,
        le=3600,
        description="State-change events published per hour at most (sliding); more become "
        "one summary. A change into an alarm from a non-alarm state always passes.",
    )
    drift_window: int = Field(200, ge=10, description="Windows in the drift statistic.")
    drift_threshold: float | None = Field(
        None, gt=0, description="Drift score alarm level; None = the bundle's drift_score."
    )

    @model_validator(mode="before")
    @classmethod
    def _moved_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and "commission_baseline" in data:
            raise ValueError(
                "decisions.commission_baseline has moved: the device's own baseline is learned "
                "in [commissioning] (automatic = true|false, period_s); delete this line"
            )
        return data

    @model_validator(mode="after")
    def _k_of_n(self) -> DecisionsConfig:
        if self.k > self.n:
            raise ValueError(f"k ({self.k}) must not exceed n ({self.n})")
        return self

    @model_validator(mode="after")
    def _k_exit_between_k_and_n(self) -> DecisionsConfig:
        if self.k_exit is not None and not self.k <= self.k_exit <= self.n:
            raise ValueError(
                f"k_exit ({self.k_exit}) must be between k ({self.k}) and n ({self.n}): leaving "
                "a state needs at least the agreement entering it did"
            )
        return self


class CommissioningConfig(StrictModel):
    """How the device learns its own normal (the baseline drift and health are scored against)."""

    automatic: bool = Field(
        True, description="Learn at the first start; later only on the `commission` command."
    )
    period_s: float = Field(
        600.0, ge=10, le=7 * 24 * 3600, description="Learning period; span normal loads/speeds."
    )
    min_windows: int = Field(100, ge=10, description="At least this many non-overlapping windows.")


class HealthConfig(StrictModel):
    """Condition indicators and their ISO 20816-3 zone."""

    machine_group: Literal["group1", "group2"] = Field(
        "group2", description="group1: 300 kW-50 MW; group2: 15-300 kW (ISO 20816-3)."
    )
    foundation: Literal["rigid", "flexible"] = "rigid"


class BearingConfig(StrictModel):
    """The monitored bearing and shaft: physics evidence (envelope analysis) beside the model.

    Give `designation` (a catalogue bearing, e.g. "6205") or the four geometry fields. The shaft
    speed: `shaft_rpm` when set, else the source's tachometer channel when it has one
    (`source.tacho_channel`), else estimated from the spectrum within `shaft_search_rpm`.
    """

    designation: str | None = Field(None, description="Catalogue bearing, e.g. 6205, 22210.")
    n_balls: int | None = Field(None, ge=3, le=200)
    ball_diameter_mm: float | None = Field(None, gt=0)
    pitch_diameter_mm: float | None = Field(None, gt=0)
    contact_angle_deg: float = Field(0.0, ge=0, lt=90)
    shaft_rpm: float | None = Field(None, gt=0, le=100_000, description="Fixed shaft speed.")
    shaft_search_rpm: tuple[float, float] = Field(
        (600.0, 3600.0), description="Range the speed is estimated in when shaft_rpm is unset."
    )
    follow_evidence: Literal["unlabeled", "uncalibrated", "never"] = Field(
        "unlabeled",
        description="Where a clear defect line disagrees with the model, it decides the "
        "published diagnosis (basis: evidence): unlabeled: while the device head is the "
        "factory head and, after calibration, on windows unlike every labeled one; "
        "uncalibrated: only while the head is the factory head; never: the model always decides.",
    )

    @model_validator(mode="after")
    def _geometry(self) -> BearingConfig:
        explicit = (self.n_balls, self.ball_diameter_mm, self.pitch_diameter_mm)
        given = sum(v is not None for v in explicit)
        if (self.designation is None) == (given == 0) or 0 < given < 3:
            raise ValueError(
                "give bearing.designation or all of bearing.n_balls, bearing.ball_diameter_mm "
                "and bearing.pitch_diameter_mm (not both)"
            )
        if self.designation is not None:
            from edge_agent.physics.evidence import bearing_geometry

            bearing_geometry(self.designation)  # ValueError listing the known designations
        lo, hi = self.shaft_search_rpm
        if not 0 < lo < hi:
            raise ValueError(f"bearing.shaft_search_rpm must be (low, high) > 0, got {lo}, {hi}")
        return self

    def geometry(self) -> Any:
        """The BearingGeometry (ValueError naming the known designations for an unknown one)."""
        from edge_agent.physics.bearing_sim import BearingGeometry
        from edge_agent.physics.evidence import bearing_geometry

        if self.designation is not None:
            return bearing_geometry(self.designation)
        return BearingGeometry(
            n_balls=self.n_balls,  # type: ignore[arg-type]
            ball_diameter_mm=self.ball_diameter_mm,  # type: ignore[arg-type]
            pitch_diameter_mm=self.pitch_diameter_mm,  # type: ignore[arg-type]
            contact_angle_deg=self.contact_angle_deg,
        )


class ChannelConfig(StrictModel):
    """One bearing of a multi-channel gateway (`[[channels]]`). Sections left out take the
    top-level `[sensor]`, `[bearing]` and `[decisions]`; each channel has its own device head,
    decisions, commissioning, drift and health state (under `state_dir/channels/<name>/`) and
    its own MQTT subtree (`asset`)."""

    name: str = Field(min_length=1, max_length=32, pattern=_NAME_PATTERN, description="Unique.")
    input: int = Field(
        ge=0,
        description="Interface channel (sounddevice), column (file) or simulated machine "
        "(simulator), 0-based.",
    )
    asset: str = Field(
        min_length=1, pattern=_NAME_PATTERN, description="MQTT asset: this bearing's subtree."
    )
    sensor: SensorConfig | None = None
    bearing: BearingConfig | None = None
    decisions: DecisionsConfig | None = None
    uncertain_below: float | None = Field(
        None, gt=0, lt=1, description="Overrides inference.uncertain_below for this channel."
    )
    unknown_above: float | None = Field(
        None, gt=0, description="Overrides inference.unknown_above for this channel."
    )
    schedule: list[SimulatorStep] | None = Field(
        None, description="Simulator source only: this machine's schedule (default: the source's)."
    )


class AgentConfig(StrictModel):
    """Everything a gateway agent needs; one firmware_configs/*.toml file."""

    state_dir: Path = Field(
        Path("/var/lib/faultwatch"), description="Writable state (systemd StateDirectory)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    telemetry_interval_s: float = Field(
        10.0, gt=0, le=3600, description="Seconds between telemetry messages and status lines."
    )
    embedding_log_rows: int = Field(
        20_000,
        ge=100,
        le=1_000_000,
        description="Recent window embeddings kept in memory for on-device calibration "
        "(20,000 = 28 min at 12 kHz with hop 1024; costs rows x embedding_dim x 4 bytes).",
    )
    embedding_log_views: bool = Field(
        True,
        description="Also keep each logged window's spectral view (512 bands x 2 bytes a row, "
        "~0.25 ms of CPU a window), so labels given over MQTT can fit a device template; off: "
        "labels of logged time ranges refit the head only.",
    )
    device: DeviceConfig
    sensor: SensorConfig
    source: SourceConfig
    inference: InferenceConfig
    decisions: DecisionsConfig = DecisionsConfig()
    mqtt: MqttConfig
    outbox: OutboxConfig = OutboxConfig()
    commissioning: CommissioningConfig = CommissioningConfig()
    health: HealthConfig = HealthConfig()
    bearing: BearingConfig | None = Field(None, description="Off without it: no evidence.")
    updates: UpdatesConfig = UpdatesConfig()
    channels: list[ChannelConfig] = Field(
        default_factory=list,
        max_length=16,
        description="Several bearings on one interface; empty: one channel from [sensor], "
        "[source], [bearing] and [mqtt].",
    )

    @model_validator(mode="after")
    def _channels(self) -> AgentConfig:
        for key in ("name", "input", "asset"):
            values = [getattr(c, key) for c in self.channels]
            twice = sorted({str(v) for v in values if values.count(v) > 1})
            if twice:
                raise ValueError(f"channels.{key}: each channel needs its own, {twice} repeat")
        src = self.source
        sensor_inputs = [c.input for c in self.channels] or [getattr(src, "channel", None)]
        if isinstance(src, SoundDeviceSourceConfig) and src.tacho_channel in sensor_inputs:
            raise ValueError(
                f"source.tacho_channel ({src.tacho_channel}) must be another channel than the "
                f"sensor's ({'channels.input' if self.channels else 'source.channel'})"
            )
        for i, c in enumerate(self.channels):
            if isinstance(src, SoundDeviceSourceConfig) and c.input >= src.channels:
                raise ValueError(
                    f"channels.{i}.input: {c.input} is not one of the {src.channels} "
                    "interface channels opened (source.channels)"
                )
            if c.schedule is not None and not isinstance(src, SimulatorSourceConfig):
                raise ValueError(f'channels.{i}.schedule: only for source.type = "simulator"')
        return self

    @property
    def channel(self) -> ChannelConfig | None:
        """This view's channel (see `channel_views`); None for a single-channel config."""
        return self.channels[0] if len(self.channels) == 1 else None

    def channel_views(self) -> list[AgentConfig]:
        """One config per channel, with the channel's sensor, bearing, decisions, thresholds,
        MQTT asset and state folder in place; `[self]` for a single-channel config."""
        if not self.channels:
            return [self]
        views = []
        for c in self.channels:
            inference = self.inference.model_copy(
                update={
                    "uncertain_below": c.uncertain_below or self.inference.uncertain_below,
                    "unknown_above": c.unknown_above or self.inference.unknown_above,
                }
            )
            update = {
                "sensor": c.sensor or self.sensor,
                "bearing": c.bearing or self.bearing,
                "decisions": c.decisions or self.decisions,
                "inference": inference,
                "mqtt": self.mqtt.model_copy(update={"asset": c.asset}),
                "state_dir": self.state_dir / "channels" / c.name,
                "channels": [c],
            }
            views.append(self.model_copy(update=update))
        return views


def format_errors(exc: ValidationError) -> list[str]:
    """One `section.field: message` line per pydantic error (discriminator tags left out)."""
    lines = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            valid = _field_names(loc[:-1])
            if valid:
                msg += f"; valid fields: {', '.join(valid)}"
        if len(loc) >= 2 and loc[0] == "source" and loc[1] in SOURCE_TYPES:
            del loc[1]
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc.append("type")
            msg = f"{msg}; valid: {', '.join(SOURCE_TYPES)}"
        lines.append(f"{'.'.join(loc) or '<top level>'}: {msg}")
    return lines


def _field_names(loc: list[str]) -> list[str]:
    """Field names of the model at `loc` (as pydantic reports it) inside AgentConfig."""
    models = {
        "sounddevice": SoundDeviceSourceConfig,
        "file": FileSourceConfig,
        "simulator": SimulatorSourceConfig,
    }
    model: Any = AgentConfig
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        if part.isdigit():  # list index: stay on the item model
            continue
        if model is AgentConfig and part == "source":
            if not parts or parts[0] not in models:
                return []
            model = models[parts.pop(0)]
            continue
        field = model.model_fields.get(part)
        model = _model_of(field.annotation) if field is not None else None
        if model is None:
            return []
    return list(model.model_fields)


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def load_config(path: Path) -> AgentConfig:
    """Read and validate a TOML config; relative paths become relative to its folder.

    Raises ConfigError listing every problem (TOML syntax with line/column, unknown or
    invalid fields as `section.field: message`).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such config file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read config ({exc})"]) from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax error: {exc}"]) from exc
    try:
        cfg = AgentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc)) from exc
    return resolve_paths(cfg, path.resolve().parent)


def resolve_paths(cfg: AgentConfig, base: Path) -> AgentConfig:
    """Make config-relative paths absolute (outbox.path stays relative to state_dir)."""

    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else Path(os.path.normpath(base / p))

    updates: dict[str, Any] = {
        "state_dir": fix(cfg.state_dir),
        "inference": cfg.inference.model_copy(update={"bundle": fix(cfg.inference.bundle)}),
    }
    if isinstance(cfg.source, FileSourceConfig):
        updates["source"] = cfg.source.model_copy(update={"path": fix(cfg.source.path)})
    if cfg.updates.public_keys:
        keys = [fix(k) for k in cfg.updates.public_keys]
        updates["updates"] = cfg.updates.model_copy(update={"public_keys": keys})
    if cfg.mqtt.tls is not None:
        tls = cfg.mqtt.tls
        tls = tls.model_copy(
            update={k: fix(getattr(tls, k)) for k in ("ca_file", "cert_file", "key_file")}
        )
        updates["mqtt"] = cfg.mqtt.model_copy(update={"tls": tls})
    return cfg.model_copy(update=updates)


def outbox_path(cfg: AgentConfig) -> Path:
    """Where the outbox database lives (relative outbox.path is inside state_dir)."""
    return cfg.outbox.path if cfg.outbox.path.is_absolute() else cfg.state_dir / cfg.outbox.path


def source_rate_problems(cfg: AgentConfig, bundle_rate_hz: int) -> list[str]:
    """Sample-rate mismatches between the source and a bundle (empty when they fit)."""
    src = cfg.source
    resample = getattr(src, "resample", False)
    if src.sample_rate_hz is None or resample or src.sample_rate_hz == bundle_rate_hz:
        return []
    hint = (
        "set source.resample = true or use a matching bundle"
        if hasattr(src, "resample")
        else "set source.sample_rate_hz to the bundle's rate"
    )
    return [
        f"source.sample_rate_hz: {src.sample_rate_hz} Hz does not match the bundle's "
        f"{bundle_rate_hz} Hz; {hint}"
    ]


def check_against_bundle(cfg: AgentConfig, manifest: Manifest) -> list[str]:
    """Problems between a valid config and the bundle it will run (empty list = fine)."""
    problems = source_rate_problems(cfg, manifest.preprocessing.sample_rate_hz)
    wanted = encoder_format(cfg.inference.backend, cfg.inference.precision).name
    have = [e.format for e in manifest.encoders]
    if wanted not in have:
        problems.append(
            f"inference.backend: {cfg.inference.backend!r} with precision "
            f"{cfg.inference.precision!r} needs a {wanted!r} encoder; the bundle has {have}"
        )
    return problems

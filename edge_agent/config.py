"""Agent configuration: one pydantic model per TOML section of firmware_configs/*.toml.

Every model forbids unknown fields, so a typo is an error naming the field, not a silent default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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

    @model_validator(mode="after")
    def _credentials(self) -> MqttConfig:
        if self.password is not None and self.username is None:
            raise ValueError("mqtt.password is set but mqtt.username is not")
        return self


class OutboxConfig(StrictModel):
    path: Path = Field(Path("outbox.sqlite3"), description="Relative paths live in state_dir.")
    max_events: int = Field(100_000, ge=10, description="Bound on stored undelivered events.")
    when_full: Literal["drop_oldest_low_severity_first", "drop_oldest"] = Field(
        "drop_oldest_low_severity_first",
        description="What gives way when the outbox is full (fault and sensor events are kept longest).",
    )

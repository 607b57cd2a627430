"""The message registry: how each payload model travels. A new payload is one row in `MESSAGES`.

A route names the topic's last level under the asset's subtree, the QoS, the retain flag, and
whether the message is durable (committed to the outbox and delivered at least once) or sent now
or never. A retained message that is not durable is also re-sent on every connect (the state).
A durable payload carries `severity` and `event_id` (the outbox's drop policy and its key).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from edge_agent.config import MqttConfig
from edge_agent.contract.commands import CommandError, CommandResult
from edge_agent.contract.events import FaultEvent, StateMessage, StatusMessage, Telemetry


@dataclass(frozen=True)
class Route:
    """`topic` under `<prefix>/<site>/<asset>/<device>/`; `qos` is a number or "qos_events"
    (then it comes from `mqtt.qos_events`)."""

    topic: str
    qos: Literal[0, 1, 2, "qos_events"]
    retain: bool
    durable: bool

    def __post_init__(self) -> None:
        if self.durable and (self.retain or self.qos == 0):
            raise ValueError(
                f"route {self.topic!r}: a durable message needs qos >= 1 and retain=False (the "
                "outbox waits for PUBACKs and keeps no retain flag), "
                f"got qos={self.qos!r}, retain={self.retain}"
            )

    def qos_for(self, cfg: MqttConfig) -> int:
        return cfg.qos_events if self.qos == "qos_events" else int(self.qos)


MESSAGES: dict[type[BaseModel], Route] = {
    FaultEvent: Route("event", qos="qos_events", retain=False, durable=True),
    StateMessage: Route("state", qos=1, retain=True, durable=False),
    StatusMessage: Route("status", qos=1, retain=True, durable=False),
    Telemetry: Route("telemetry", qos=0, retain=False, durable=False),
    CommandResult: Route("cmd_result", qos=1, retain=False, durable=False),
    CommandError: Route("error", qos=1, retain=False, durable=False),
}


def route_of(message: BaseModel) -> Route:
    """The registry row of `message`'s type; a TypeError names the registered ones."""
    try:
        return MESSAGES[type(message)]
    except KeyError:
        known = ", ".join(m.__name__ for m in MESSAGES)
        raise TypeError(
            f"{type(message).__name__} has no route in edge_agent.mqtt.messages.MESSAGES; "
            f"add a row (registered: {known})"
        ) from None

"""An in-memory stand-in for the MQTT link: keeps what the agent would publish.

For offline runs of the whole window path (benchmarks, replays, tests): `agent.link =
MemoryLink()`, then drive the agent's buffer and `_drain()`; `events` and `states` hold the
`FaultEvent`s and `StateMessage`s in order. Events count as committed at once.
"""

from __future__ import annotations

from edge_agent.contract.events import FaultEvent, StateMessage
from edge_agent.mqtt.spool import Pending


class MemoryLink:
    """What an `MqttLink` would have published, in memory (no broker, no outbox)."""

    connected = False
    pending = 0

    def __init__(self) -> None:
        self.events: list[FaultEvent] = []
        self.states: list[StateMessage] = []

    def publish_event(self, event: FaultEvent) -> Pending:
        self.events.append(event)
        item = Pending("event", b"", 1, event.severity, event.event_id, seq=len(self.events))
        item.committed.set()
        return item

    def publish_state(self, state: StateMessage) -> None:
        self.states.append(state)

    def storage_problem(self) -> str | None:
        return None

    def close(self, flush_timeout_s: float = 0.0) -> None:
        """Nothing to flush."""

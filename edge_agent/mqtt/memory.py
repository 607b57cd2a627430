"""An in-memory stand-in for the MQTT link: keeps what the agent would publish.

For offline runs of the whole window path (benchmarks, replays, tests): `agent.link =
MemoryLink()`, then drive the agent's buffer and `_drain()`; `events`, `states`, `telemetry` and
`replies` (`(reply, asset)` pairs) hold what was published, in order. Events count as committed
at once.
"""

from __future__ import annotations

from edge_agent.contract.commands import CommandError, CommandResult
from edge_agent.contract.events import FaultEvent, StateMessage, Telemetry
from edge_agent.mqtt.spool import Pending
from edge_agent.mqtt.transport import LinkCounters


class MemoryLink:
    """What an `MqttLink` would have published, in memory (no broker, no outbox)."""

    connected = False
    pending = 0
    last_error: str | None = None

    def __init__(self) -> None:
        self.events: list[FaultEvent] = []
        self.states: list[StateMessage] = []
        self.telemetry: list[Telemetry] = []
        self.replies: list[tuple[CommandResult | CommandError, str]] = []
        self.counters = LinkCounters()

    def publish_event(self, event: FaultEvent) -> Pending:
        self.events.append(event)
        item = Pending("event", b"", 1, event.severity, event.event_id, seq=len(self.events))
        item.committed.set()
        return item

    def publish_state(self, state: StateMessage) -> None:
        self.states.append(state)

    def publish_telemetry(self, telemetry: Telemetry) -> bool:
        self.telemetry.append(telemetry)
        self.counters.telemetry_sent += 1
        return True

    def publish_status(self) -> None:
        """No status to refresh: nothing is connected."""

    def publish_reply(self, reply: CommandResult | CommandError, asset: str) -> None:
        self.replies.append((reply, asset))

    def storage_problem(self) -> str | None:
        return None

    def supervise(self) -> None:
        """No network thread to watch."""

    def close(self, flush_timeout_s: float = 0.0) -> None:
        """Nothing to flush."""

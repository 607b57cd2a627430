"""MemoryLink: the offline stand-in keeps what an MqttLink would have published."""

from __future__ import annotations

from edge_agent.contract.commands import CommandError, CommandResult
from edge_agent.contract.events import FaultEvent, Telemetry
from edge_agent.mqtt.memory import MemoryLink

DEVICE = dict(site="plant", asset="pump7", device="dev1")


def test_memory_link_keeps_events_telemetry_and_replies_per_asset():
    link = MemoryLink()
    item = link.publish_event(FaultEvent(**DEVICE, kind="drift", severity="info", state="normal"))
    assert item.committed.is_set() and item.seq == 1
    numbers = dict(rms_g=1, peak_g=1, crest_factor=1, kurtosis=3, inference_ms=1)
    counts = dict(windows_total=1, dropped_samples=0, overruns=0, outbox_pending=0)
    assert link.publish_telemetry(Telemetry(**DEVICE, **numbers, **counts))
    link.publish_status()
    link.publish_reply(CommandResult(id="1", ok=True), "pump8")
    link.publish_reply(CommandError(topic="t", reason="busy"), "pump7")
    assert [(type(r).__name__, asset) for r, asset in link.replies] == [
        ("CommandResult", "pump8"),
        ("CommandError", "pump7"),
    ]
    assert len(link.events) == len(link.telemetry) == 1 and link.storage_problem() is None

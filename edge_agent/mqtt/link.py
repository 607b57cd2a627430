"""The agent's one MQTT link: a transport (`edge_agent.mqtt.transport`: paho, reconnection, the
durable outbox) speaking a dialect chosen by `mqtt.dialect`: `json_v1` (`edge_agent.mqtt.json_v1`:
topics, payloads, commands, with the registry `edge_agent.mqtt.messages` saying how each message
travels) or `sparkplug_b` (`edge_agent.mqtt.sparkplug_b`: a Sparkplug B edge node, one device per
asset, commands as NCMD/DCMD metrics, replies as a `Command/Result` metric).

A gateway may serve several channels over the one connection, each reporting as its own asset
(`assets=`): outbound messages go to the subtree of their payload's `asset`, commands are taken
from every asset's subtree and answered there. Status and the last will live on `mqtt.asset`'s
subtree: a channel is online while its gateway is.

Commands: the dialect validates and rate-limits them on paho's thread, then calls
`submit(command, asset)`, which must not block: it returns None once the agent has queued the
command, or a refusal (published at once on that asset's `error` topic). The agent answers later,
on its own thread, with `publish_reply(reply, asset)`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from edge_agent.config import MqttConfig
from edge_agent.contract.commands import CommandError, CommandResult
from edge_agent.contract.events import FaultEvent, StateMessage, Telemetry
from edge_agent.mqtt.json_v1 import RATE_BURST, JsonV1, RateLimiter, Submit, Topics, topics
from edge_agent.mqtt.outbox import Outbox
from edge_agent.mqtt.spool import Pending
from edge_agent.mqtt.transport import LinkCounters, MqttTransport

if TYPE_CHECKING:
    from edge_agent.mqtt.sparkplug_b import SparkplugB

__all__ = ["RATE_BURST", "LinkCounters", "MqttLink", "RateLimiter", "Topics", "topics"]

logger = logging.getLogger(__name__)


class MqttLink:
    """Publishes the agent's messages and hands it commands (`submit`); see the module docstring.

    Starts connecting at once (in the background: a broker that is down is not an error, events
    wait in the outbox). Call `close()` to say offline, flush and disconnect. `assets`: the
    channels' assets besides `mqtt.asset`; `gateway_is_channel`: whether `mqtt.asset` is one
    channel's too (a multi-channel gateway's own asset may be none: then no Sparkplug device).
    """

    def __init__(
        self,
        cfg: MqttConfig,
        outbox: Outbox,
        submit: Submit,
        *,
        assets: Sequence[str] = (),
        gateway_is_channel: bool = True,
        reconnect_min_delay_s: float = 1.0,
        reconnect_max_delay_s: float = 60.0,
        max_inflight: int = 20,
    ) -> None:
        self.cfg = cfg
        self.outbox = outbox
        self.transport = MqttTransport(
            cfg,
            outbox,
            reconnect_min_delay_s=reconnect_min_delay_s,
            reconnect_max_delay_s=reconnect_max_delay_s,
            max_inflight=max_inflight,
        )
        try:
            if cfg.dialect == "sparkplug_b":
                from edge_agent.mqtt.sparkplug_b import SparkplugB  # needs protobuf

                self.dialect: JsonV1 | SparkplugB = SparkplugB(
                    cfg, self.transport, submit, assets, gateway_is_channel
                )
            else:
                self.dialect = JsonV1(cfg, self.transport, submit, assets)
        except (ValueError, ImportError):  # bad assets: release the outbox writer first
            self.transport.close(flush_timeout_s=0)
            raise
        self.counters: LinkCounters = self.transport.counters
        if isinstance(self.dialect, JsonV1):
            self.transport.start(self.dialect)
            where = ", ".join(t.base + "*" for t in self.dialect.topics.values())
        else:  # Sparkplug numbers every message (seq) and renews its will (bdSeq) per connect
            self.transport.start(self.dialect, finish=self.dialect.finish, will_per_connect=True)
            where = f"{self.dialect.namespace}[/{'|'.join(self.dialect.devices)}]"
        logger.info(
            "MQTT link to %s:%d as %s, topics %s; %d events waiting in the outbox",
            cfg.host, cfg.port, self.transport.client_id, where, len(outbox),
        )  # fmt: skip

    @property
    def connected(self) -> bool:
        return self.transport.connected

    @property
    def pending(self) -> int:
        """Events not yet acknowledged by the broker (in the outbox, or in memory)."""
        return self.transport.pending

    @property
    def last_error(self) -> str | None:
        return self.transport.last_error

    def storage_problem(self) -> str | None:
        """Why events cannot be stored durably right now (full, failing, stalled disk), or None."""
        return self.transport.storage_problem()

    def publish_event(self, event: FaultEvent) -> Pending:
        """Commit `event` to the outbox, then send it when connected.

        The result's `committed` is set once the event is on disk; it stays unset when the disk
        failed or stalled (the event is then held in memory and sent directly), and `seq` is None
        when the outbox policy dropped it (see `edge_agent.mqtt.outbox`).
        """
        item = self.dialect.send(event)
        assert isinstance(item, Pending), "FaultEvent's route in MESSAGES is durable"
        if self.transport.closed:
            logger.warning("link closed: event %s stays in the outbox for the next start", item.seq)
        elif not self.connected:
            logger.info(
                "broker offline: %s event %s %s, %d events waiting",
                event.severity, event.event_id,
                "stored" if item.committed.is_set() else "held in memory", self.pending,
            )  # fmt: skip
        return item

    def publish_state(self, state: StateMessage) -> None:
        """Retain `state` as its asset's current diagnosis (re-sent on every reconnect)."""
        self.dialect.send(state)

    def publish_telemetry(self, telemetry: Telemetry) -> bool:
        """Send telemetry at QoS 0 if connected; while offline it is dropped (returns False)."""
        sent = bool(self.dialect.send(telemetry))
        if sent:
            self.counters.telemetry_sent += 1
        else:
            self.counters.telemetry_dropped += 1
        return sent

    def publish_status(self) -> None:
        """Refresh the retained online status (outbox size, errors); no-op while offline."""
        if self.connected:
            self.transport.publish(self.dialect.status("online"))

    def publish_reply(self, reply: CommandResult | CommandError, asset: str) -> None:
        """Answer a command that arrived on `asset`'s subtree (not durable: logged when offline)."""
        self.dialect.subtree(asset)  # an unserved asset is the caller's bug: raise, count nothing
        if isinstance(reply, CommandError):
            self.counters.commands_refused += 1
        elif reply.ok:
            self.counters.commands_ok += 1
        else:
            self.counters.commands_failed += 1
        self.dialect.reply(reply, asset)

    def supervise(self) -> None:
        """Restart paho's network thread if it died (it must never; this is the last guard)."""
        self.transport.supervise()

    def close(self, flush_timeout_s: float = 5.0) -> None:
        """Wait (at most `flush_timeout_s`) for the outbox to drain, publish the offline status,
        disconnect. Undelivered events stay in the outbox for the next start. The outbox stays open.
        """
        self.transport.close(flush_timeout_s)

    def __enter__(self) -> MqttLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

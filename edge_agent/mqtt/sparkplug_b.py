"""The Sparkplug B 3.0 dialect: the gateway is a Sparkplug edge node, each channel a device.

Topics `spBv1.0/<group>/<NBIRTH|NDATA|NDEATH|DBIRTH|DDATA|DDEATH|NCMD|DCMD>/<node>[/<device>]`:
group and node from `mqtt.sparkplug` (node defaults to `mqtt.device`), one device per channel
asset (the link's `assets`, and `mqtt.asset` when it is a channel's). Payloads are Sparkplug B
protobuf (`spb_payload.proto`, compiled by protoc; the protobuf package encodes). The session
rules are owned here:

- bdSeq 0..255, +1 per connection attempt, kept in `<state>/sparkplug_bdseq`: the will is an
  NDEATH {bdSeq} at QoS 1, renewed before every connect (the transport's `will_per_connect`);
  that connection's NBIRTH carries the same bdSeq; a clean close publishes the NDEATH itself.
- seq: NBIRTH 0, then +1 per node message (DBIRTH, NDATA, DDATA, DDEATH), 255 -> 0; NDEATH has
  none. `finish()` numbers each message as the transport hands it to paho (under its send lock),
  so seq follows wire order whichever thread sent it.
- aliases: each metric has a node-wide unique alias, named in its birth; data carries the alias
  only. Messages are built with names; `finish()` swaps in aliases.
- births: NBIRTH (bdSeq, Node Control/Rebirth, gateway status, command metrics), then a DBIRTH per
  device with its current values. Again on NCMD `Node Control/Rebirth` = true, and when a class
  not seen yet appears (its `Probability/<class>` metric must be born first). Until the NBIRTH,
  and a device's DDATA until its DBIRTH, `finish()` drops live data (a DBIRTH carries the current
  values later) and holds stored events.
- primary host (`mqtt.sparkplug.primary_host_id`): subscribes `spBv1.0/STATE/<id>` (retained JSON
  {"online": bool, "timestamp": ms}, older timestamps ignored); births wait for online. Offline:
  the node publishes its NDEATH and holds events in the outbox until the host is back (the spec
  also has the node reconnect; this one keeps its MQTT session: the will still matches).
- historical: a FaultEvent is encoded when stored (DDATA with names and the event's time) and
  finished when sent. It goes out live only if stored after the current NBIRTH on this connection;
  a row replayed after a reconnect, a primary-host outage or a restart has every metric marked
  `is_historical` (decided at send time: the outbox keeps bytes, the dialect knows the epoch).

Metrics of a device (tables and protobuf helpers in `mqtt.sparkplug_payload`): `DEVICE_METRICS`
plus `Probability/<class>`; the event travels whole as
`Event/JSON` (faultwatch tools rebuild the FaultEvent from it, de-duplicated by event_id).
Deviations, for durability: events go at `mqtt.qos_events` (the outbox needs PUBACKs; the spec's
data is QoS 0); no DDEATH on close (an NDEATH ends every device of the node).

Commands: an NCMD/DCMD metric `Command/<name>` (String) whose value is the JSON body of the JSON v1
command `<name>` (e.g. `Command/calibrate` = '{"id": "7", "label": "outer_race", ...}'); it is
validated by `parse_command` against the same table, rate-limited per name, and handed to
`submit(command, asset)` with asset = the device id (DCMD) or `mqtt.asset` (NCMD). Replies and
refusals are a `Command/Result` String metric (the JSON of CommandResult / CommandError) in a DDATA
for DCMD, an NDATA for NCMD: Sparkplug has no reply topic.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from edge_agent.config import MqttConfig, SparkplugConfig
from edge_agent.contract.commands import COMMANDS, CommandError, CommandResult, parse_command
from edge_agent.contract.durable import atomic_write
from edge_agent.contract.events import (
    AGENT_VERSION,
    FaultEvent,
    StateMessage,
    Telemetry,
    encode,
    utc_now,
)
from edge_agent.mqtt.json_v1 import RateLimiter, Submit, check_assets
from edge_agent.mqtt.sparkplug_payload import (
    COMMAND,
    DEVICE_METRICS,
    NAMESPACE,
    NODE_METRICS,
    PROBABILITY,
    REBIRTH,
    RESULT,
    DataType,
    DecodeError,
    add_metric,
    decode,
    event_metrics,
    metric_value,
    now_ms,
    parse_topic,
    pb,
    state_metrics,
    telemetry_metrics,
    to_ms,
)
from edge_agent.mqtt.spool import Pending
from edge_agent.mqtt.transport import MqttTransport, Outbound

logger = logging.getLogger(__name__)

BDSEQ_FILE = "sparkplug_bdseq"
REMEMBERED_REQUESTS = 1000  # NCMD request ids awaiting a reply (answered on NDATA)


class SparkplugB:
    """The Sparkplug B edge-node dialect over `transport`; see the module docstring.

    Give the transport `finish=self.finish, will_per_connect=True` (`MqttLink` does).
    """

    def __init__(
        self,
        cfg: MqttConfig,
        transport: MqttTransport,
        submit: Submit,
        assets: Sequence[str] = (),
        gateway_is_channel: bool = True,
    ) -> None:
        check_assets(assets)
        if cfg.sparkplug is None:
            raise ValueError('mqtt.dialect = "sparkplug_b" needs an [mqtt.sparkplug] section')
        self.cfg = cfg
        self.spb: SparkplugConfig = cfg.sparkplug
        self.transport = transport
        self.submit = submit
        self.node = self.spb.edge_node_id or cfg.device
        self.devices = list(dict.fromkeys([cfg.asset] * gateway_is_channel + [*assets]))
        base = f"{NAMESPACE}/{self.spb.group_id}"
        self.namespace = f"{base}/+/{self.node}"
        self._node_topic = {kind: f"{base}/{kind}/{self.node}" for kind in ("NBIRTH", "NDATA")}
        self._ndeath_topic = f"{base}/NDEATH/{self.node}"
        self._ncmd_topic = f"{base}/NCMD/{self.node}"
        self._dcmd_prefix = f"{base}/DCMD/{self.node}/"
        self._base = base
        host = self.spb.primary_host_id
        self._state_topic = f"{NAMESPACE}/STATE/{host}" if host else None
        self.started_utc = utc_now()
        self.bdseq_path = Path(transport.outbox.path).parent / BDSEQ_FILE
        self._lock = threading.RLock()  # everything below; taken inside the transport's lock
        self._bdseq = self._load_bdseq()  # the current connection's (after will())
        self._seq = 0
        self._born = False  # NBIRTH published on this connection, no NDEATH since
        self._born_devices: set[str] = set()  # their DBIRTH out since that NBIRTH
        self._live: set[str] = set()  # events stored since this NBIRTH: not historical
        self._host_online = False
        self._host_timestamp = -1
        self._classes: list[str] = []  # for Probability/<class>, in the order seen
        self._aliases: dict[tuple[str | None, str], int] = {}  # (device or None, name) -> alias
        self._names: dict[tuple[str | None, int], str] = {}
        self._types: dict[tuple[str | None, str], DataType] = {}
        self._values: dict[str | None, dict[str, Any]] = {None: {}} | {d: {} for d in self.devices}
        self._node_requests: OrderedDict[str, None] = OrderedDict()
        self._limiter = RateLimiter(cfg.commands_per_minute)
        for name, datatype in NODE_METRICS.items():
            self._register(None, name, datatype)
        for device in self.devices:
            for name, datatype in DEVICE_METRICS.items():
                self._register(device, name, datatype)

    # ---- topics and metric tables ---------------------------------------------------------

    def device_topic(self, kind: Literal["DBIRTH", "DDATA", "DDEATH"], device: str) -> str:
        return f"{self._base}/{kind}/{self.node}/{device}"

    def subtree(self, asset: str) -> str:
        """The DDATA topic of `asset`; a ValueError when this link does not serve it."""
        if asset not in self.devices:
            raise ValueError(
                f"asset {asset!r} is not served by this MQTT link (served: "
                f"{', '.join(self.devices)}); pass it in MqttLink(assets=...)"
            )
        return self.device_topic("DDATA", asset)

    def _register(self, device: str | None, name: str, datatype: DataType) -> None:
        if (device, name) not in self._aliases:
            alias = len(self._aliases) + 1
            self._aliases[(device, name)] = alias
            self._names[(device, alias)] = name
            self._types[(device, name)] = datatype

    def _learn_classes(self, names: Sequence[str]) -> bool:
        """Give every device a Probability/<class> metric for new `names`; True if any was new."""
        with self._lock:
            new = [n for n in names if n not in self._classes]
            for name in new:
                self._classes.append(name)
                for device in self.devices:
                    self._register(device, PROBABILITY + name, DataType.DOUBLE)
            return bool(new)

    def _payload(self, device: str | None, values: dict[str, Any], when_ms: int) -> bytes:
        payload = pb.Payload(timestamp=when_ms)
        for name, value in values.items():
            add_metric(payload, name, self._types[(device, name)], value, when_ms)
        return payload.SerializeToString()

    # ---- bdSeq ----------------------------------------------------------------------------

    def _load_bdseq(self) -> int:
        try:
            value = int(self.bdseq_path.read_text().strip())
        except FileNotFoundError:
            return -1  # the first connect uses 0
        except (OSError, ValueError) as exc:
            logger.warning("%s is unreadable (%s); bdSeq restarts at 0", self.bdseq_path, exc)
            return -1
        return value if 0 <= value <= 255 else -1

    def _next_bdseq(self) -> int:
        with self._lock:
            self._bdseq = (self._bdseq + 1) % 256
            try:
                atomic_write(self.bdseq_path, f"{self._bdseq}\n".encode())
            except OSError as exc:  # connect anyway: a host tolerates a repeated bdSeq
                logger.error("cannot save bdSeq to %s: %s", self.bdseq_path, exc)
            return self._bdseq

    def _ndeath(self, bdseq: int) -> Outbound:
        payload = pb.Payload(timestamp=now_ms())
        add_metric(payload, "bdSeq", DataType.INT64, bdseq, now_ms())
        return Outbound(self._ndeath_topic, payload.SerializeToString(), qos=1, retain=False)

    # ---- the transport's session ----------------------------------------------------------

    @property
    def subscriptions(self) -> list[str]:
        topics = [self._ncmd_topic, self._dcmd_prefix + "+"]
        return [*topics, self._state_topic] if self._state_topic else topics

    def will(self) -> Outbound:
        """The NDEATH of the next connection: a new bdSeq, saved first."""
        return self._ndeath(self._next_bdseq())

    def birth(self) -> list[Outbound]:
        """On every connect: the births, or none while a primary host is awaited."""
        with self._lock:
            self._born = False
            self._live.clear()
            self._host_online = False
        return [] if self._state_topic else self.births()

    def goodbye(self) -> Outbound:
        with self._lock:
            return self._ndeath(self._bdseq)

    def births(self) -> list[Outbound]:
        """NBIRTH, then a DBIRTH per device, with every metric and its current value."""
        with self._lock:
            when = now_ms()
            node = dict.fromkeys(NODE_METRICS) | self._values[None]
            node |= {"bdSeq": self._bdseq, REBIRTH: False}
            node |= {"Properties/Agent Version": AGENT_VERSION}
            node |= {"Properties/Started": self.started_utc}
            out = [Outbound(self._node_topic["NBIRTH"], self._payload(None, node, when), 0, False)]
            for device in self.devices:
                names = [*DEVICE_METRICS, *(PROBABILITY + c for c in self._classes)]
                values = dict.fromkeys(names) | self._values[device]
                payload = self._payload(device, values, when)
                out.append(Outbound(self.device_topic("DBIRTH", device), payload, 0, False))
            return out

    def rebirth(self) -> None:
        for out in self.births():
            self.transport.publish(out)
        self.transport.wake()

    def finish(self, topic: str, payload: bytes, key: str | None) -> bytes | None:
        """Number, alias and (for stored events) date-mark one message as it goes on the wire;
        None holds it back (no NBIRTH yet). Called by the transport under its send lock."""
        parsed = parse_topic(topic)
        if parsed is None:
            return payload
        _, kind, _, device = parsed
        with self._lock:
            if kind == "NDEATH":
                self._born = False
                self._live.clear()
                return payload
            if kind != "NBIRTH" and not self._born:
                return None
            if kind == "DDATA" and device in self.devices and device not in self._born_devices:
                return None  # the outbox's sender can come between the NBIRTH and this DBIRTH
            try:
                message = decode(payload)
            except DecodeError:
                logger.error("not a Sparkplug payload on %s; sent as stored", topic)
                return payload
            if kind == "NBIRTH":
                self._born, self._seq = True, 0
                self._born_devices.clear()
            elif kind == "DBIRTH":
                self._born_devices.add(device)
            birth = kind in ("NBIRTH", "DBIRTH")
            historical = key is not None and key not in self._live
            out = pb.Payload(timestamp=now_ms(), seq=self._seq)
            self._seq = (self._seq + 1) % 256
            for metric in message.metrics:
                alias = self._aliases.get((device, metric.name))
                if alias is None:  # a class of an older run's event: its JSON still has it
                    logger.debug("%s: metric %r has no birth; left out", topic, metric.name)
                    continue
                copy = out.metrics.add()
                copy.CopyFrom(metric)
                copy.alias = alias
                if not birth:
                    copy.ClearField("name")
                if historical:
                    copy.is_historical = True
            return out.SerializeToString()

    # ---- outbound -------------------------------------------------------------------------

    def send(self, message: BaseModel) -> Pending | bool:
        """A FaultEvent as a durable DDATA (through the outbox); a StateMessage or Telemetry as
        a DDATA now or never (their values also go into the next DBIRTH)."""
        if isinstance(message, FaultEvent):
            return self._send_event(message)
        if isinstance(message, StateMessage):
            values, when = state_metrics(message), message.time_utc
        elif isinstance(message, Telemetry):
            values, when = telemetry_metrics(message), message.time_utc
        else:
            raise TypeError(f"the Sparkplug dialect does not send {type(message).__name__}")
        topic = self.subtree(message.asset)
        with self._lock:
            self._values[message.asset] |= values
            payload = self._payload(message.asset, values, to_ms(when))
        return self.transport.publish(Outbound(topic, payload, qos=0, retain=False))

    def _send_event(self, event: FaultEvent) -> Pending:
        topic = self.subtree(event.asset)
        if self._learn_classes(list(event.probabilities)) and self._born:
            self.rebirth()  # Probability/<new class> is born before the event uses it
        values = event_metrics(event)
        with self._lock:
            self._values[event.asset] |= {k: v for k, v in values.items() if k != "Event/JSON"}
            payload = self._payload(event.asset, values, to_ms(event.time_utc))
            if self._born:
                self._live.add(event.event_id)
        out = Outbound(topic, payload, qos=self.cfg.qos_events, retain=False)
        return self.transport.store(out, event.severity, event.event_id)

    def status(
        self, status: Literal["online", "offline"], last_error: str | None = None
    ) -> Outbound:
        """The gateway's status as an NDATA (outbox size, errors); `status` is implied by
        NBIRTH / NDEATH."""
        values = {
            "Status/Outbox Pending": self.transport.pending,
            "Status/Last Error": last_error or self.transport.last_error,
            "Status/Storage Error": self.transport.storage_problem(),
        }
        with self._lock:
            self._values[None] |= values
            payload = self._payload(None, values, now_ms())
        return Outbound(self._node_topic["NDATA"], payload, qos=0, retain=False)

    def reply(
        self, reply: CommandResult | CommandError, asset: str, *, node: bool | None = None
    ) -> None:
        """`Command/Result` = the reply's JSON, in an NDATA when the command came by NCMD (by
        request id, or `node`), else in `asset`'s DDATA. Not durable: logged while offline."""
        topic = self.subtree(asset)
        if node is None:
            with self._lock:
                node = reply.id in self._node_requests
                if node:
                    del self._node_requests[reply.id]  # type: ignore[arg-type]
        device = None if node else asset
        if node:
            topic = self._node_topic["NDATA"]
        text = encode(reply).decode()
        with self._lock:
            payload = self._payload(device, {RESULT: text}, now_ms())
        if not self.transport.publish(Outbound(topic, payload, qos=0, retain=False)):
            logger.warning("offline: reply not sent to %s: %s", topic, text)

    # ---- inbound (paho's network thread) --------------------------------------------------

    def on_message(self, topic: str, payload: bytes, retain: bool) -> None:
        if topic == self._state_topic:
            self._on_host_state(payload)
            return
        suffix = topic[len(self._dcmd_prefix) :] if topic.startswith(self._dcmd_prefix) else ""
        if topic == self._ncmd_topic:
            device, asset = None, self.cfg.asset
        elif suffix in self.devices:
            device = asset = suffix
        else:
            logger.debug("ignoring message on %s", topic)
            return
        node = device is None
        try:
            message = decode(payload)
        except DecodeError as exc:
            error = CommandError(topic=topic, reason=f"not a Sparkplug B payload ({exc})")
            self._refuse(error, asset, node)
            return
        for metric in message.metrics:
            name = metric.name or self._names.get((device, metric.alias), f"alias {metric.alias}")
            if node and name == REBIRTH:
                if metric_value(metric) is True:
                    logger.info("rebirth asked on %s", topic)
                    self.rebirth()
            elif name.startswith(COMMAND) and name != RESULT:
                self._command(topic, name, metric, asset, node, retain)
            else:
                writable = [REBIRTH] if node else []
                writable += [COMMAND + c for c in COMMANDS]
                reason = f"metric {name!r} cannot be written; writable: {', '.join(writable)}"
                self._refuse(CommandError(topic=f"{topic}#{name}", reason=reason), asset, node)

    def _command(
        self, topic: str, name: str, metric: pb.Payload.Metric, asset: str, node: bool, retain: bool
    ) -> None:
        where = f"{topic}#{name}"
        command_name = name[len(COMMAND) :]
        if not self._limiter.allow(command_name if command_name in COMMANDS else "(unknown)"):
            self._rate_limited(where, command_name, asset, node)
            return
        if retain:
            reason = "retained commands are ignored (they would re-run on every reconnect)"
            self._refuse(CommandError(topic=where, reason=reason), asset, node)
            return
        if metric.WhichOneof("value") != "string_value":
            reason = f"{name} takes a String metric holding the JSON body, e.g. " + '{"id": "1"}'
            self._refuse(CommandError(topic=where, reason=reason), asset, node)
            return
        body = metric.string_value.encode()
        command = parse_command(command_name, body, self.cfg.max_command_bytes, topic=where)
        if isinstance(command, CommandError):
            self._refuse(command, asset, node)
            return
        if node:
            with self._lock:
                self._node_requests[command.id] = None
                while len(self._node_requests) > REMEMBERED_REQUESTS:
                    self._node_requests.popitem(last=False)
        try:
            refusal = self.submit(command, asset)
        except Exception as exc:  # the agent's bug: answer, and keep taking commands
            logger.exception("submitting command %s (id %s) failed", command.name, command.id)
            refusal = f"the agent could not take the command: {type(exc).__name__}: {exc}"
        if refusal is not None:
            self._refuse(CommandError(topic=where, id=command.id, reason=refusal), asset, node)

    def _rate_limited(self, where: str, name: str, asset: str, node: bool) -> None:
        self.transport.counters.commands_rate_limited += 1
        refused = self._limiter.notice(name)
        if refused is None:
            return
        reason = (
            f"rate limited: {refused} {name} command(s) refused since the last notice "
            f"(mqtt.commands_per_minute={self.cfg.commands_per_minute}); retry later"
        )
        self._refuse(CommandError(topic=where, reason=reason), asset, node)

    def _refuse(self, error: CommandError, asset: str, node: bool) -> None:
        self.transport.counters.commands_refused += 1
        self.reply(error, asset, node=node)

    def _on_host_state(self, payload: bytes) -> None:
        try:
            state = json.loads(payload)
            online, stamp = state["online"], int(state.get("timestamp", 0))
            if not isinstance(online, bool):
                raise TypeError(f"online is {type(online).__name__}, not a boolean")
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            logger.warning("ignoring a primary host STATE that is not usable JSON: %s", exc)
            return
        with self._lock:
            if stamp < self._host_timestamp:
                logger.info("ignoring an older primary host STATE (%d)", stamp)
                return
            self._host_timestamp = stamp
            was_online, self._host_online = self._host_online, online
            born = self._born
        if online and not was_online:
            logger.info("primary host %s online: births", self.spb.primary_host_id)
            self.rebirth()
        elif not online and born:
            logger.warning(
                "primary host %s offline: NDEATH; events wait in the outbox",
                self.spb.primary_host_id,
            )
            self.transport.publish(self.goodbye())

"""The agent's one MQTT connection (paho-mqtt 2.x): events, state, status, telemetry and commands.

Topics (all built by `topics()`), under `<prefix>/<site>/<asset>/<device>/`:

    status      retained `StatusMessage` online/offline; `offline` is also the last will (QoS 1)
    state       retained `StateMessage`, the current diagnosis (QoS 1), re-sent on every connect
    event       `FaultEvent` (QoS cfg.qos_events), durable through the `Outbox`
    telemetry   `Telemetry` (QoS 0), dropped while offline: not durable, by design
    cmd/<name>  inbound commands (subscribed as `cmd/#`, QoS 1); see `edge_agent.contract.commands`
    cmd_result  `CommandResult` replies carrying the request id
    error       `CommandError` for refused commands

Delivery of events is *at least once*, and the outbox, not paho, is the queue:

- `publish_event()` commits the event to the outbox first (through `edge_agent.mqtt.spool`, which
  never lets a full, failing or stalled disk block the caller), then wakes the sender thread; an
  event is never handed to paho while disconnected (paho would only hold it in memory).
- The sender publishes outbox rows in `seq` order with at most `max_inflight` unacknowledged at a
  time, and deletes a row once the broker's PUBACK has arrived (`on_publish`; the sender checks each
  message's `MQTTMessageInfo`, which cannot race with `publish()` returning).
- On every (re)connect, paho's own in-memory leftovers are dropped and the outbox is replayed from
  its oldest row, so rows sent but never acknowledged are sent again: subscribers de-duplicate by
  `event_id`. A new process on the same outbox (after kill -9) replays the same way.

Session choice: MQTT 5 (`mqtt.protocol = "5"`) with a persistent session (clean start off, a
week's expiry), or v3.1.1 with `clean_session=False` for brokers without MQTT 5 (the embedded
amqtt). The session keeps the `cmd/#` subscription and queues QoS 1 commands sent while the link
was down. Event durability never depends on the broker session: it comes from the outbox.
MQTT 5 adds two things: the subscription asks for "retain as published", so a retained command is
recognized (and ignored) even on its first, live delivery; and the broker says "session taken over"
when another client connects with our client id. On v3.1.1 a clash is recognized by its pattern
(the connection dropped again and again right after connecting).

Hostile input never reaches the network thread: every callback is guarded, replies always encode,
commands are rate-limited per command name (`mqtt.commands_per_minute`, bursts of
`RATE_BURST`), and a network thread that died anyway is restarted by the sender's supervision.
Command results and errors are not durable: while disconnected they are logged, not queued.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.config import MqttConfig
from edge_agent.contract.commands import (
    COMMANDS,
    Command,
    CommandError,
    CommandResult,
    execute,
    parse_command,
)
from edge_agent.contract.events import (
    FaultEvent,
    StateMessage,
    StatusMessage,
    Telemetry,
    encode,
    utc_now,
)
from edge_agent.mqtt.outbox import Outbox, OutboxStorageError
from edge_agent.mqtt.spool import EventSpool, Pending

logger = logging.getLogger(__name__)

COMMAND_QUEUE = 16  # commands waiting for the handler before new ones are refused as busy
RATE_BURST = 10  # commands of one name accepted at once before the per-minute rate applies
RATE_REPLY_S = 5.0  # at most one "rate limited" reply per command name this often
SESSION_EXPIRY_S = 7 * 24 * 3600  # MQTT 5: the broker keeps our session (and queued commands)
SESSION_TAKEN_OVER = 142  # MQTT 5 reason code: another client connected with our client id
QUICK_DROP_S = 10.0  # v3.1.1 clash pattern: a drop this soon after connecting...
CLASH_DROPS = 3  # ...this many times...
CLASH_WINDOW_S = 60.0  # ...within this long
PAHO_LOGGER = logging.getLogger(f"{__name__}.paho")


def _not_paho_close_noise(record: logging.LogRecord) -> bool:
    # paho 2.2 logs this at ERROR on every ordinary disconnect with loop_start(); it is harmless.
    return not str(record.msg).startswith("Client is not connected")


PAHO_LOGGER.addFilter(_not_paho_close_noise)


@dataclass(frozen=True)
class Topics:
    base: str
    status: str
    state: str
    event: str
    telemetry: str
    cmd_prefix: str
    cmd_subscription: str
    cmd_result: str
    error: str

    def cmd(self, name: str) -> str:
        return self.cmd_prefix + name


def topics(cfg: MqttConfig) -> Topics:
    """Every topic of one device, from `<prefix>/<site>/<asset>/<device>/`."""
    base = f"{cfg.topic_prefix}/{cfg.site}/{cfg.asset}/{cfg.device}/"
    return Topics(
        base=base,
        status=base + "status",
        state=base + "state",
        event=base + "event",
        telemetry=base + "telemetry",
        cmd_prefix=base + "cmd/",
        cmd_subscription=base + "cmd/#",
        cmd_result=base + "cmd_result",
        error=base + "error",
    )


@dataclass
class LinkCounters:
    connects: int = 0
    disconnects: int = 0
    events_sent: int = 0  # publish calls, re-sends included
    events_acked: int = 0  # rows the broker acknowledged and the outbox deleted
    telemetry_sent: int = 0
    telemetry_dropped: int = 0  # published while offline
    commands_ok: int = 0
    commands_failed: int = 0
    commands_refused: int = 0  # invalid, retained or over the queue: answered on `error`
    commands_rate_limited: int = 0  # over mqtt.commands_per_minute: answered now and then
    callback_errors: int = 0  # exceptions caught in paho callbacks (a bug, logged)
    network_restarts: int = 0  # paho network threads found dead and restarted
    client_id_clashes: int = 0  # another client took our client id
    sent_from_memory: int = 0  # events published while storage failed


class RateLimiter:
    """A token bucket per key: `burst` at once, then `per_minute`."""

    def __init__(self, per_minute: int, burst: int = RATE_BURST) -> None:
        self.rate_s, self.burst = per_minute / 60.0, float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last time)

    def allow(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate_s)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        return allowed


class MqttLink:
    """Publishes through `outbox` and answers commands with `on_command` (run on a worker thread).

    Starts connecting at once (in the background: a broker that is down is not an error, events
    wait in the outbox). Call `close()` to say offline, flush and disconnect.
    """

    def __init__(
        self,
        cfg: MqttConfig,
        outbox: Outbox,
        on_command: Callable[[Command], CommandResult],
        *,
        reconnect_min_delay_s: float = 1.0,
        reconnect_max_delay_s: float = 60.0,
        max_inflight: int = 20,
    ) -> None:
        if not 0 < reconnect_min_delay_s <= reconnect_max_delay_s:
            raise ValueError(
                "MqttLink needs 0 < reconnect_min_delay_s <= reconnect_max_delay_s, got "
                f"{reconnect_min_delay_s=}, {reconnect_max_delay_s=}"
            )
        if max_inflight < 1:
            raise ValueError(f"MqttLink needs max_inflight >= 1, got {max_inflight}")
        self.cfg = cfg
        self.outbox = outbox
        self.spool = EventSpool(outbox)
        self.on_command = on_command
        self.topics = topics(cfg)
        self.max_inflight = max_inflight
        self.counters = LinkCounters()
        self.started_utc: datetime = utc_now()
        self.last_error: str | None = None
        self._lock = threading.Lock()  # guards _connected, _generation, _last_state
        self._connected = False
        self._generation = 0  # +1 per successful connect; the sender restarts its replay on change
        self._last_state: bytes | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._closed = False
        # Only the sender thread touches these two:
        self._inflight: dict[int, mqtt.MQTTMessageInfo] = {}  # outbox seq -> paho message info
        self._inflight_memory: dict[str, tuple[Pending, mqtt.MQTTMessageInfo]] = {}
        self._last_sent_seq = 0
        self._commands: queue.Queue[Command] = queue.Queue(maxsize=COMMAND_QUEUE)
        self._limiter = RateLimiter(cfg.commands_per_minute)
        self._limited: dict[str, tuple[int, float]] = {}  # name -> (refused, last reply time)
        self._connected_at = 0.0
        self._quick_drops: list[float] = []
        self._clash_logged_at: float | None = None

        self._client = self._make_client(reconnect_min_delay_s, reconnect_max_delay_s)
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-outbox", daemon=True)
        self._worker = threading.Thread(
            target=self._command_loop, name="mqtt-commands", daemon=True
        )
        self._sender.start()
        self._worker.start()
        if cfg.protocol == "5":
            session = Properties(PacketTypes.CONNECT)
            session.SessionExpiryInterval = SESSION_EXPIRY_S
            self._client.connect_async(
                cfg.host, cfg.port, cfg.keepalive_s, clean_start=False, properties=session
            )
        else:
            self._client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        self._client.loop_start()
        logger.info(
            "MQTT link to %s:%d as %s, topics %s*; %d events waiting in the outbox",
            cfg.host, cfg.port, self._client_id, self.topics.base, len(outbox),
        )  # fmt: skip

    @property
    def _client_id(self) -> str:
        return self.cfg.client_id or f"faultwatch-{self.cfg.device}"

    def _make_client(self, min_delay_s: float, max_delay_s: float) -> mqtt.Client:
        cfg = self.cfg
        if cfg.protocol == "5":
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=self._client_id, protocol=mqtt.MQTTv5
            )
        else:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=self._client_id,
                clean_session=False,
                protocol=mqtt.MQTTv311,
            )
        client.enable_logger(PAHO_LOGGER)
        client.suppress_exceptions = True  # a callback's bug is logged, never kills the thread
        offline = self._status("offline", last_error="connection lost (last will)")
        client.will_set(self.topics.status, encode(offline), qos=1, retain=True)
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls is not None:
            client.tls_set(
                ca_certs=str(cfg.tls.ca_file),
                certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
            )
            client.tls_insecure_set(cfg.tls.insecure_skip_verify)
        client.reconnect_delay_set(min_delay_s, max_delay_s)  # type: ignore[arg-type]
        # Room for our event window plus status/state/results, so paho never re-orders events.
        client.max_inflight_messages_set(self.max_inflight + COMMAND_QUEUE)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    # ---- public API -----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def pending(self) -> int:
        """Events not yet acknowledged by the broker (in the outbox, or in memory)."""
        return len(self.spool)

    def storage_problem(self) -> str | None:
        """Why events cannot be stored durably right now (full, failing, stalled disk), or None."""
        return self.spool.problem()

    def publish_event(self, event: FaultEvent) -> Pending:
        """Commit `event` to the outbox, then send it when connected.

        The result's `committed` is set once the event is on disk; it stays unset when the disk
        failed or stalled (the event is then held in memory and sent directly), and `seq` is None
        when the outbox policy dropped it (see `edge_agent.mqtt.outbox`).
        """
        item = self.spool.submit(
            self.topics.event, encode(event), self.cfg.qos_events, event.severity, event.event_id
        )
        self._wake.set()
        if self._closed:
            logger.warning("link closed: event %s stays in the outbox for the next start", item.seq)
        elif not self._connected:
            logger.info(
                "broker offline: %s event %s %s, %d events waiting",
                event.severity, event.event_id,
                "stored" if item.committed.is_set() else "held in memory", self.pending,
            )  # fmt: skip
        return item

    def publish_state(self, state: StateMessage) -> None:
        """Retain `state` as the device's current diagnosis (re-sent on every reconnect)."""
        payload = encode(state)
        with self._lock:
            self._last_state = payload
            connected = self._connected
        if connected:
            self._client.publish(self.topics.state, payload, qos=1, retain=True)

    def publish_telemetry(self, telemetry: Telemetry) -> bool:
        """Send telemetry at QoS 0 if connected; while offline it is dropped (returns False)."""
        if not self._connected:
            self.counters.telemetry_dropped += 1
            return False
        self._client.publish(self.topics.telemetry, encode(telemetry), qos=0)
        self.counters.telemetry_sent += 1
        return True

    def publish_status(self) -> None:
        """Refresh the retained online status (outbox size, errors); no-op while offline."""
        if self._connected:
            self._client.publish(self.topics.status, encode(self._status("online")), 1, True)

    def supervise(self) -> None:
        """Restart paho's network thread if it died (it must never; this is the last guard)."""
        if self._closed or self._stop.is_set():
            return
        if self._client.loop_start() == MQTTErrorCode.MQTT_ERR_SUCCESS:  # no thread was running
            self.counters.network_restarts += 1
            self.last_error = "the MQTT network thread had stopped; restarted it"
            logger.error("%s (%d restarts)", self.last_error, self.counters.network_restarts)

    def close(self, flush_timeout_s: float = 5.0) -> None:
        """Wait (at most `flush_timeout_s`) for the outbox to drain, publish the offline status,
        disconnect. Undelivered events stay in the outbox for the next start. The outbox stays open.
        """
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + flush_timeout_s
        while self.pending and self._connected and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.02)
        if self.pending:
            logger.warning(
                "closing with %d undelivered events; %d stay in %s for the next start",
                self.pending, len(self.outbox), self.outbox.path,
            )  # fmt: skip
        if self._connected:
            info = self._client.publish(
                self.topics.status, encode(self._status("offline")), qos=1, retain=True
            )
            try:
                info.wait_for_publish(timeout=max(0.5, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:  # connection lost meanwhile
                logger.warning("offline status not delivered: %s", exc)
        self._stop.set()
        self._wake.set()
        self._sender.join(timeout=2.0)
        self._worker.join(timeout=2.0)
        self.spool.close()
        self._client.disconnect()
        self._client.loop_stop()
        with self._lock:
            self._connected = False
        logger.info("MQTT link closed; %s", self.counters)

    def __enter__(self) -> MqttLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- paho callbacks (network thread) --------------------------------------------------

    def _status(
        self, status: Literal["online", "offline"], last_error: str | None = None
    ) -> StatusMessage:
        return StatusMessage(
            status=status,
            site=self.cfg.site,
            asset=self.cfg.asset,
            device=self.cfg.device,
            started_utc=self.started_utc,
            outbox_pending=self.pending,
            last_error=last_error or self.last_error,
            storage_error=self.spool.problem(),
        )

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.last_error = f"broker refused the connection: {reason_code}"
            logger.error(
                "%s:%d refused the connection (%s); check mqtt.username/password and the "
                "broker's ACL", self.cfg.host, self.cfg.port, reason_code,
            )  # fmt: skip
            return
        dropped = client.drop_out_messages() if hasattr(client, "drop_out_messages") else []
        with self._lock:
            self._connected = True
            self._generation += 1
            last_state = self._last_state
        self._connected_at = time.monotonic()
        self.counters.connects += 1
        client.publish(self.topics.status, encode(self._status("online")), qos=1, retain=True)
        if self.cfg.protocol == "5":
            options = SubscribeOptions(qos=1, retainAsPublished=True)
            client.subscribe(self.topics.cmd_subscription, options=options)
        else:
            client.subscribe(self.topics.cmd_subscription, qos=1)
        if last_state is not None:
            client.publish(self.topics.state, last_state, qos=1, retain=True)
        self._wake.set()
        logger.info(
            "connected to %s:%d; replaying %d stored events (%d unacknowledged messages dropped "
            "from paho's memory, re-sent from the outbox)",
            self.cfg.host, self.cfg.port, len(self.outbox), len(dropped),
        )  # fmt: skip

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            was_connected, self._connected = self._connected, False
        if not was_connected or self._closed:
            return
        self.counters.disconnects += 1
        self.last_error = f"disconnected: {reason_code}"
        now = time.monotonic()
        if now - self._connected_at < QUICK_DROP_S:
            self._quick_drops = [t for t in self._quick_drops if now - t < CLASH_WINDOW_S]
            self._quick_drops.append(now)
        if getattr(reason_code, "value", None) == SESSION_TAKEN_OVER:
            self._client_id_clash("the broker says another connection took over our session")
        elif len(self._quick_drops) >= CLASH_DROPS:
            self._client_id_clash(
                f"the connection dropped {len(self._quick_drops)} times within "
                f"{CLASH_WINDOW_S:.0f} s, each less than {QUICK_DROP_S:.0f} s after connecting"
            )
        else:
            logger.warning(
                "lost the broker %s:%d (%s); %d events waiting, retrying in the background",
                self.cfg.host, self.cfg.port, reason_code, self.pending,
            )  # fmt: skip

    def _client_id_clash(self, why: str) -> None:
        self.counters.client_id_clashes += 1
        self.last_error = (
            f"client id clash: {why}; another client (a second agent with the same mqtt.device?) "
            f"uses client id {self._client_id!r}: give each agent its own mqtt.device or "
            "mqtt.client_id"
        )
        now = time.monotonic()
        if self._clash_logged_at is None or now - self._clash_logged_at >= CLASH_WINDOW_S:
            self._clash_logged_at = now
            logger.error("%s (%d so far)", self.last_error, self.counters.client_id_clashes)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._wake.set()  # the sender sees which rows are acknowledged through their message info

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        try:
            self._handle_message(message)
        except Exception:  # never let hostile input (or a bug) reach paho's network thread
            self.counters.callback_errors += 1
            logger.exception("ignored an inbound message that broke the handler")

    def _handle_message(self, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:  # a conforming broker never delivers this
            logger.warning("ignoring a message whose topic is not UTF-8")
            return
        if not topic.startswith(self.topics.cmd_prefix):
            logger.debug("ignoring message on %s", topic)
            return
        if not message.payload:  # how a retained command is cleared: nothing to answer
            logger.debug("ignoring an empty message on %s", topic)
            return
        suffix = topic[len(self.topics.cmd_prefix) :]
        name = suffix if suffix in COMMANDS else "(unknown)"
        if not self._limiter.allow(name):
            self._rate_limited(topic, name)
            return
        if message.retain:
            command: Command | CommandError = CommandError(
                topic=topic,
                reason="retained commands are ignored (they would re-run on every reconnect); "
                "publish with retain=false, and clear this one with an empty retained message",
            )
        else:
            command = parse_command(
                suffix, message.payload, self.cfg.max_command_bytes, topic=topic
            )
        if isinstance(command, CommandError):
            self._refuse(command)
            return
        try:
            self._commands.put_nowait(command)
        except queue.Full:
            self._refuse(
                CommandError(
                    topic=topic,
                    id=command.id,
                    reason=f"agent busy: {COMMAND_QUEUE} commands are waiting; retry later",
                )
            )

    def _rate_limited(self, topic: str, name: str) -> None:
        """Count the refusal; answer at most once per `RATE_REPLY_S` per command name."""
        self.counters.commands_rate_limited += 1
        refused, replied_at = self._limited.get(name, (0, -RATE_REPLY_S))
        refused += 1
        now = time.monotonic()
        if now - replied_at < RATE_REPLY_S:
            self._limited[name] = (refused, replied_at)
            return
        self._limited[name] = (0, now)
        logger.warning("rate limit: refused %d %s commands", refused, name)
        self._refuse(
            CommandError(
                topic=topic,
                reason=f"rate limited: {refused} {name} command(s) refused since the last notice "
                f"(at most {RATE_BURST} at once, then mqtt.commands_per_minute="
                f"{self.cfg.commands_per_minute} per command name); retry later",
            )
        )

    def _refuse(self, error: CommandError) -> None:
        self.counters.commands_refused += 1
        self._publish_reply(self.topics.error, error)

    def _publish_reply(self, topic: str, reply: CommandResult | CommandError) -> None:
        try:
            payload = encode(reply)
        except ValueError as exc:  # a field that cannot be UTF-8 (parse_command prevents this)
            logger.error("reply to %s could not be encoded (%s); sent without its text", topic, exc)
            payload = encode(_plain_reply(reply))
        if self._connected:
            self._client.publish(topic, payload, qos=1)
        else:
            logger.warning("offline: reply not sent to %s: %s", topic, payload.decode())

    # ---- worker threads -------------------------------------------------------------------

    def _command_loop(self) -> None:
        while not self._stop.is_set():
            try:
                command = self._commands.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                result = execute(self.on_command, command)
                if result.ok:
                    self.counters.commands_ok += 1
                else:
                    self.counters.commands_failed += 1
                self._publish_reply(self.topics.cmd_result, result)
            except Exception:  # keep answering the next command
                logger.exception("answering command %s failed", command.name)

    def _send_loop(self) -> None:
        sent_generation = -1
        while True:
            self._wake.wait(timeout=0.5)
            self._wake.clear()
            try:
                with self._lock:
                    generation, connected = self._generation, self._connected
                if generation != sent_generation:  # new connection: replay from the oldest row
                    sent_generation = generation
                    self._inflight.clear()
                    self._inflight_memory.clear()
                    self._last_sent_seq = 0
                self.supervise()
                self._ack_delivered()
                if connected and not self._stop.is_set():
                    self._send_next()
            except OutboxStorageError as exc:  # the spool reports it; memory events still go
                logger.debug("outbox sender: %s", exc)
                if connected and not self._stop.is_set():
                    self._send_from_memory()
            except Exception as exc:  # keep the sender alive; the rows stay in the outbox
                self.last_error = f"outbox sender: {type(exc).__name__}: {exc}"
                logger.exception("outbox sender failed; retrying in 1 s")
                time.sleep(1.0)
            if self._stop.is_set():
                return

    def _ack_delivered(self) -> None:
        for event_id, (item, info) in list(self._inflight_memory.items()):
            if info.is_published():
                del self._inflight_memory[event_id]
                self.spool.delivered(item)
                self.counters.events_acked += 1
        done = [seq for seq, info in self._inflight.items() if info.is_published()]
        if done:
            self.outbox.ack_many(done)
            for seq in done:
                del self._inflight[seq]
            self.counters.events_acked += len(done)

    def _room(self) -> int:
        return self.max_inflight - len(self._inflight) - len(self._inflight_memory)

    def _send_next(self) -> None:
        room = self._room()
        if room > 0:
            for row in self.outbox.pending(limit=room, after_seq=self._last_sent_seq):
                info = self._client.publish(row.topic, row.payload, qos=row.qos)
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:  # connection dropped: replay later
                    return
                self._inflight[row.seq] = info
                self._last_sent_seq = row.seq
                self.counters.events_sent += 1
        self._send_from_memory()

    def _send_from_memory(self) -> None:
        """While storage fails, publish the events held in memory directly."""
        if self.spool.problem() is None:
            return  # the writer commits them within milliseconds; they go out from the outbox
        waiting = [p for p in self.spool.in_memory() if p.event_id not in self._inflight_memory]
        for item in waiting[: max(self._room(), 0)]:
            info = self._client.publish(item.topic, item.payload, qos=item.qos)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            self._inflight_memory[item.event_id] = (item, info)
            self.counters.events_sent += 1
            self.counters.sent_from_memory += 1


def _plain_reply(reply: CommandResult | CommandError) -> CommandResult | CommandError:
    """`reply` without its free text and data (what remains always encodes)."""
    if isinstance(reply, CommandResult):
        return CommandResult(id="?", ok=reply.ok, message="(reply text could not be encoded)")
    return CommandError(topic="?", reason="(the refusal could not be encoded)")

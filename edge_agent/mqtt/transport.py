"""The MQTT transport (paho-mqtt 2.x): one connection that moves bytes on topics.

It knows nothing of payloads: a dialect (`edge_agent.mqtt.json_v1`) is its `Session` and says what
to subscribe to, what the last will, the birth on every connect and the goodbye on a clean close
are, and handles inbound messages.

Delivery of durable messages (events) is *at least once*, and the outbox, not paho, is the queue:

- `store()` commits the message to the outbox first (through `edge_agent.mqtt.spool`, which never
  lets a full, failing or stalled disk block the caller), then wakes the sender thread; a message
  is never handed to paho while disconnected (paho would only hold it in memory).
- The sender publishes outbox rows in `seq` order with at most `max_inflight` unacknowledged at a
  time, and deletes a row once the broker's PUBACK has arrived (`on_publish`; the sender checks each
  message's `MQTTMessageInfo`, which cannot race with `publish()` returning).
- On every (re)connect, paho's own in-memory leftovers are dropped and the outbox is replayed from
  its oldest row, so rows sent but never acknowledged are sent again: subscribers de-duplicate by
  `event_id`. A new process on the same outbox (after kill -9) replays the same way.

`publish()` is now or never (dropped while offline); with `keep=True` the last message per topic
is also re-sent on every connect, after the birth and the subscriptions.

Session choice: MQTT 5 (`mqtt.protocol = "5"`) with a persistent session (clean start off, a
week's expiry), or v3.1.1 with `clean_session=False` for brokers without MQTT 5 (the embedded
amqtt). The session keeps the subscriptions and queues QoS 1 messages sent while the link was down.
Durability never depends on the broker session: it comes from the outbox. MQTT 5 adds two things:
subscriptions ask for "retain as published", so the dialect can recognize a retained message even
on its first, live delivery; and the broker says "session taken over" when another client connects
with our client id. On v3.1.1 a clash is recognized by its pattern (the connection dropped again
and again right after connecting).

Two optional hooks serve dialects with session rules of their own (Sparkplug B), given to
`start()`: `finish(topic, payload, key)` sees every message just before it goes to paho, under one
lock, in wire order (stored rows with their key, live ones with None); it returns the bytes to send
(e.g. with a sequence number, or a stored event re-marked as historical) or None: a live message
is then not sent, and the outbox holds its rows until `wake()` is called. With
`will_per_connect=True` the session's `will()` is asked again before every connection attempt
(a will that changes per connect, like Sparkplug's bdSeq). Without hooks nothing changes.

Every paho callback is guarded (a bug or hostile input is counted and logged, never raised into
the network thread), and a network thread that died anyway is restarted by the sender's
supervision.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.config import MqttConfig
from edge_agent.mqtt.outbox import Outbox, OutboxStorageError
from edge_agent.mqtt.spool import EventSpool, Pending

logger = logging.getLogger(__name__)

EXTRA_INFLIGHT = 16  # paho's in-flight room beyond the outbox window (status, state, replies)
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
class Outbound:
    """One message as it goes on the wire."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


class Session(Protocol):
    """What the transport asks of a dialect."""

    @property
    def subscriptions(self) -> Sequence[str]: ...  # subscribed at QoS 1 on every connect

    def will(self) -> Outbound: ...  # set once, before connecting

    def birth(self) -> list[Outbound]: ...  # published first on every connect

    def goodbye(self) -> Outbound: ...  # published on a clean close, after the outbox drained

    def on_message(self, topic: str, payload: bytes, retain: bool) -> None: ...  # paho thread


Finish = Callable[[str, bytes, str | None], bytes | None]  # (topic, payload, stored key)


@dataclass
class LinkCounters:
    connects: int = 0
    disconnects: int = 0
    events_sent: int = 0  # publish calls, re-sends included
    events_acked: int = 0  # rows the broker acknowledged and the outbox deleted
    telemetry_sent: int = 0
    telemetry_dropped: int = 0  # published while offline
    commands_ok: int = 0  # replies published with ok=True (counted by the link)
    commands_failed: int = 0  # replies published with ok=False
    commands_refused: int = 0  # invalid, retained or refused by the agent: answered on `error`
    commands_rate_limited: int = 0  # over mqtt.commands_per_minute: answered now and then
    callback_errors: int = 0  # exceptions caught in paho callbacks (a bug, logged)
    network_restarts: int = 0  # paho network threads found dead and restarted
    client_id_clashes: int = 0  # another client took our client id
    sent_from_memory: int = 0  # events published while storage failed


class MqttTransport:
    """One paho connection, the durable outbox sender and its supervision.

    Nothing happens until `start(session)`; from then it connects in the background (a broker
    that is down is not an error: durable messages wait in the outbox). `close()` flushes,
    says goodbye and disconnects.
    """

    def __init__(
        self,
        cfg: MqttConfig,
        outbox: Outbox,
        *,
        reconnect_min_delay_s: float = 1.0,
        reconnect_max_delay_s: float = 60.0,
        max_inflight: int = 20,
    ) -> None:
        if not 0 < reconnect_min_delay_s <= reconnect_max_delay_s:
            raise ValueError(
                "MqttTransport needs 0 < reconnect_min_delay_s <= reconnect_max_delay_s, got "
                f"{reconnect_min_delay_s=}, {reconnect_max_delay_s=}"
            )
        if max_inflight < 1:
            raise ValueError(f"MqttTransport needs max_inflight >= 1, got {max_inflight}")
        self.cfg = cfg
        self.outbox = outbox
        self.spool = EventSpool(outbox)
        self.max_inflight = max_inflight
        self.counters = LinkCounters()
        self.last_error: str | None = None
        self._session: Session | None = None
        self._lock = threading.Lock()  # guards _connected, _generation, _kept
        self._send_lock = threading.RLock()  # wire order: finish() + paho publish, births first
        self._finish: Finish | None = None
        self._connected = False
        self._generation = 0  # +1 per successful connect; the sender restarts its replay on change
        self._kept: dict[str, Outbound] = {}  # topic -> last message to re-send on every connect
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._closed = False
        # Only the sender thread touches these:
        self._inflight: dict[int, mqtt.MQTTMessageInfo] = {}  # outbox seq -> paho message info
        self._inflight_memory: dict[str, tuple[Pending, mqtt.MQTTMessageInfo]] = {}
        self._last_sent_seq = 0
        self._connected_at = 0.0
        self._quick_drops: list[float] = []
        self._clash_logged_at: float | None = None
        self._client = self._make_client(reconnect_min_delay_s, reconnect_max_delay_s)
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-outbox", daemon=True)

    @property
    def client_id(self) -> str:
        return self.cfg.client_id or f"faultwatch-{self.cfg.device}"

    def _make_client(self, min_delay_s: float, max_delay_s: float) -> mqtt.Client:
        cfg = self.cfg
        if cfg.protocol == "5":
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5
            )
        else:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=self.client_id,
                clean_session=False,
                protocol=mqtt.MQTTv311,
            )
        client.enable_logger(PAHO_LOGGER)
        client.suppress_exceptions = True  # a callback's bug is logged, never kills the thread
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
        # Room for the outbox window plus status/state/replies, so paho never re-orders events.
        client.max_inflight_messages_set(self.max_inflight + EXTRA_INFLIGHT)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    # ---- public API -----------------------------------------------------------------------

    def start(
        self, session: Session, *, finish: Finish | None = None, will_per_connect: bool = False
    ) -> None:
        """Set `session`'s last will and start connecting (in the background); for the optional
        `finish` and `will_per_connect` hooks see the module docstring."""
        if self._session is not None:
            raise RuntimeError("MqttTransport.start() was already called")
        self._session = session
        self._finish = finish
        if will_per_connect:
            self._client.on_pre_connect = self._on_pre_connect
        else:
            self._set_will()
        self._sender.start()
        cfg = self.cfg
        if cfg.protocol == "5":
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = SESSION_EXPIRY_S
            self._client.connect_async(
                cfg.host, cfg.port, cfg.keepalive_s, clean_start=False, properties=properties
            )
        else:
            self._client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        self._client.loop_start()

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending(self) -> int:
        """Durable messages not yet acknowledged by the broker (in the outbox, or in memory)."""
        return len(self.spool)

    def storage_problem(self) -> str | None:
        """Why messages cannot be stored durably now (full, failing, stalled disk), or None."""
        return self.spool.problem()

    def store(self, out: Outbound, severity: str, key: str) -> Pending:
        """Commit `out` to the outbox (`severity` for its drop policy, `key` its unique id), then
        send it when connected. The result's `committed` is set once it is on disk; it stays unset
        when the disk failed or stalled (it is then held in memory and sent directly), and `seq`
        is None when the outbox policy dropped it (see `edge_agent.mqtt.outbox`).
        """
        if out.retain:
            raise ValueError(f"the outbox keeps no retain flag; {out.topic} cannot be stored")
        item = self.spool.submit(out.topic, out.payload, out.qos, severity, key)
        self._wake.set()
        return item

    def publish(self, out: Outbound, *, keep: bool = False) -> bool:
        """Send `out` if connected (returns whether it was); `keep`: also re-send the last one
        on this topic on every connect."""
        with self._lock:
            if keep:
                self._kept[out.topic] = out
            connected = self._connected
        if connected:
            return self._emit(out.topic, out.payload, out.qos, out.retain) is not None
        return connected

    def wake(self) -> None:
        """Look at the outbox again now (after `finish` held its rows back)."""
        self._wake.set()

    def _emit(
        self, topic: str, payload: bytes, qos: int, retain: bool, key: str | None = None
    ) -> mqtt.MQTTMessageInfo | None:
        """Hand one message to paho through `finish` (None: `finish` held it back)."""
        with self._send_lock:
            if self._finish is not None:
                finished = self._finish(topic, payload, key)
                if finished is None:
                    return None
                payload = finished
            return self._client.publish(topic, payload, qos=qos, retain=retain)

    def _set_will(self) -> None:
        assert self._session is not None
        will = self._session.will()
        self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)

    def supervise(self) -> None:
        """Restart paho's network thread if it died (it must never; this is the last guard)."""
        if self._closed or self._stop.is_set() or self._session is None:
            return
        if self._client.loop_start() == MQTTErrorCode.MQTT_ERR_SUCCESS:  # no thread was running
            self.counters.network_restarts += 1
            self.last_error = "the MQTT network thread had stopped; restarted it"
            logger.error("%s (%d restarts)", self.last_error, self.counters.network_restarts)

    def close(self, flush_timeout_s: float = 5.0) -> None:
        """Wait (at most `flush_timeout_s`) for the outbox to drain, publish the session's
        goodbye, disconnect. Undelivered messages stay in the outbox for the next start; the
        outbox stays open.
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
        if self._connected and self._session is not None:
            goodbye = self._session.goodbye()
            info = self._emit(goodbye.topic, goodbye.payload, goodbye.qos, goodbye.retain)
            try:
                if info is not None:
                    info.wait_for_publish(timeout=max(0.5, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:  # connection lost meanwhile
                logger.warning("goodbye not delivered: %s", exc)
        self._stop.set()
        self._wake.set()
        if self._sender.is_alive():
            self._sender.join(timeout=2.0)
        self.spool.close()
        self._client.disconnect()
        self._client.loop_stop()
        with self._lock:
            self._connected = False
        logger.info("MQTT link closed; %s", self.counters)

    # ---- paho callbacks (network thread) --------------------------------------------------

    def _on_pre_connect(self, client, userdata) -> None:
        try:
            self._set_will()
        except Exception:  # keep the previous will rather than kill the network thread
            self.counters.callback_errors += 1
            logger.exception("the session's last will could not be renewed")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.last_error = f"broker refused the connection: {reason_code}"
            logger.error(
                "%s:%d refused the connection (%s); check mqtt.username/password and the "
                "broker's ACL", self.cfg.host, self.cfg.port, reason_code,
            )  # fmt: skip
            return
        assert self._session is not None  # connecting starts in start()
        dropped = client.drop_out_messages() if hasattr(client, "drop_out_messages") else []
        with self._send_lock:  # nothing else goes out before the birth
            with self._lock:
                self._connected = True
                self._generation += 1
                kept = list(self._kept.values())
            self._connected_at = time.monotonic()
            self.counters.connects += 1
            for out in self._session.birth():
                self._emit(out.topic, out.payload, out.qos, out.retain)
            for topic in self._session.subscriptions:
                if self.cfg.protocol == "5":
                    options = SubscribeOptions(qos=1, retainAsPublished=True)
                    client.subscribe(topic, options=options)
                else:
                    client.subscribe(topic, qos=1)
            for out in kept:
                self._emit(out.topic, out.payload, out.qos, out.retain)
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
            f"uses client id {self.client_id!r}: give each agent its own mqtt.device or "
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
            try:
                topic = message.topic
            except UnicodeDecodeError:  # a conforming broker never delivers this
                logger.warning("ignoring a message whose topic is not UTF-8")
                return
            if self._session is not None:
                self._session.on_message(topic, message.payload, bool(message.retain))
        except Exception:  # never let hostile input (or a bug) reach paho's network thread
            self.counters.callback_errors += 1
            logger.exception("ignored an inbound message that broke the handler")

    # ---- the outbox sender (its own thread) -----------------------------------------------

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
                info = self._emit(row.topic, row.payload, row.qos, False, key=row.event_id)
                if info is None:  # the session holds stored messages back for now
                    return
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:  # connection dropped: replay later
                    return
                self._inflight[row.seq] = info
                self._last_sent_seq = row.seq
                self.counters.events_sent += 1
        self._send_from_memory()

    def _send_from_memory(self) -> None:
        """While storage fails, publish the messages held in memory directly."""
        if self.spool.problem() is None:
            return  # the writer commits them within milliseconds; they go out from the outbox
        waiting = [p for p in self.spool.in_memory() if p.event_id not in self._inflight_memory]
        for item in waiting[: max(self._room(), 0)]:
            info = self._emit(item.topic, item.payload, item.qos, False, key=item.event_id)
            if info is None or info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            self._inflight_memory[item.event_id] = (item, info)
            self.counters.events_sent += 1
            self.counters.sent_from_memory += 1

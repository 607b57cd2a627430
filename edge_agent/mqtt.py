"""The agent's one MQTT connection (paho-mqtt 2.x): events, state, status, telemetry and commands.

Topics (all built by `topics()`), under `<prefix>/<site>/<asset>/<device>/`:

    status      retained `StatusMessage` online/offline; `offline` is also the last will (QoS 1)
    state       retained `StateMessage`, the current diagnosis (QoS 1), re-sent on every connect
    event       `FaultEvent` (QoS cfg.qos_events), durable through the `Outbox`
    telemetry   `Telemetry` (QoS 0), dropped while offline: not durable, by design
    cmd/<name>  inbound commands (subscribed as `cmd/#`, QoS 1); see `edge_agent.commands`
    cmd_result  `CommandResult` replies carrying the request id
    error       `CommandError` for refused commands

Delivery of events is *at least once*, and the outbox, not paho, is the queue:

- `publish_event()` commits the event to the outbox first, then wakes the sender thread; an
  event is never handed to paho while disconnected (paho would only hold it in memory).
- The sender publishes outbox rows in `seq` order with at most `max_inflight` unacknowledged at a
  time, and deletes a row once the broker's PUBACK has arrived (`on_publish`; the sender checks each
  message's `MQTTMessageInfo`, which cannot race with `publish()` returning).
- On every (re)connect, paho's own in-memory leftovers are dropped and the outbox is replayed from
  its oldest row, so rows sent but never acknowledged are sent again: subscribers de-duplicate by
  `event_id`. A new process on the same outbox (after kill -9) replays the same way.

Session choice: MQTT v3.1.1 with `clean_session=False`. v3.1.1 is spoken by every broker a plant
is likely to run (and by the embedded amqtt broker, which has no MQTT 5); the persistent session
keeps the `cmd/#` subscription and queues QoS 1 commands sent while the link was down. Event
durability never depends on the broker session: it comes from the outbox.

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

from edge_agent.commands import Command, CommandError, CommandResult, execute, parse_command
from edge_agent.config import MqttConfig
from edge_agent.events import (
    FaultEvent,
    StateMessage,
    StatusMessage,
    Telemetry,
    encode,
    utc_now,
)
from edge_agent.outbox import Outbox

logger = logging.getLogger(__name__)

COMMAND_QUEUE = 16  # commands waiting for the handler before new ones are refused as busy
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
        self._last_sent_seq = 0
        self._commands: queue.Queue[Command] = queue.Queue(maxsize=COMMAND_QUEUE)

        self._client = self._make_client(reconnect_min_delay_s, reconnect_max_delay_s)
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-outbox", daemon=True)
        self._worker = threading.Thread(
            target=self._command_loop, name="mqtt-commands", daemon=True
        )
        self._sender.start()
        self._worker.start()
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
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        client.enable_logger(PAHO_LOGGER)
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
        """Events stored in the outbox and not yet acknowledged by the broker."""
        return len(self.outbox)

    def publish_event(self, event: FaultEvent) -> int | None:
        """Commit `event` to the outbox, then send it when connected; returns its outbox seq.

        None means the outbox was full and its policy dropped this event (see `edge_agent.outbox`).
        """
        seq = self.outbox.put(
            self.topics.event, encode(event), self.cfg.qos_events, event.severity, event.event_id
        )
        self._wake.set()
        if self._closed:
            logger.warning("link closed: event %s stays in the outbox for the next start", seq)
        elif not self._connected:
            logger.info(
                "broker offline: %s event %s stored, %d events waiting",
                event.severity, event.event_id, len(self.outbox),
            )  # fmt: skip
        return seq

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
        """Refresh the retained online status (outbox size, last error); no-op while offline."""
        if self._connected:
            self._client.publish(self.topics.status, encode(self._status("online")), 1, True)

    def close(self, flush_timeout_s: float = 5.0) -> None:
        """Wait (at most `flush_timeout_s`) for the outbox to drain, publish the offline status,
        disconnect. Undelivered events stay in the outbox for the next start. The outbox stays open.
        """
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + flush_timeout_s
        while len(self.outbox) and self._connected and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.02)
        if len(self.outbox):
            logger.warning(
                "closing with %d undelivered events; they stay in %s for the next start",
                len(self.outbox), self.outbox.path,
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
            outbox_pending=len(self.outbox),
            last_error=last_error or self.last_error,
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
        self.counters.connects += 1
        client.publish(self.topics.status, encode(self._status("online")), qos=1, retain=True)
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
        if was_connected:
            self.counters.disconnects += 1
            if not self._closed:
                self.last_error = f"disconnected: {reason_code}"
                logger.warning(
                    "lost the broker %s:%d (%s); %d events waiting, retrying in the background",
                    self.cfg.host, self.cfg.port, reason_code, len(self.outbox),
                )  # fmt: skip

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._wake.set()  # the sender sees which rows are acknowledged through their message info

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
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
        if message.retain:
            command: Command | CommandError = CommandError(
                topic=topic,
                reason="retained commands are ignored (they would re-run on every reconnect); "
                "publish with retain=false, and clear this one with an empty retained message",
            )
        else:
            suffix = topic[len(self.topics.cmd_prefix) :]
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

    def _refuse(self, error: CommandError) -> None:
        self.counters.commands_refused += 1
        self._publish_reply(self.topics.error, error)

    def _publish_reply(self, topic: str, reply: CommandResult | CommandError) -> None:
        if self._connected:
            self._client.publish(topic, encode(reply), qos=1)
        else:
            logger.warning("offline: reply not sent to %s: %s", topic, reply.model_dump_json())

    # ---- worker threads -------------------------------------------------------------------

    def _command_loop(self) -> None:
        while not self._stop.is_set():
            try:
                command = self._commands.get(timeout=0.2)
            except queue.Empty:
                continue
            result = execute(self.on_command, command)
            if result.ok:
                self.counters.commands_ok += 1
            else:
                self.counters.commands_failed += 1
            self._publish_reply(self.topics.cmd_result, result)

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
                    self._last_sent_seq = 0
                self._ack_delivered()
                if connected and not self._stop.is_set():
                    self._send_next()
            except Exception as exc:  # keep the sender alive; the rows stay in the outbox
                self.last_error = f"outbox sender: {type(exc).__name__}: {exc}"
                logger.exception("outbox sender failed; retrying in 1 s")
                time.sleep(1.0)
            if self._stop.is_set():
                return

    def _ack_delivered(self) -> None:
        done = [seq for seq, info in self._inflight.items() if info.is_published()]
        if done:
            self.outbox.ack_many(done)
            for seq in done:
                del self._inflight[seq]
            self.counters.events_acked += len(done)

    def _send_next(self) -> None:
        room = self.max_inflight - len(self._inflight)
        if room <= 0:
            return
        for row in self.outbox.pending(limit=room, after_seq=self._last_sent_seq):
            info = self._client.publish(row.topic, row.payload, qos=row.qos)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:  # connection just dropped: replay later
                return
            self._inflight[row.seq] = info
            self._last_sent_seq = row.seq
            self.counters.events_sent += 1

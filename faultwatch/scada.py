"""The SCADA side: subscribe to every agent's events, state and status (`faultwatch scada ...`).

    faultwatch scada listen --host broker.plant --count 5 --timeout-s 60

`subscribe_events()` returns a connected `EventSubscriber` (also used by the tests and the demo):
it subscribes at QoS 1 to `<prefix>/+/+/+/event`, `.../state` and `.../status`, validates every
payload against the published models and de-duplicates events by `event_id` (delivery is at least
once). A fixed `client_id` with `clean_session=False` gives a persistent session: the broker queues
events for this subscriber while it is away.

`--sparkplug` (`SparkplugSubscriber`) listens to Sparkplug B edge nodes instead
(`spBv1.0/<group>/+/#`): it learns metric aliases from NBIRTH/DBIRTH, rebuilds each device's state
(key `group/device/node`) from its births and DDATA, takes events from the `Event/JSON` metric
(historical ones too, de-duplicated the same way), and reports NBIRTH/NDEATH as online/offline.
Like a Sparkplug host, it asks a node whose births it has not seen for a rebirth (NCMD
`Node Control/Rebirth`), at most every `REBIRTH_EVERY_S`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated, Literal

import paho.mqtt.client as mqtt
import typer
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from edge_agent.contract.events import FaultEvent, StateMessage, StatusMessage
from edge_agent.contract.wire import utc_now

logger = logging.getLogger(__name__)

MessageKind = Literal["event", "state", "status"]
MODELS = {"event": FaultEvent, "state": StateMessage, "status": StatusMessage}
SEVERITY_STYLE = {"info": "green", "warning": "yellow", "alarm": "bold red"}
REMEMBERED_EVENT_IDS = 100_000  # de-duplication memory of a long-running subscriber
REBIRTH_EVERY_S = 5.0  # Sparkplug: ask a node whose aliases are unknown for births this often


@dataclass(frozen=True)
class Received:
    kind: MessageKind
    topic: str
    device_key: str  # "site/asset/device"
    message: FaultEvent | StateMessage | StatusMessage


class EventSubscriber:
    """A paho client collecting agents' messages; iterate `get()` or call `wait_for_events()`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        prefix: str = "+",
        client_id: str | None = None,
        clean_session: bool = True,
        username: str | None = None,
        password: str | None = None,
        keepalive_s: int = 30,
    ) -> None:
        if clean_session is False and not client_id:
            raise ValueError("a persistent session (clean_session=False) needs a client_id")
        self.host, self.port, self.prefix = host, port, prefix
        self.subscriptions = [f"{prefix}/+/+/+/{kind}" for kind in MODELS]
        self.events: list[FaultEvent] = []  # unique, in arrival order
        self.states: dict[str, StateMessage] = {}
        self.statuses: dict[str, StatusMessage] = {}
        self.duplicates = 0
        self.invalid = 0
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._queue: queue.Queue[Received] = queue.Queue()
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or "",
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.reconnect_delay_set(0.1, 2)  # type: ignore[arg-type]
        self._client.max_inflight_messages_set(100)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._keepalive_s = keepalive_s

    def connect(self, timeout_s: float = 5.0) -> EventSubscriber:
        """Connect and wait until the broker confirmed the subscriptions."""
        try:
            self._client.connect(self.host, self.port, keepalive=self._keepalive_s)
        except OSError as exc:
            raise ConnectionError(
                f"cannot connect to the MQTT broker at {self.host}:{self.port} ({exc}); "
                "is it running? check --host/--port"
            ) from exc
        self._client.loop_start()
        if not self._subscribed.wait(timeout_s):
            self.close()
            raise ConnectionError(
                f"{self.host}:{self.port} did not confirm the subscriptions within {timeout_s} s"
            )
        return self

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            logger.error("broker %s:%d refused us: %s", self.host, self.port, reason_code)
            return
        client.subscribe([(topic, 1) for topic in self.subscriptions])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        failed = [str(code) for code in reason_codes if code.is_failure]
        if failed:
            logger.error("subscription refused: %s", failed)
        self._subscribed.set()

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        try:
            levels = msg.topic.split("/")
            kind = levels[-1]
            model = MODELS[kind]  # type: ignore[index]
            message = model.model_validate_json(msg.payload)
        except (UnicodeDecodeError, KeyError, IndexError, ValidationError) as exc:
            self.invalid += 1
            logger.warning("ignoring an invalid message on %r: %s", msg.topic, exc)
            return
        self._accept(kind, msg.topic, "/".join(levels[-4:-1]), message)  # type: ignore[arg-type]

    def _accept(self, kind: MessageKind, topic: str, device_key: str, message) -> None:
        """Record one decoded message (events de-duplicated by event_id) and queue it."""
        with self._lock:
            if isinstance(message, FaultEvent):
                if message.event_id in self._seen:
                    self.duplicates += 1
                    return
                self._seen[message.event_id] = None
                if len(self._seen) > REMEMBERED_EVENT_IDS:
                    self._seen.popitem(last=False)
                self.events.append(message)
            elif isinstance(message, StateMessage):
                self.states[device_key] = message
            else:
                self.statuses[device_key] = message
        self._queue.put(Received(kind, topic, device_key, message))

    def get(self, timeout_s: float | None = None) -> Received | None:
        """The next new event (duplicates skipped), state or status; None after `timeout_s`."""
        try:
            return self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def wait_for_events(self, count: int, timeout_s: float) -> list[FaultEvent]:
        """Wait until `count` unique events arrived (or `timeout_s` passed); returns them all."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.events) >= count:
                    break
            time.sleep(0.02)
        with self._lock:
            return list(self.events)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> EventSubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SparkplugSubscriber(EventSubscriber):
    """The same events, states and statuses, decoded from Sparkplug B edge nodes of `group`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883, group: str = "+", **kwargs):
        super().__init__(host, port, **kwargs)
        self.subscriptions = [f"spBv1.0/{group}/+/#"]
        self._aliases: dict[tuple[str, str, str | None, int], str] = {}
        self._started: dict[tuple[str, str], object] = {}
        self._asked: dict[tuple[str, str], float] = {}  # (group, node) -> rebirth asked at

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        from google.protobuf.message import DecodeError

        from edge_agent.mqtt.sparkplug_payload import decode, metric_value, parse_topic

        parsed = parse_topic(msg.topic)
        try:
            if parsed is None:
                raise ValueError("not a Sparkplug edge-node topic")
            payload = decode(msg.payload)
        except (ValueError, DecodeError) as exc:
            self.invalid += 1
            logger.warning("ignoring an invalid message on %r: %s", msg.topic, exc)
            return
        group, kind, node, device = parsed
        if kind == "NBIRTH":
            self._asked[(group, node)] = float("inf")  # born: aliases known from now on
        elif kind in ("NDATA", "DDATA", "DBIRTH"):
            self._ask_rebirth(group, node)
        values: dict[str, object] = {}
        for metric in payload.metrics:
            key = (group, node, device, metric.alias)
            if kind in ("NBIRTH", "DBIRTH") and metric.name:
                self._aliases[key] = metric.name
            name = metric.name or self._aliases.get(key)
            if name is not None:
                values[name] = metric_value(metric)
        try:
            self._handle(msg.topic, group, kind, node, device, values)
        except (ValueError, ValidationError) as exc:
            self.invalid += 1
            logger.warning("ignoring an unusable message on %r: %s", msg.topic, exc)

    def _ask_rebirth(self, group: str, node: str) -> None:
        from edge_agent.mqtt.sparkplug_payload import REBIRTH, DataType, add_metric, now_ms, pb

        asked = self._asked.get((group, node), -REBIRTH_EVERY_S)
        if time.monotonic() - asked < REBIRTH_EVERY_S:
            return
        self._asked[(group, node)] = time.monotonic()
        payload = pb.Payload(timestamp=now_ms())
        add_metric(payload, REBIRTH, DataType.BOOLEAN, True, now_ms())
        topic = f"spBv1.0/{group}/NCMD/{node}"
        logger.info("asking %s for a rebirth (its births were not seen)", node)
        self._client.publish(topic, payload.SerializeToString(), qos=0)

    def _handle(self, topic, group, kind, node, device, values: dict[str, object]) -> None:
        if kind in ("NBIRTH", "NDEATH"):
            if kind == "NBIRTH":
                self._started[(group, node)] = utc_now()
            status = StatusMessage(
                status="online" if kind == "NBIRTH" else "offline",
                site=group, asset="-", device=node,
                started_utc=self._started.get((group, node), utc_now()),
                outbox_pending=values.get("Status/Outbox Pending") or 0,
            )  # fmt: skip
            keys = [k for k in self.states if k.startswith(f"{group}/") and k.endswith(f"/{node}")]
            for key in keys or [f"{group}/-/{node}"]:
                self._accept("status", topic, key, status)
            return
        if device is None or kind not in ("DBIRTH", "DDATA"):
            return
        key = f"{group}/{device}/{node}"
        if isinstance(values.get("Event/JSON"), str):
            self._accept("event", topic, key, FaultEvent.model_validate_json(values["Event/JSON"]))
        if "State" in values and values["State"] is not None:
            previous = self.states.get(key)
            state = StateMessage(
                site=group, asset=device, device=node, state=values["State"],
                class_name=values.get("Class"), confidence=values.get("Confidence"),
                model_version=values.get("Model Version"), head_version=values.get("Head Version"),
            )  # fmt: skip
            if previous is None or (previous.state, previous.class_name) != (
                state.state,
                state.class_name,
            ):
                self._accept("state", topic, key, state)
        if kind == "DBIRTH" and key not in self.statuses:
            status = StatusMessage(
                status="online", site=group, asset=device, device=node, started_utc=utc_now()
            )
            self._accept("status", topic, key, status)


def subscribe_sparkplug(host: str = "127.0.0.1", port: int = 1883, **kwargs) -> EventSubscriber:
    """A connected `SparkplugSubscriber` (see its arguments); close it when done."""
    return SparkplugSubscriber(host, port, **kwargs).connect()


def subscribe_events(host: str = "127.0.0.1", port: int = 1883, **kwargs) -> EventSubscriber:
    """A connected, subscribed `EventSubscriber` (see its arguments); close it when done."""
    return EventSubscriber(host, port, **kwargs).connect()


# ---- CLI ----------------------------------------------------------------------------------

app = typer.Typer(
    help="SCADA-side tools: watch the fault events published by faultwatch agents.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _main() -> None:
    """SCADA-side tools for faultwatch agents."""


def _event_line(event: FaultEvent, device_key: str) -> Text:
    confidence = "-" if event.confidence is None else f"{event.confidence:.2f}"
    return Text.assemble(
        (event.time_utc.strftime("%Y-%m-%dT%H:%M:%SZ"), "dim"),
        f"  {device_key:<28} ",
        (f"{event.severity:<7}", SEVERITY_STYLE[event.severity]),
        f" {event.kind:<12} state={event.state:<14} class={event.class_name or '-':<14} "
        f"confidence={confidence}  {event.message}",
    )


def _summary_table(subscriber: EventSubscriber) -> Table:
    table = Table(title="devices")
    for column in ("site/asset/device", "status", "state", "class", "confidence"):
        table.add_column(column)
    for key in sorted(set(subscriber.states) | set(subscriber.statuses)):
        state, status = subscriber.states.get(key), subscriber.statuses.get(key)
        confidence = state.confidence if state else None
        table.add_row(
            key,
            status.status if status else "?",
            state.state if state else "?",
            (state.class_name or "-") if state else "?",
            "-" if confidence is None else f"{confidence:.2f}",
        )
    return table


@app.command()
def listen(
    host: Annotated[str, typer.Option(help="MQTT broker host.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="MQTT broker port.")] = 1883,
    prefix: Annotated[str, typer.Option(help="First topic level of the agents ('+': any).")] = "+",
    count: Annotated[
        int | None, typer.Option(min=1, help="Exit after this many unique events.")
    ] = None,
    timeout_s: Annotated[
        float | None, typer.Option(min=0.1, help="Give up after this many seconds.")
    ] = None,
    client_id: Annotated[
        str | None,
        typer.Option(help="Fixed id: a persistent session that queues events while away."),
    ] = None,
    json_lines: Annotated[
        bool, typer.Option("--json", help="Print each unique event as one JSON line.")
    ] = False,
    sparkplug: Annotated[
        bool, typer.Option("--sparkplug", help="Listen to Sparkplug B edge nodes (spBv1.0/...).")
    ] = False,
    group: Annotated[str, typer.Option(help="Sparkplug group ('+': any).")] = "+",
) -> None:
    """Print fault events (de-duplicated by event_id), state and status changes as they arrive."""
    console = Console(highlight=False, soft_wrap=True)
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        session = dict(client_id=client_id, clean_session=client_id is None)
        if sparkplug:
            subscriber = subscribe_sparkplug(host, port, group=group, **session)
        else:
            subscriber = subscribe_events(host, port, prefix=prefix, **session)
    except ConnectionError as exc:
        errors.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None
    if not json_lines:
        console.print(
            f"listening on {host}:{port} to {', '.join(subscriber.subscriptions)}", markup=False
        )
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    timed_out = False
    shown = 0  # unique events printed (the subscriber may already hold more)
    try:
        while count is None or shown < count:
            wait = 0.5 if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                timed_out = True
                break
            received = subscriber.get(min(wait, 0.5))
            if received is None:
                continue
            message = received.message
            shown += isinstance(message, FaultEvent)
            if json_lines:
                if isinstance(message, FaultEvent):
                    console.print(message.model_dump_json(), markup=False)
            elif isinstance(message, FaultEvent):
                console.print(_event_line(message, received.device_key))
            elif isinstance(message, StateMessage):
                console.print(f"state   {received.device_key}: {message.state}", markup=False)
            else:
                console.print(f"status  {received.device_key}: {message.status}", markup=False)
    except KeyboardInterrupt:
        pass
    finally:
        subscriber.close()
    if not json_lines:
        console.print(_summary_table(subscriber))
        console.print(
            f"{shown} events ({subscriber.duplicates} duplicates ignored, "
            f"{subscriber.invalid} invalid messages)",
            markup=False,
        )
    if timed_out and count is not None:
        errors.print(
            f"error: timed out after {timeout_s} s with {shown} of {count} events",
            markup=False,
        )
        raise typer.Exit(1)

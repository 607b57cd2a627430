"""The JSON v1 dialect: payload models as UTF-8 JSON on plain topics, one subtree per asset.

Topics (built by `topics()`), under `<prefix>/<site>/<asset>/<device>/`; routes, QoS and retain
flags come from the registry `edge_agent.mqtt.messages.MESSAGES`:

    status      retained `StatusMessage` online/offline; `offline` is also the last will (QoS 1)
    state       retained `StateMessage`, the current diagnosis (QoS 1), re-sent on every connect
    event       `FaultEvent` (QoS mqtt.qos_events), durable through the outbox
    telemetry   `Telemetry` (QoS 0), dropped while offline: not durable, by design
    cmd/<name>  inbound commands (subscribed as `cmd/#`, QoS 1); see `edge_agent.contract.commands`
    cmd_result  `CommandResult` replies carrying the request id
    error       `CommandError` for refused commands

A gateway may serve several channels, each its own asset with its own subtree over the one
connection: an outbound message goes to the subtree of its payload's `asset`, and commands are
taken from every subtree's `cmd/#`. Status lives on `mqtt.asset`'s subtree only (MQTT has one last
will per connection): a channel is online while its gateway is.

Inbound commands are handled on paho's thread and never block it: a command is parsed and
validated, rate-limited per command name (`mqtt.commands_per_minute`, bursts of `RATE_BURST`),
refused when retained, then handed to `submit(command, asset)`, which queues it for the agent
(returns None) or refuses it (returns the reason, published at once on that asset's `error`).
The agent answers later through `reply()`. Replies are not durable: while offline they are logged.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from edge_agent.config import MqttConfig
from edge_agent.contract.commands import (
    COMMANDS,
    Command,
    CommandError,
    CommandResult,
    parse_command,
)
from edge_agent.contract.events import FaultEvent, StatusMessage, encode, utc_now
from edge_agent.mqtt.messages import route_of
from edge_agent.mqtt.spool import Pending
from edge_agent.mqtt.transport import MqttTransport, Outbound

logger = logging.getLogger(__name__)

RATE_BURST = 10  # commands of one name accepted at once before the per-minute rate applies
RATE_REPLY_S = 5.0  # at most one "rate limited" reply per command name this often
ASSET_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")  # as mqtt.asset: one topic level, no wildcards

Submit = Callable[[Command, str], str | None]  # the agent: None (queued) or a refusal


def check_assets(assets: Sequence[str]) -> None:
    """ValueError unless every asset is one topic level (as `mqtt.asset`)."""
    bad = [a for a in assets if not isinstance(a, str) or not ASSET_PATTERN.fullmatch(a)]
    if bad:
        raise ValueError(
            f"assets must be single topic levels of letters, digits, '_', '.', '-'; got {bad}"
        )


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


def topics(cfg: MqttConfig, asset: str | None = None) -> Topics:
    """Every topic of `asset`'s subtree `<prefix>/<site>/<asset>/<device>/` (default mqtt.asset)."""
    base = f"{cfg.topic_prefix}/{cfg.site}/{asset or cfg.asset}/{cfg.device}/"
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


class RateLimiter:
    """A token bucket per key: `burst` at once, then `per_minute`."""

    def __init__(self, per_minute: int, burst: int = RATE_BURST) -> None:
        self.rate_s, self.burst = per_minute / 60.0, float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last time)
        self._refused: dict[str, tuple[int, float]] = {}  # key -> (refused, last notice time)

    def allow(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate_s)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        return allowed

    def notice(self, key: str, now: float | None = None) -> int | None:
        """Count one refusal of `key`; the refusals since the last notice when one is due (at
        most every RATE_REPLY_S), else None: a flood is answered now and then, not echoed."""
        now = time.monotonic() if now is None else now
        refused, told_at = self._refused.get(key, (0, -RATE_REPLY_S))
        if now - told_at < RATE_REPLY_S:
            self._refused[key] = (refused + 1, told_at)
            return None
        self._refused[key] = (0, now)
        return refused + 1


class JsonV1:
    """The JSON v1 dialect over `transport`, serving `mqtt.asset` and the extra `assets`."""

    def __init__(
        self,
        cfg: MqttConfig,
        transport: MqttTransport,
        submit: Submit,
        assets: Sequence[str] = (),
    ) -> None:
        check_assets(assets)
        self.cfg = cfg
        self.transport = transport
        self.submit = submit
        self.topics = {asset: topics(cfg, asset) for asset in (cfg.asset, *assets)}
        self.started_utc = utc_now()
        self._limiter = RateLimiter(cfg.commands_per_minute)

    # ---- the transport's session ----------------------------------------------------------

    @property
    def subscriptions(self) -> list[str]:
        return [t.cmd_subscription for t in self.topics.values()]

    def will(self) -> Outbound:
        return self.status("offline", last_error="connection lost (last will)")

    def birth(self) -> list[Outbound]:
        return [self.status("online")]

    def goodbye(self) -> Outbound:
        return self.status("offline")

    def status(
        self, status: Literal["online", "offline"], last_error: str | None = None
    ) -> Outbound:
        """The gateway's status on `mqtt.asset`'s subtree (outbox size, errors)."""
        message = StatusMessage(
            status=status,
            site=self.cfg.site,
            asset=self.cfg.asset,
            device=self.cfg.device,
            started_utc=self.started_utc,
            outbox_pending=self.transport.pending,
            last_error=last_error or self.transport.last_error,
            storage_error=self.transport.storage_problem(),
        )
        return self.outbound(message)

    # ---- outbound -------------------------------------------------------------------------

    def subtree(self, asset: str) -> Topics:
        """The topics of `asset`; a ValueError when this link does not serve it (a caller's bug)."""
        try:
            return self.topics[asset]
        except KeyError:
            raise ValueError(
                f"asset {asset!r} is not served by this MQTT link (served: "
                f"{', '.join(self.topics)}); pass it in MqttLink(assets=...)"
            ) from None

    def outbound(self, message: BaseModel, asset: str | None = None) -> Outbound:
        """`message` as its registry row says, on the subtree of `asset` (default: its own)."""
        route = route_of(message)
        if asset is None:  # every payload but a reply names its asset
            asset = message.asset  # type: ignore[attr-defined]
        subtree = self.subtree(asset)
        return Outbound(
            subtree.base + route.topic, encode(message), route.qos_for(self.cfg), route.retain
        )

    def send(self, message: BaseModel) -> Pending | bool:
        """Publish one of the agent's messages on its asset's subtree, as its registry row says:
        durable ones through the outbox (returns the `Pending`), the others now or never (returns
        whether sent); a retained one is also re-sent on every connect.
        """
        route = route_of(message)
        out = self.outbound(message)
        if route.durable:  # the outbox drops by severity and de-duplicates by id
            event: FaultEvent = message  # type: ignore[assignment]
            return self.transport.store(out, event.severity, event.event_id)
        return self.transport.publish(out, keep=route.retain)

    def reply(self, reply: CommandResult | CommandError, asset: str) -> None:
        """Answer a command on `asset`'s `cmd_result` or `error` topic; logged while offline."""
        self.subtree(asset)
        try:
            out = self.outbound(reply, asset)
        except ValueError as exc:  # a field that cannot be UTF-8 (parse_command prevents this)
            logger.error(
                "a reply on %s could not be encoded (%s); sent without its text", asset, exc
            )
            out = self.outbound(_plain_reply(reply), asset)
        if not self.transport.publish(out):
            logger.warning("offline: reply not sent to %s: %s", out.topic, out.payload.decode())

    # ---- inbound commands (paho's network thread) -----------------------------------------

    def on_message(self, topic: str, payload: bytes, retain: bool) -> None:
        asset = next((a for a, t in self.topics.items() if topic.startswith(t.cmd_prefix)), None)
        if asset is None:
            logger.debug("ignoring message on %s", topic)
            return
        if not payload:  # how a retained command is cleared: nothing to answer
            logger.debug("ignoring an empty message on %s", topic)
            return
        suffix = topic[len(self.topics[asset].cmd_prefix) :]
        name = suffix if suffix in COMMANDS else "(unknown)"
        if not self._limiter.allow(name):
            self._rate_limited(topic, name, asset)
            return
        if retain:
            command: Command | CommandError = CommandError(
                topic=topic,
                reason="retained commands are ignored (they would re-run on every reconnect); "
                "publish with retain=false, and clear this one with an empty retained message",
            )
        else:
            command = parse_command(suffix, payload, self.cfg.max_command_bytes, topic=topic)
        if isinstance(command, CommandError):
            self._refuse(command, asset)
            return
        refusal = self._submit(command, asset)
        if refusal is not None:
            self._refuse(CommandError(topic=topic, id=command.id, reason=refusal), asset)

    def _submit(self, command: Command, asset: str) -> str | None:
        try:
            return self.submit(command, asset)
        except Exception as exc:  # the agent's bug: answer, and keep taking commands
            logger.exception("submitting command %s (id %s) failed", command.name, command.id)
            return f"the agent could not take the command: {type(exc).__name__}: {exc}"

    def _rate_limited(self, topic: str, name: str, asset: str) -> None:
        """Count the refusal; answer at most once per `RATE_REPLY_S` per command name."""
        self.transport.counters.commands_rate_limited += 1
        refused = self._limiter.notice(name)
        if refused is None:
            return
        logger.warning("rate limit: refused %d %s commands", refused, name)
        self._refuse(
            CommandError(
                topic=topic,
                reason=f"rate limited: {refused} {name} command(s) refused since the last notice "
                f"(at most {RATE_BURST} at once, then mqtt.commands_per_minute="
                f"{self.cfg.commands_per_minute} per command name); retry later",
            ),
            asset,
        )

    def _refuse(self, error: CommandError, asset: str) -> None:
        self.transport.counters.commands_refused += 1
        self.reply(error, asset)


def _plain_reply(reply: CommandResult | CommandError) -> CommandResult | CommandError:
    """`reply` without its free text and data (what remains always encodes)."""
    if isinstance(reply, CommandResult):
        return CommandResult(id="?", ok=reply.ok, message="(reply text could not be encoded)")
    return CommandError(topic="?", reason="(the refusal could not be encoded)")

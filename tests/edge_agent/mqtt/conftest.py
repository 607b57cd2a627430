"""`make_link`: an MqttLink against the test broker, answering commands through a FakeAgent."""

from __future__ import annotations

import pytest

from edge_agent.config import MqttConfig
from edge_agent.mqtt.link import MqttLink
from edge_agent.mqtt.outbox import Outbox
from tests.edge_agent.mqtt.fake_agent import FakeAgent


@pytest.fixture
def make_link():
    """`make_link(cfg, outbox, agent=None, **kw)` -> MqttLink with fast reconnects whose commands
    go to `agent` (default: a FakeAgent answering pong); both are closed after the test."""
    made: list[tuple[MqttLink, FakeAgent]] = []

    def make(cfg: MqttConfig, outbox: Outbox, agent: FakeAgent | None = None, **kwargs) -> MqttLink:
        agent = agent or FakeAgent()
        kwargs.setdefault("reconnect_min_delay_s", 0.1)
        kwargs.setdefault("reconnect_max_delay_s", 0.5)
        link = MqttLink(cfg, outbox, agent.submit, **kwargs)
        agent.link = link
        made.append((link, agent))
        return link

    yield make
    for link, agent in made:
        link.close(flush_timeout_s=0)
        agent.close()

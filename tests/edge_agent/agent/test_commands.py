"""The command table: one handler per command, per-channel routing, issuers of state changes."""

from __future__ import annotations

from edge_agent.agent.agent import Agent
from edge_agent.agent.commands import HANDLERS, CommandQueue, handle
from edge_agent.config import load_config
from edge_agent.contract.commands import COMMANDS, parse_command
from tests.edge_agent.agent.test_agent import NO_DRIFT
from tests.edge_agent.bundle_fixture import FAULT_SCHEDULE, simulator_source, write_config


def command(name: str, body: bytes):
    parsed = parse_command(name, body, 4096)
    assert not hasattr(parsed, "reason"), parsed
    return parsed


def test_every_command_has_exactly_one_handler():
    assert set(HANDLERS) == set(COMMANDS)


def test_state_changes_need_an_allowed_issuer_when_issuers_are_configured(tmp_path, agent_bundle):
    mqtt = {"host": "127.0.0.1", "port": 1, "site": "s1", "asset": "a1", "device": "dev-test",
            "command_issuers": ["scada-main"]}  # fmt: skip
    path = write_config(tmp_path, agent_bundle, 1, source=simulator_source(FAULT_SCHEDULE),
                        decisions=NO_DRIFT, mqtt=mqtt)  # fmt: skip
    with Agent(load_config(path)) as agent:
        anonymous = handle(agent, command("commission", b'{"id": "1"}'))
        assert not anonymous.ok
        assert "commission changes this device: no issuer is not one of" in anonymous.message
        stranger = handle(agent, command("commission", b'{"id": "2", "issuer": "pi-b"}'))
        assert not stranger.ok and "issuer 'pi-b'" in stranger.message
        allowed = handle(agent, command("commission", b'{"id": "3", "issuer": "scada-main"}'))
        assert allowed.ok and "learning this device's normal" in allowed.message
        assert handle(agent, command("ping", b'{"id": "4"}')).ok  # reading is free


def test_the_queue_refuses_while_stopped_or_full():
    queue = CommandQueue()
    ping = command("ping", b'{"id": "1"}')
    assert "starting or stopping" in (queue.submit(ping, "a1") or "")
    queue.accepting = True
    answers = [queue.submit(ping, "a1") for _ in range(40)]
    assert answers[:32] == [None] * 32 and "waiting already" in (answers[32] or "")
    replies = []
    queue.refuse_all(lambda reply, asset: replies.append((reply.ok, asset)))
    assert replies == [(False, "a1")] * 32 and not queue.accepting

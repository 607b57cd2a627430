"""A stand-in for the agent on the command path of an `MqttLink`: queues what `submit` is given
and answers it on its own thread, through `link.publish_reply`, as the agent does."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from edge_agent.contract.commands import Command, CommandResult, execute


def pong(command: Command) -> CommandResult:
    return CommandResult(id=command.id, ok=True, message=f"{command.name}: pong")


class FakeAgent:
    """`submit` for an `MqttLink`; set `.link` before commands arrive, `close()` after the test.

    `received` lists (command, asset) in arrival order; `refuse` (a reason) refuses everything.
    """

    def __init__(self, handler: Callable[[Command], CommandResult] = pong) -> None:
        self.handler = handler
        self.link = None
        self.refuse: str | None = None
        self.received: list[tuple[Command, str]] = []
        self._queue: queue.Queue[tuple[Command, str] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._answer_loop, daemon=True)
        self._thread.start()

    def submit(self, command: Command, asset: str) -> str | None:
        self.received.append((command, asset))
        if self.refuse is not None:
            return self.refuse
        self._queue.put((command, asset))
        return None

    def _answer_loop(self) -> None:
        while (item := self._queue.get()) is not None:
            command, asset = item
            while self.link is None:  # a command that arrived before the test set .link
                time.sleep(0.01)
            self.link.publish_reply(execute(self.handler, command), asset)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=2)

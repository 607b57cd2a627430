"""Events on their way to the outbox: durable writes off the window path, and a fallback in memory.

The agent thread hands an event to `EventSpool.submit()`, which queues it in memory and waits at
most `commit_wait_s` for the writer thread to commit it to the `Outbox`. Normally that takes a
few milliseconds, so an event is on disk before `submit()` returns, as before. When the disk is
full, read-only, failing or stalled (an fsync blocked for 40 s), the window path does not wait:

- the event stays in memory (bounded by `max_memory_events`, shed by the outbox's own severity
  policy), and `problem()` says what is wrong, so the agent raises a `storage` fault;
- the MQTT sender publishes memory events directly while the problem lasts (they may overtake
  older stored events that cannot be read meanwhile; subscribers order by `time_utc`);
- the writer retries every `retry_s`; once a write succeeds, the rest follow and `problem()`
  clears. An event delivered from memory is never written; one written meanwhile is acked on disk.

Memory events are lost on kill -9 or power loss, which is why the agent logs an event as
committed only after `submit()` says so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from edge_agent.contract.events import SEVERITY_RANK
from edge_agent.mqtt.outbox import Outbox, OutboxStorageError

logger = logging.getLogger(__name__)

STALL_S = 2.0  # a write that has not finished by then counts as a storage fault


@dataclass(eq=False)
class Pending:
    """One event not yet on disk."""

    topic: str
    payload: bytes
    qos: int
    severity: str
    event_id: str
    committed: threading.Event = field(default_factory=threading.Event)
    seq: int | None = None  # outbox seq once committed
    writing: bool = False
    delivered: bool = False


class EventSpool:
    """The outbox plus the events still in memory, and the thread that writes them."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        commit_wait_s: float = 0.5,
        retry_s: float = 5.0,
        max_memory_events: int = 1000,
    ) -> None:
        if commit_wait_s < 0 or retry_s <= 0 or max_memory_events < 1:
            raise ValueError(
                f"EventSpool needs commit_wait_s >= 0, retry_s > 0, max_memory_events >= 1; got "
                f"{commit_wait_s=}, {retry_s=}, {max_memory_events=}"
            )
        self.outbox = outbox
        self.commit_wait_s, self.retry_s = commit_wait_s, retry_s
        self.max_memory_events = max_memory_events
        self.dropped_in_memory = 0
        self._memory: deque[Pending] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._error: str | None = None
        self._writing_since: float | None = None
        self._writer = threading.Thread(target=self._write_loop, name="outbox-writer", daemon=True)
        self._writer.start()

    # ---- agent thread -----------------------------------------------------------------------

    def submit(self, topic: str, payload: bytes, qos: int, severity: str, event_id: str) -> Pending:
        """Queue one event; returns once it is committed or `commit_wait_s` has passed.

        `pending.committed.is_set()` says which; `pending.seq` is None when the outbox policy
        dropped it (or it is still in memory).
        """
        if severity not in SEVERITY_RANK:
            raise ValueError(f"unknown severity {severity!r}; valid: {', '.join(SEVERITY_RANK)}")
        item = Pending(topic, bytes(payload), qos, severity, event_id)
        with self._lock:
            self._memory.append(item)
            self._shed()
        self._wake.set()
        if self._error is None:  # a known-bad disk is not waited for
            item.committed.wait(self.commit_wait_s)
        return item

    def problem(self) -> str | None:
        """What is wrong with the storage now, or None."""
        since = self._writing_since
        if since is not None and time.monotonic() - since > STALL_S:
            return f"outbox {self.outbox.path}: a write has not finished in {STALL_S:.0f} s"
        return self._error

    def __len__(self) -> int:
        """Events waiting for delivery, on disk and in memory."""
        with self._lock:
            return len(self.outbox) + len(self._memory)

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the writer after one last try; events still in memory are reported, not kept."""
        self._stop.set()
        self._wake.set()
        self._writer.join(timeout_s)
        with self._lock:
            left = [p for p in self._memory if not p.delivered]
        if left:
            logger.error(
                "%d events could not be written to %s and are lost at this stop: %s",
                len(left), self.outbox.path, ", ".join(p.event_id for p in left[:10]),
            )  # fmt: skip

    # ---- MQTT sender thread -----------------------------------------------------------------

    def in_memory(self) -> list[Pending]:
        """Events not on disk, oldest first, to be published directly while storage fails."""
        with self._lock:
            return [p for p in self._memory if not p.delivered]

    def delivered(self, item: Pending) -> None:
        """The broker acknowledged a memory event: forget it (ack its row if already written)."""
        with self._lock:
            item.delivered = True
            if item in self._memory and not item.writing:
                self._memory.remove(item)
                return
            seq = item.seq
        if seq is not None:
            self._ack_written(item)

    # ---- writer thread ----------------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            self._wake.wait(timeout=self.retry_s)
            self._wake.clear()
            while self._write_next():
                pass
            if self._stop.is_set():
                return

    def _write_next(self) -> bool:
        """Commit the oldest memory event; False when none is left or the disk failed."""
        with self._lock:
            if not self._memory:
                return False
            item = self._memory[0]
            if item.delivered:
                self._memory.popleft()
                return True
            item.writing = True
        self._writing_since = time.monotonic()
        try:
            seq = self.outbox.put(item.topic, item.payload, item.qos, item.severity, item.event_id)
        except OutboxStorageError as exc:
            with self._lock:
                item.writing = False
            self._set_error(str(exc))
            return False
        finally:
            self._writing_since = None
        with self._lock:
            item.writing, item.seq = False, seq
            if self._memory and self._memory[0] is item:
                self._memory.popleft()
        item.committed.set()
        self._set_error(None)
        if item.delivered and seq is not None:
            self._ack_written(item)
        return True

    def _ack_written(self, item: Pending) -> None:
        try:
            self.outbox.ack_event(item.event_id)
        except OutboxStorageError as exc:  # sent again later: subscribers de-duplicate
            logger.debug("could not ack %s on disk: %s", item.event_id, exc)

    def _set_error(self, error: str | None) -> None:
        if error == self._error:
            return
        if error is not None:
            logger.error("%s; events are kept in memory and sent directly", error)
        else:
            logger.warning("outbox storage works again; %d events stored", len(self.outbox))
        self._error = error

    def _shed(self) -> None:
        """Keep at most `max_memory_events` in memory, by the outbox's policy (lock held)."""
        while len(self._memory) > self.max_memory_events:
            candidates = [p for p in self._memory if not p.writing]
            if self.outbox.when_full == "drop_oldest_low_severity_first":
                victim = min(candidates, key=lambda p: SEVERITY_RANK[p.severity])
            else:
                victim = candidates[0]
            self._memory.remove(victim)
            self.dropped_in_memory += 1
            logger.warning(
                "storage failing and %d events held in memory: dropped %s event %s",
                self.max_memory_events, victim.severity, victim.event_id,
            )  # fmt: skip

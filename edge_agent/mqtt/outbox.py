"""Durable store-and-forward queue for fault events: nothing is published before it is on disk.

One SQLite file (stdlib `sqlite3`) in WAL mode with `synchronous=FULL`: every `put()` is its own
committed transaction (one fsync per event; events are rare, durability wins over speed), so an
event survives a kill -9 or a power cut the moment `put()` returns. A row leaves the outbox only
when the broker has acknowledged it (`ack()`), which makes delivery *at least once*: after a crash
or a reconnect, rows may be sent again, and subscribers de-duplicate by `event_id`.

Bounded by count and by bytes: when `max_events` rows or `max_bytes` of payload are stored,
`put()` makes room first, by policy (`when_full`):

- `drop_oldest_low_severity_first` (default): delete the oldest row of the lowest severity
  stored (info before warning before alarm). A new event less severe than everything stored is
  itself the one dropped (`put()` returns None), so an `info` never pushes out an `alarm`.
- `drop_oldest`: delete the oldest row, whatever its severity.

Every drop is counted (`dropped_total`) and logged as a warning with the event id and severity.
A full or failing disk raises `OutboxStorageError` (the transaction is rolled back, the outbox stays
usable and works again once space returns); `edge_agent.mqtt.spool` keeps events flowing meanwhile.
The file is created 0600: events name the plant's assets. Thread-safe: one connection shared
under a lock. One process per outbox file.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, NamedTuple

from edge_agent.config import OutboxConfig
from edge_agent.contract.events import SEVERITY_RANK

logger = logging.getLogger(__name__)

WhenFull = Literal["drop_oldest_low_severity_first", "drop_oldest"]
POLICIES: tuple[str, ...] = ("drop_oldest_low_severity_first", "drop_oldest")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    severity_rank INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_by_severity ON outbox (severity_rank, seq);
"""
_COLUMNS = "seq, event_id, topic, payload, qos, severity_rank, created"
_VICTIM_ORDER = {"drop_oldest_low_severity_first": "severity_rank, seq", "drop_oldest": "seq"}


class OutboxError(Exception):
    """The outbox file cannot be used; the message says why and what to do."""


class OutboxStorageError(OutboxError):
    """A write or read failed on the disk (full, read-only, I/O error); nothing was changed."""


class Row(NamedTuple):
    seq: int
    event_id: str
    topic: str
    payload: bytes
    qos: int
    severity_rank: int
    created: float  # unix time, seconds


class Outbox:
    """Undelivered events, in the order they were raised (`seq`)."""

    def __init__(
        self,
        path: Path | str,
        max_events: int = 100_000,
        when_full: WhenFull = "drop_oldest_low_severity_first",
        max_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        if max_events < 1:
            raise ValueError(f"Outbox needs max_events >= 1, got {max_events}")
        if max_bytes < 1:
            raise ValueError(f"Outbox needs max_bytes >= 1, got {max_bytes}")
        if when_full not in POLICIES:
            raise ValueError(
                f"unknown outbox.when_full {when_full!r}; valid: {', '.join(POLICIES)}"
            )
        self.path = Path(path)
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.when_full = when_full
        self.dropped_total = 0
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self._count = self._bytes = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._open()
        except OutboxStorageError as exc:  # a full disk must not stop the agent from starting
            logger.error("%s; starting without it, events wait in memory until it opens", exc)

    def _open(self) -> sqlite3.Connection:
        """Open (or create) the file; OutboxStorageError when the disk fails, OutboxError when the
        file is not a database."""
        db = None
        try:
            _create_private(self.path)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            self._count, self._bytes = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox"
            ).fetchone()
        except (sqlite3.OperationalError, OSError) as exc:  # full, read-only, I/O error
            if db is not None:
                db.close()
            raise OutboxStorageError(
                f"outbox {self.path}: cannot open it ({exc}); free space on that disk or check it"
            ) from exc
        except sqlite3.DatabaseError as exc:
            db.close()  # type: ignore[union-attr]
            raise OutboxError(
                f"outbox {self.path} is not a usable SQLite database ({exc}); move it aside to "
                "start with an empty outbox (its undelivered events would be lost)"
            ) from exc
        if self._count:
            logger.info(
                "outbox %s: %d undelivered events from a previous run", self.path, self._count
            )
        self._db = db
        return db

    def _connection(self) -> sqlite3.Connection:
        """The open connection, opening it now if the disk failed at start-up."""
        return self._db if self._db is not None else self._open()

    @classmethod
    def from_config(cls, cfg: OutboxConfig, state_dir: Path) -> Outbox:
        """The outbox of `[outbox]`; a relative `cfg.path` lives in `state_dir`."""
        return cls(state_dir / cfg.path, cfg.max_events, cfg.when_full, cfg.max_bytes)

    def put(
        self, topic: str, payload: bytes, qos: int, severity: str, event_id: str | None = None
    ) -> int | None:
        """Store one event and commit; returns its `seq`.

        Putting an `event_id` already stored returns the stored row's seq (no duplicate).
        Returns None only when the outbox is full and this event is the one the policy drops.
        """
        if severity not in SEVERITY_RANK:
            raise ValueError(f"unknown severity {severity!r}; valid: {', '.join(SEVERITY_RANK)}")
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {qos!r}")
        rank = SEVERITY_RANK[severity]
        event_id = event_id or uuid.uuid4().hex
        payload = bytes(payload)
        with self._lock:
            try:
                db = self._connection()
                db.execute("BEGIN IMMEDIATE")
                found = db.execute(
                    "SELECT seq FROM outbox WHERE event_id = ?", (event_id,)
                ).fetchone()
                if found:
                    self._db.execute("COMMIT")
                    return int(found[0])
                if not self._make_room(rank, len(payload)):
                    self._db.execute("COMMIT")
                    self._count_drop(event_id, severity, "it cannot displace any stored event")
                    return None
                cursor = self._db.execute(
                    "INSERT INTO outbox (event_id, topic, payload, qos, severity_rank, created) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (event_id, topic, payload, qos, rank, time.time()),
                )
                self._db.execute("COMMIT")
            except BaseException as exc:
                self._rollback()
                if isinstance(exc, sqlite3.Error):
                    raise self._storage_error("storing an event", exc) from exc
                raise
            self._count += 1
            self._bytes += len(payload)
            return int(cursor.lastrowid)  # type: ignore[arg-type]

    def _rollback(self) -> None:
        """Undo the open transaction (SQLite has already undone it after SQLITE_FULL) and
        re-read the counters, which `_make_room` may have changed."""
        if self._db is None:
            return
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._count, self._bytes = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox"
            ).fetchone()
        except sqlite3.Error as exc:  # the disk is failing: keep the last known counters
            logger.debug("outbox rollback: %s", exc)

    def _storage_error(self, doing: str, exc: sqlite3.Error) -> OutboxStorageError:
        return OutboxStorageError(
            f"outbox {self.path}: {doing} failed ({exc}); free space on that disk or check it"
        )

    def _make_room(self, new_rank: int, new_bytes: int) -> bool:
        """Delete rows (in the caller's transaction) until one more of `new_bytes` fits within
        both bounds; False: the new event is the one to drop."""
        if new_bytes > self.max_bytes:
            return False

        def full() -> bool:
            return self._count >= self.max_events or self._bytes + new_bytes > self.max_bytes

        if not full():
            return True
        if self.when_full == "drop_oldest_low_severity_first":
            (lowest,) = self._db.execute("SELECT MIN(severity_rank) FROM outbox").fetchone()
            if lowest is not None and new_rank < lowest:
                return False
        names = {rank: name for name, rank in SEVERITY_RANK.items()}
        candidates = self._db.execute(
            f"SELECT seq, event_id, severity_rank, LENGTH(payload) FROM outbox "
            f"ORDER BY {_VICTIM_ORDER[self.when_full]}"
        ).fetchall()  # in policy order; only the first few are ever used
        for seq, victim_id, victim_rank, size in candidates:
            if not full():
                break
            if self.when_full == "drop_oldest_low_severity_first" and victim_rank > new_rank:
                return False  # only more severe events are left: keep them, drop the new one
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            self._count -= 1
            self._bytes -= size
            self._count_drop(victim_id, names.get(victim_rank, str(victim_rank)), "to make room")
        return not full()

    def _count_drop(self, event_id: str, severity: str, why: str) -> None:
        self.dropped_total += 1
        logger.warning(
            "outbox full (%d events or %d bytes, policy %s): dropped %s event %s %s; %d dropped "
            "so far. Raise outbox.max_events / max_bytes or restore the broker connection.",
            self.max_events, self.max_bytes, self.when_full, severity, event_id, why,
            self.dropped_total,
        )  # fmt: skip

    def pending(self, limit: int = 100, after_seq: int = 0) -> list[Row]:
        """Up to `limit` stored rows with seq > `after_seq`, oldest first."""
        with self._lock:
            try:
                rows = (
                    self._connection()
                    .execute(
                        f"SELECT {_COLUMNS} FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                        (after_seq, limit),
                    )
                    .fetchall()
                )
            except sqlite3.Error as exc:
                raise self._storage_error("reading events", exc) from exc
        return [Row(*row) for row in rows]

    def ack(self, seq: int) -> bool:
        """Delete a delivered row; False if it was not stored (already acked or dropped)."""
        return self.ack_many([seq]) == 1

    def ack_many(self, seqs: Iterable[int]) -> int:
        """Delete several delivered rows in one transaction; returns how many were stored."""
        return self._delete("seq", [(int(s),) for s in seqs])

    def ack_event(self, event_id: str) -> bool:
        """Delete the row of a delivered `event_id`; False if it was not stored."""
        return self._delete("event_id", [(event_id,)]) == 1

    def _delete(self, column: str, params: list[tuple]) -> int:
        if not params:
            return 0
        with self._lock:
            sizes: list[int] = []
            try:
                self._connection().execute("BEGIN IMMEDIATE")
                for param in params:
                    sizes += self._db.execute(
                        f"DELETE FROM outbox WHERE {column} = ? RETURNING LENGTH(payload)", param
                    ).fetchall()
                self._db.execute("COMMIT")
            except BaseException as exc:
                self._rollback()
                if isinstance(exc, sqlite3.Error):
                    raise self._storage_error("deleting delivered events", exc) from exc
                raise
            self._count -= len(sizes)
            self._bytes -= sum(size for (size,) in sizes)
            return len(sizes)

    def __len__(self) -> int:
        return self._count

    @property
    def stored_bytes(self) -> int:
        """Payload bytes stored."""
        return self._bytes

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _create_private(path: Path) -> None:
    """Create `path` readable by its owner only (SQLite gives its -wal/-shm files the same mode)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)

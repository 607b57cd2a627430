"""Versioned, crash-safe storage of a device's head, with history and rollback.

Layout of the store folder:

    heads/v0001.npz   one file per version, never rewritten once referenced
    history.json      list of HistoryEntry (version, source, accuracies, sha256, parent, ...)
    current           {"version": n, "sha256": "..."}: a cross-check, rewritten after each change

Every write goes to a `.tmp-*` file in the same folder, is flushed and fsync'ed, replaces the
target with `os.replace`, and the folder is fsync'ed, so a power cut leaves either the old or
the new file. A change writes the head file first, then history.json (the commit point), then
`current`. Opening the store removes `.tmp-*` leftovers and takes as current the newest history
entry whose head file matches its sha256; a damaged head file, a garbage `current` or an
unreadable history.json is logged as a warning and skipped, never raised.

Rollback never deletes: it appends a new version holding a copy of the target head. Each entry
records its `parent` (the head it replaced); a rollback copy inherits its target's parent, so
`rollback()` twice walks two steps back along the lineage instead of toggling.
One process owns a store; there is no locking.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, TypeAdapter, ValidationError

from edge_agent.contract.durable import TMP_PREFIX, atomic_write
from edge_agent.contract.wire import StrictModel, utc_iso
from edge_agent.pipeline.head import Head

logger = logging.getLogger(__name__)

HEADS_DIR = "heads"
HISTORY = "history.json"
CURRENT = "current"
_HEAD_FILE = re.compile(r"^v(\d+)\.npz$")


class CommitMeta(StrictModel):
    """What the caller knows about a calibrated head (accuracies as fractions in [0, 1])."""

    accuracy_before: float | None = Field(None, ge=0, le=1)
    accuracy_after: float | None = Field(None, ge=0, le=1)
    n_samples: int = Field(0, ge=0, description="Labeled windows used for the calibration.")
    note: str = ""


class HistoryEntry(StrictModel):
    version: int = Field(ge=1)
    created_utc: str
    source: Literal["factory", "calibration", "rollback"]
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    n_samples: int = Field(0, ge=0)
    note: str = ""
    bundle_model_version: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    parent: int | None = Field(None, description="Version this head replaced in the lineage.")


class CurrentPointer(StrictModel):
    version: int = Field(ge=1)
    sha256: str


_HISTORY_ADAPTER = TypeAdapter(list[HistoryEntry])


class HeadStore:
    """A device's head versions in `folder` (created if missing). See the module docstring."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.heads_dir = self.folder / HEADS_DIR
        self.heads_dir.mkdir(parents=True, exist_ok=True)
        self._history: list[HistoryEntry] = []
        self._current: tuple[HistoryEntry, Head] | None = None
        self._load()

    # ---- reading -------------------------------------------------------------------------

    def current(self) -> tuple[int, Head]:
        """(version, head) in use. LookupError when the store holds no usable head yet."""
        if self._current is None:
            raise LookupError(
                f"{self.folder}: no usable head stored; call init_from_factory(head, "
                "bundle_version) first"
            )
        entry, head = self._current
        return entry.version, head

    def history(self) -> list[HistoryEntry]:
        """All versions, oldest first (including damaged ones; see `current` for the one used)."""
        return list(self._history)

    # ---- changing ------------------------------------------------------------------------

    def init_from_factory(self, head: Head, bundle_version: str) -> int:
        """Store the factory head when the store is empty or the bundle version changed.

        Otherwise keep the current (possibly calibrated) head. Returns the current version.
        """
        if self._current is not None:
            entry = self._current[0]
            if entry.bundle_model_version == bundle_version:
                return entry.version
            logger.info(
                "bundle changed from %s to %s: device head reset to the factory head",
                entry.bundle_model_version,
                bundle_version,
            )
        meta = CommitMeta(note=f"factory head of bundle {bundle_version}")
        return self._append(head, "factory", meta, bundle_version, parent=None)

    def commit(self, head: Head, meta: CommitMeta) -> int:
        """Store a calibrated head as the new current version; returns its version."""
        entry, current = self._current_or_raise()
        if (head.w1.shape, head.w2.shape) != (current.w1.shape, current.w2.shape):
            raise ValueError(
                f"head shapes w1 {head.w1.shape}, w2 {head.w2.shape} differ from the current "
                f"head's w1 {current.w1.shape}, w2 {current.w2.shape}; refit from the current head"
            )
        return self._append(
            head, "calibration", meta, entry.bundle_model_version, parent=entry.version
        )

    def rollback(self, version: int | None = None) -> int:
        """Make an earlier head current again (None: the one the current head replaced).

        Appends a new version holding a copy of the target and returns it; rolling back to the
        current version changes nothing. ValueError when the target is unknown, damaged, from
        another bundle version, or when there is nothing earlier.
        """
        entry, _ = self._current_or_raise()
        if version is None:
            if entry.parent is None:
                raise ValueError(
                    f"v{entry.version} is the factory head of bundle "
                    f"{entry.bundle_model_version}; there is no earlier head to roll back to"
                )
            version = entry.parent
        if version == entry.version:
            logger.info("rollback: v%d is already current", version)
            return version
        target = next((e for e in self._history if e.version == version), None)
        if target is None:
            known = [e.version for e in self._history]
            raise ValueError(f"no head version {version} in this store; known versions: {known}")
        if target.bundle_model_version != entry.bundle_model_version:
            raise ValueError(
                f"v{version} was made for bundle {target.bundle_model_version}, but bundle "
                f"{entry.bundle_model_version} is installed; its head does not fit these embeddings"
            )
        head = self._read_verified(target)
        if head is None:
            raise ValueError(f"v{version}'s head file is damaged or missing; pick another version")
        meta = CommitMeta(
            accuracy_before=target.accuracy_before,
            accuracy_after=target.accuracy_after,
            n_samples=target.n_samples,
            note=f"rolled back from v{entry.version} to v{version}",
        )
        return self._append(head, "rollback", meta, target.bundle_model_version, target.parent)

    # ---- internals -----------------------------------------------------------------------

    def _current_or_raise(self) -> tuple[HistoryEntry, Head]:
        self.current()  # raises the helpful LookupError when empty
        assert self._current is not None
        return self._current

    def _head_path(self, version: int) -> Path:
        return self.heads_dir / f"v{version:04d}.npz"

    def _next_version(self) -> int:
        on_disk = [
            int(m.group(1)) for p in self.heads_dir.iterdir() if (m := _HEAD_FILE.match(p.name))
        ]
        return max([0, *on_disk, *(e.version for e in self._history)]) + 1

    def _append(
        self,
        head: Head,
        source: Literal["factory", "calibration", "rollback"],
        meta: CommitMeta,
        bundle_version: str,
        parent: int | None,
    ) -> int:
        version = self._next_version()
        buffer = io.BytesIO()
        np.savez(buffer, **head.to_arrays())
        data = buffer.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        atomic_write(self._head_path(version), data)
        entry = HistoryEntry(
            version=version,
            created_utc=utc_iso(),
            source=source,
            bundle_model_version=bundle_version,
            sha256=sha,
            parent=parent,
            **meta.model_dump(),
        )
        history = [*self._history, entry]
        atomic_write(self.folder / HISTORY, _HISTORY_ADAPTER.dump_json(history, indent=2))
        self._history = history
        self._current = (entry, Head.load(self._head_path(version)))
        self._write_pointer(entry)
        logger.info("head v%d stored (%s, parent %s)", version, source, parent)
        return version

    def _write_pointer(self, entry: HistoryEntry) -> None:
        pointer = CurrentPointer(version=entry.version, sha256=entry.sha256)
        atomic_write(self.folder / CURRENT, pointer.model_dump_json().encode())

    def _read_verified(self, entry: HistoryEntry) -> Head | None:
        """The head of `entry` if its file exists and matches the stored sha256, else None."""
        path = self._head_path(entry.version)
        try:
            data = path.read_bytes()
        except OSError as exc:
            logger.warning("head v%d unreadable (%s)", entry.version, exc)
            return None
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            logger.warning("head v%d: checksum mismatch (file truncated or altered)", entry.version)
            return None
        try:
            return Head.load(path)
        except Exception as exc:  # a file matching its checksum should load; never crash here
            logger.warning("head v%d does not load (%s)", entry.version, exc)
            return None

    def _load(self) -> None:
        for folder in (self.folder, self.heads_dir):
            for leftover in folder.glob(f"{TMP_PREFIX}*"):
                logger.warning("removing %s left by an interrupted write", leftover)
                with contextlib.suppress(OSError):
                    leftover.unlink()
        self._history = self._read_history()
        for entry in reversed(self._history):
            head = self._read_verified(entry)
            if head is not None:
                self._current = (entry, head)
                break
            logger.warning("head v%d is unusable; trying the version before it", entry.version)
        else:
            if self._history:
                logger.warning("%s: no stored head is intact; the store acts empty", self.folder)
            return
        entry = self._current[0]
        if entry is not self._history[-1]:
            logger.warning("%s: using v%d, the newest intact head", self.folder, entry.version)
        pointer = self._read_pointer()
        if pointer != CurrentPointer(version=entry.version, sha256=entry.sha256):
            if pointer is not None:  # behind after a cut between history and pointer writes
                log = logger.info if pointer.version < entry.version else logger.warning
                log("current pointer said v%d; repaired to v%d", pointer.version, entry.version)
            self._write_pointer(entry)

    def _read_history(self) -> list[HistoryEntry]:
        path = self.folder / HISTORY
        if not path.exists():
            return []
        try:
            history = _HISTORY_ADAPTER.validate_json(path.read_bytes())
            versions = [e.version for e in history]
            if versions != sorted(set(versions)):
                raise ValueError(f"versions not strictly increasing: {versions}")
            return history
        except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            keep = path.with_name(f"{HISTORY}.corrupt-{utc_iso().replace(':', '')}")
            logger.warning(
                "%s is unreadable (%s); moved to %s and starting an empty history (the factory "
                "head will be stored again)",
                path,
                str(exc).splitlines()[0],
                keep.name,
            )
            with contextlib.suppress(OSError):
                os.replace(path, keep)
            return []

    def _read_pointer(self) -> CurrentPointer | None:
        path = self.folder / CURRENT
        if not path.exists():
            return None
        try:
            return CurrentPointer.model_validate_json(path.read_bytes())
        except (OSError, ValidationError):
            logger.warning("%s is unreadable (garbage or truncated); rewriting it", path)
            return None

"""Installed model bundles on a device, the active one, and rollback to the one before.

Layout of the store folder (the agent's `state_dir / "bundles"`):

    <model_name>-<model_version>-<sha12>/   a verified copy of a bundle (sha12: of its manifest,
                                            which holds the sha256 of every file: same content,
                                            same folder)
    active.json                             {"current": "<folder>", "previous": "<folder>"|null}
    .tmp-*/                                 an install in progress

`install()` copies or extracts into a `.tmp-*` folder, verifies it (and runs the caller's
`check`, e.g. the signature check of an over-the-air update) and renames it into place;
anything that fails removes its `.tmp-*` folder, and opening the store removes any left by a
crash. `activate()` runs a self-test first, then replaces `active.json` with `os.replace`, so a
power cut leaves either the old or the new pointer. Installing prunes to the `keep` most
recently installed folders plus the current and previous ones. One process owns a store.
A bundle's `manifest.sig` (contract.signing) travels with it; a signed copy replaces an
installed unsigned (or differently signed) copy of the same content.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from edge_agent.contract.bundle import (
    MANIFEST,
    SIGNATURE,
    BundleError,
    Manifest,
    check_bundle,
    unpack,
    verify,
)
from edge_agent.contract.durable import TMP_PREFIX, atomic_write, fsync_dir
from edge_agent.contract.wire import StrictModel
from edge_agent.pipeline.head import Head

logger = logging.getLogger(__name__)

ACTIVE = "active.json"


Origin = Literal["config", "reload", "update", "rollback"]


class ActivePointer(StrictModel):
    current: str
    previous: str | None = None
    origin: Origin = "config"  # what made `current` active
    configured: str | None = None  # the bundle the config named at its last activation


class BundleStore:
    """Installed bundles under `root` (created if missing). See the module docstring."""

    def __init__(self, root: Path, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.root, self.keep = Path(root), keep
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            leftovers = list(self.root.glob(f"{TMP_PREFIX}*"))
        except OSError as exc:
            raise BundleError(f"{self.root}: cannot use it as a bundle store ({exc})") from exc
        for leftover in leftovers:
            logger.warning("removing %s left by an interrupted install", leftover)
            _remove(leftover)

    # ---- reading -------------------------------------------------------------------------

    def current(self) -> Path | None:
        """The active bundle folder, or None when none was activated (or it vanished)."""
        pointer = self._pointer()
        return self._existing(pointer.current) if pointer else None

    def previous(self) -> Path | None:
        """The bundle active before the current one, or None."""
        pointer = self._pointer()
        return self._existing(pointer.previous) if pointer and pointer.previous else None

    def installed(self) -> list[Path]:
        """Installed bundle folders, least recently installed first."""
        folders = [p for p in self._folders() if (p / MANIFEST).is_file()]
        return sorted(folders, key=_mtime)

    # ---- changing ------------------------------------------------------------------------

    def install(self, source: Path, check: Callable[[Path], None] | None = None) -> Path:
        """Install a bundle folder or `.tar.gz`; return its verified folder in the store.

        The same content installs to the same folder once (a damaged copy is replaced).
        check(staged_folder), when given, runs on the verified copy before it is moved into
        place; whatever it raises is re-raised and nothing of the bundle lands in the store.
        BundleError (or check's exception) on any problem, leaving nothing behind.
        """
        source = Path(source)
        if not source.exists():
            raise BundleError(f"{source}: no such bundle (folder or .tar.gz)")
        if check is None and source.is_dir() and source.parent.resolve() == self.root.resolve():
            return self._installed(source)  # already here (a rollback, a restart): verify only
        try:
            tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=self.root))
            try:
                staged, manifest = _stage(source, tmp)
                if check is not None:
                    check(staged)
                target = self.root / folder_name(manifest, staged)
                if not self._reuse(target, staged):
                    self._move_into_place(staged, target, tmp)
            finally:
                _remove(tmp)
            os.utime(target)  # most recently installed
            self._prune()
        except OSError as exc:
            raise BundleError(
                f"{source}: could not install it into {self.root} ({exc}); check that this "
                "folder is writable and has space"
            ) from exc
        return target

    def activate(
        self,
        folder: Path,
        self_test: Callable[[Path], None] | None = None,
        origin: Origin = "config",
    ) -> None:
        """Make an installed bundle the current one, once it verifies and passes `self_test`.

        BundleError (current unchanged) when the folder is not installed here, does not verify,
        or self_test(folder) raises. The current bundle becomes the previous one. `origin` says
        why (the config, a reload_bundle, an over-the-air update), see `start_bundle`.
        """
        folder = self._installed(folder)
        if self_test is not None:
            try:
                self_test(folder)
            except Exception as exc:  # whatever the test raises, the bundle must not go live
                kept = self.current()
                raise BundleError(
                    f"bundle {folder.name} failed its self-test ({exc}); the active bundle is "
                    f"still {kept.name if kept else 'none'}"
                ) from exc
        pointer, current = self._pointer(), self.current()
        configured = folder.name if origin == "config" else pointer and pointer.configured
        if current == folder:
            if pointer is not None and (pointer.origin, pointer.configured) != (origin, configured):
                self._write_pointer(
                    pointer.model_copy(update={"origin": origin, "configured": configured})
                )
            return
        previous = current.name if current else None
        self._write_pointer(ActivePointer(current=folder.name, previous=previous, origin=origin,
                                          configured=configured))  # fmt: skip
        logger.info("bundle %s active (previous: %s, %s)", folder.name, previous, origin)
        self._prune()

    def start_bundle(self, configured: Path) -> Path:
        """The bundle to run at start-up, `configured` being the config's (installed) bundle:
        the one an over-the-air update made current, as long as the config still names the
        bundle it named then (a newly configured bundle wins); else `configured`."""
        pointer, current = self._pointer(), self.current()
        if (
            pointer is None
            or current is None
            or pointer.origin != "update"
            or pointer.configured != Path(configured).name
        ):
            return Path(configured)
        try:
            return self._installed(current)
        except BundleError as exc:
            logger.warning("the updated bundle %s is unusable (%s); running the configured one",
                           current.name, exc)  # fmt: skip
            return Path(configured)

    def rollback(self) -> Path:
        """Make the previous bundle current again (the current one becomes previous)."""
        pointer = self._pointer()
        previous = self.previous()
        if pointer is None or previous is None:
            raise BundleError(
                f"{self.root}: no previous bundle to roll back to; install and activate one"
            )
        self._installed(previous)  # still intact?
        self._write_pointer(
            ActivePointer(current=previous.name, previous=pointer.current, origin="rollback",
                          configured=pointer.configured)
        )  # fmt: skip
        logger.info("bundle rolled back from %s to %s", pointer.current, previous.name)
        return previous

    # ---- internals -----------------------------------------------------------------------

    def _folders(self) -> list[Path]:
        return [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]

    def _existing(self, name: str) -> Path | None:
        path = self.root / name
        if path.is_dir():
            return path
        logger.warning("%s names %s, which is not installed", self.root / ACTIVE, name)
        return None

    def _installed(self, folder: Path) -> Path:
        """`folder` as a verified bundle of this store, else BundleError."""
        folder = Path(folder)
        if folder.parent.resolve() != self.root.resolve() or not folder.is_dir():
            raise BundleError(
                f"{folder}: not a bundle installed in {self.root}; install() it first"
            )
        check_bundle(folder)
        return self.root / folder.name

    def _reuse(self, target: Path, staged: Path) -> bool:
        """True when `target` already holds this bundle intact (and its signature, if any)."""
        if not target.is_dir():
            return False
        signature = _read_or_none(staged / SIGNATURE)
        if signature is not None and signature != _read_or_none(target / SIGNATURE):
            logger.info("installing %s again: this copy carries another signature", target.name)
            return False
        try:
            check_bundle(target)
        except BundleError as exc:
            logger.warning("installed copy %s does not verify (%s); installing again", target, exc)
            return False
        return True

    def _move_into_place(self, staged: Path, target: Path, tmp: Path) -> None:
        if target.exists():  # a damaged copy: set it aside within tmp, removed with it
            os.rename(target, tmp / "damaged")
        try:
            os.rename(staged, target)
        except OSError:
            if not target.is_dir():  # else another process installed the same bundle first
                raise
        fsync_dir(self.root)

    def _pointer(self) -> ActivePointer | None:
        path = self.root / ACTIVE
        try:
            return ActivePointer.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError):
            logger.warning("%s is unreadable (garbage or truncated); no bundle is active", path)
            return None

    def _write_pointer(self, pointer: ActivePointer) -> None:
        atomic_write(self.root / ACTIVE, pointer.model_dump_json().encode())

    def _prune(self) -> None:
        """Keep the `keep` most recently installed folders plus the current and previous."""
        pinned = {self.current(), self.previous()}
        newest_first = sorted(self._folders(), key=_mtime, reverse=True)
        for path in newest_first[self.keep :]:
            if path not in pinned:
                logger.info("removing unused installed bundle %s", path.name)
                _remove(path)


def folder_name(manifest: Manifest, folder: Path) -> str:
    """`<model_name>-<model_version>-<sha12>`, sha12 of the manifest (which checksums the rest)."""
    digest = hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest()[:12]
    return f"{manifest.model_name}-{manifest.model_version}-{digest}"


def _stage(source: Path, tmp: Path) -> tuple[Path, Manifest]:
    """A verified copy of `source` inside `tmp`; error messages name the source, never `tmp`."""
    if source.is_dir():
        listed = verify(source).files  # also refuses unsafe paths before anything is copied
        staged = tmp / "bundle"
        signed = [SIGNATURE] if (source / SIGNATURE).is_file() else []
        for name in [MANIFEST, *signed, *listed]:
            (staged / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, staged / name)  # default permissions
        shown = (str(staged), str(source))
    else:
        shown = (str(tmp), str(source))
    try:
        if not source.is_dir():
            staged = unpack(source, tmp)
        return staged, check_bundle(staged)[0]
    except BundleError as exc:
        raise BundleError(str(exc).replace(*shown)) from exc


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # removed meanwhile
        return 0.0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


# ---- loading a bundle (the agent's start-up and reloads, the CLI's look at one) ------------


def _session_store() -> Path:
    """A new store folder for an archive loaded without cache_dir, removed at interpreter exit."""
    global _session_dir
    if _session_dir is None:
        _session_dir = tempfile.TemporaryDirectory(prefix="faultwatch-bundle-")
    return Path(tempfile.mkdtemp(dir=_session_dir.name))


_session_dir: tempfile.TemporaryDirectory[str] | None = None


def load_bundle(path: Path, cache_dir: Path | None = None) -> tuple[Path, Manifest, Head]:
    """Verify a bundle folder or archive and load its factory head.

    Returns (folder, manifest, head). Raises BundleError when anything does not verify, leaving
    nothing behind. With cache_dir (the agent's `state_dir / "bundles"`), the bundle is installed
    there by `BundleStore(cache_dir).install(path)` and the installed copy is returned (the same
    folder each time for the same content; see bundle_store). Without cache_dir a folder is used
    where it is, and an archive goes to a temporary folder that lives until the process exits:
    long-running callers pass cache_dir, short ones use `opened_bundle()`.
    """
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: no such bundle (folder or .tar.gz)")
    if cache_dir is None and path.is_dir():
        manifest, head = check_bundle(path)
        return path, manifest, head
    root = _session_store() if cache_dir is None else Path(cache_dir)
    folder = BundleStore(root).install(path)
    manifest, head = check_bundle(folder)
    return folder, manifest, head


@contextmanager
def opened_bundle(path: Path) -> Iterator[tuple[Path, Manifest, Head]]:
    """`load_bundle()` for a look at a bundle: an archive's extracted copy is removed on exit."""
    path = Path(path)
    if not path.is_file():
        yield load_bundle(path)
        return
    with tempfile.TemporaryDirectory(prefix="faultwatch-bundle-") as tmp:
        yield load_bundle(path, Path(tmp))

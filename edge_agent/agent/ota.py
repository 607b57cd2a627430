"""Over-the-air bundle updates (`update_bundle`) and the probation that may roll them back.

    download (http(s) URL or device path) -> a `.download-*` file in state_dir, at most
    `updates.max_bytes`, within `updates.timeout_s` -> sha256 as the command says -> BundleStore
    install, whose check on the unpacked copy verifies the signature against
    `updates.public_keys` and that the bundle fits this device (sample rate, backend, class
    set) -> load_runtime (self-test, activate) -> every channel rebound -> probation

Nothing of a refused bundle lands in the store (a bundle refused only by its self-test stays
installed, inactive, until pruned); the download file is removed whatever happens (and any left
by a power cut goes at the next update). The running bundle stays active and running on every
failure. During `updates.probation_s` after an update, an exception of the backend during
inference rolls back to the bundle that ran before (`Probation.roll_back`, called by the agent
loop) and says so in an `agent` event on every channel.

Class set: a bundle whose class names, their order or its normal class differ from the running
bundle's is refused unless the command sets `allow_class_change` (the states published to SCADA
change with it; the device heads restart from the new factory head, as on any version change).
"""

from __future__ import annotations

import http.client
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from edge_agent.agent.notify import kick_watchdog
from edge_agent.config import AgentConfig, ConfigError, check_against_bundle
from edge_agent.contract.bundle import Manifest, read_manifest, sha256_file
from edge_agent.contract.bundle_store import BundleStore
from edge_agent.contract.commands import UpdateBundleCommand
from edge_agent.contract.events import AGENT_VERSION
from edge_agent.contract.signing import SignatureError, load_public_keys, verify_signature
from edge_agent.contract.wire import one_line
from edge_agent.pipeline.decisions import UNKNOWN
from edge_agent.pipeline.runtime import ModelRuntime, load_runtime

if TYPE_CHECKING:
    from edge_agent.agent.agent import Agent

logger = logging.getLogger(__name__)

DOWNLOAD_PREFIX = ".download-"  # temporary archives in state_dir
BLOCK = 1 << 16


class UpdateError(Exception):
    """An update that must not go ahead; the message says why and what to do."""


def apply_update(agent: Agent, command: UpdateBundleCommand) -> dict[str, Any]:
    """Download, verify, install and run the bundle of `command`; the result's data.

    Raises UpdateError, SignatureError, BundleError, ConfigError, BackendError or ValueError
    with the running bundle untouched.
    """
    cfg, before = agent.cfg, agent.model
    if not cfg.updates.public_keys:
        raise UpdateError("no update keys configured: set [updates] public_keys")
    keys = load_public_keys(cfg.updates.public_keys)
    signed_by: list[str] = []

    def check(staged: Path) -> None:  # on the unpacked copy, before it lands in the store
        signed_by.append(verify_signature(staged, keys))
        fits(cfg, before.manifest, read_manifest(staged), agent.source.sample_rate_hz,
             command.allow_class_change)  # fmt: skip

    remove_stale_downloads(cfg.state_dir)
    archive = download(command.source, cfg.state_dir, cfg.updates.max_bytes, cfg.updates.timeout_s)
    try:
        digest = sha256_file(archive)
        if digest != command.sha256.lower():
            raise UpdateError(
                f"sha256 of the download is {digest}, the command says {command.sha256.lower()}: "
                "the file is not the one meant (or changed on the server); check the URL and hash"
            )
        folder = BundleStore(cfg.state_dir / "bundles").install(archive, check=check)
    finally:
        archive.unlink(missing_ok=True)
    kick_watchdog()
    model = load_runtime(cfg, folder, source_rate_hz=agent.source.sample_rate_hz, origin="update")
    rebind(agent, model)
    m = model.manifest
    same = model.folder == before.folder
    if not same:
        agent.probation.start(before.folder, m, cfg.updates.probation_s)
    return {
        "model_name": m.model_name,
        "model_version": m.model_version,
        "bundle": model.folder.name,
        "previous": None if same else before.folder.name,
        "signed_by": signed_by[-1],
        "probation_s": 0.0 if same else cfg.updates.probation_s,
        "head_version": agent.channels[0].head_version,
    }


def fits(
    cfg: AgentConfig,
    running: Manifest,
    new: Manifest,
    source_rate_hz: int | None,
    allow_class_change: bool,
) -> None:
    """ConfigError unless `new` can replace `running` on this device (see the module docstring)."""
    problems = check_against_bundle(cfg, new)
    rate = new.preprocessing.sample_rate_hz
    if source_rate_hz is not None and rate != source_rate_hz:
        problems.append(
            f"the bundle needs {rate} Hz but the running source delivers {source_rate_hz} Hz; "
            "a bundle for another sample rate cannot be installed over the air"
        )
    changed = (new.class_names, new.normal_class) != (running.class_names, running.normal_class)
    if changed and not allow_class_change:
        problems.append(
            f"the bundle's classes {new.class_names} (normal {new.normal_class!r}) differ from the "
            f"running {running.class_names} (normal {running.normal_class!r}); the states sent "
            "to SCADA would change: send allow_class_change=true if that is intended"
        )
    if problems:
        raise ConfigError(problems)


# ---- download ---------------------------------------------------------------------------------


def download(source: str, folder: Path, max_bytes: int, timeout_s: float) -> Path:
    """`source` (http(s) URL or absolute path) copied into a new `.download-*` file in `folder`.

    UpdateError when it is larger than max_bytes (refused as soon as more arrives), slower than
    timeout_s, truncated or unreachable; the file is removed then. The caller removes it after.
    """
    fd, name = tempfile.mkstemp(prefix=DOWNLOAD_PREFIX, suffix=".tar.gz", dir=folder)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            if source.startswith(("http://", "https://")):
                _fetch(source, out, max_bytes, timeout_s)
            else:
                _copy(Path(source), out, max_bytes, timeout_s)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _fetch(url: str, out: IO[bytes], max_bytes: int, timeout_s: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": f"faultwatch/{AGENT_VERSION}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            header = response.headers.get("Content-Length", "")
            declared = int(header) if header.isdigit() else None
            if declared is not None and declared > max_bytes:
                raise UpdateError(_too_big(url, max_bytes, f"the server announces {declared:,}"))
            received = _stream(url, response, out, max_bytes, timeout_s)
    except urllib.error.HTTPError as exc:
        raise UpdateError(f"{url}: HTTP {exc.code} {exc.reason}; check the URL") from exc
    except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets
        reason = getattr(exc, "reason", None) or exc
        raise UpdateError(f"{url}: download failed ({type(exc).__name__}: {reason})") from exc
    if declared is not None and received != declared:
        raise UpdateError(
            f"{url}: download truncated ({received:,} of {declared:,} bytes); the connection "
            "dropped: send the command again"
        )


def _copy(path: Path, out: IO[bytes], max_bytes: int, timeout_s: float) -> None:
    if not path.is_file():
        raise UpdateError(f"{path}: no such file on this device (a bundle .tar.gz is expected)")
    try:
        with open(path, "rb") as source:
            _stream(str(path), source, out, max_bytes, timeout_s)
    except OSError as exc:
        raise UpdateError(f"{path}: cannot read it ({exc})") from exc


def _stream(where: str, source: Any, out: IO[bytes], max_bytes: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    received, kicked = 0, time.monotonic()
    while block := source.read(BLOCK):
        received += len(block)
        if time.monotonic() - kicked > 1.0:  # a long download must not trip systemd's watchdog
            kick_watchdog()
            kicked = time.monotonic()
        if received > max_bytes:
            raise UpdateError(_too_big(where, max_bytes, "more arrived"))
        if time.monotonic() > deadline:
            raise UpdateError(
                f"{where}: download slower than updates.timeout_s = {timeout_s:g} s "
                f"({received:,} bytes so far); retry, or raise the timeout"
            )
        out.write(block)
    return received


def _too_big(where: str, max_bytes: int, what: str) -> str:
    return (
        f"{where}: larger than updates.max_bytes = {max_bytes:,} bytes ({what}); refused: is "
        "this the right file?"
    )


def remove_stale_downloads(folder: Path) -> None:
    """Remove `.download-*` files a power cut left behind (one update runs at a time)."""
    for stale in Path(folder).glob(f"{DOWNLOAD_PREFIX}*"):
        logger.warning("removing %s left by an interrupted update", stale)
        stale.unlink(missing_ok=True)


# ---- running the new bundle, and going back -----------------------------------------------------


def rebind(agent: Agent, model: ModelRuntime) -> None:
    """Every channel runs `model` (decisions restart from 'unknown'); the status says so."""
    agent.use_model(model)
    if agent.link is not None:
        agent.link.publish_status()


@dataclass
class _Trial:
    previous: Path
    bundle: str  # "<name> <version>" of the bundle on probation
    until: float  # time.monotonic()


class Probation:
    """The bundle installed by the last update, for `updates.probation_s` after it started."""

    def __init__(self) -> None:
        self._trial: _Trial | None = None

    def start(self, previous: Path, manifest: Manifest, seconds: float) -> None:
        what = f"{manifest.model_name} {manifest.model_version}"
        self._trial = _Trial(previous, what, time.monotonic() + seconds) if seconds > 0 else None

    @property
    def active(self) -> bool:
        return self._trial is not None and time.monotonic() < self._trial.until

    def roll_back(self, agent: Agent, reason: str) -> bool:
        """On probation: run the bundle from before the update again, tell every channel in an
        `agent` event; True once done. False when not on probation, or the rollback failed."""
        trial, self._trial = self._trial, None
        if trial is None or time.monotonic() >= trial.until:
            return False
        cfg = agent.cfg
        try:
            store = BundleStore(cfg.state_dir / "bundles")
            if store.previous() == trial.previous:
                store.rollback()
            model = load_runtime(
                cfg, trial.previous, source_rate_hz=agent.source.sample_rate_hz, origin="rollback"
            )
        except Exception as exc:  # the previous bundle is gone or broken too: nothing to go to
            logger.error("bundle %s failed on probation (%s); rollback failed: %s",
                         trial.bundle, reason, exc)  # fmt: skip
            return False
        rebind(agent, model)
        m = model.manifest
        text = (
            f"bundle {trial.bundle} failed on probation ({reason}); rolled back to "
            f"{m.model_name} {m.model_version}"
        )
        logger.error("%s", text)
        for ch in agent.channels:
            event = agent.publisher.event(ch, "agent", "warning", state=UNKNOWN, message=text)
            agent.publisher.publish(ch, event)
        return True


def refusal(exc: Exception) -> str:
    """One line for an update that failed with `exc`."""
    if isinstance(exc, SignatureError):
        return f"signature refused: {exc}"
    return one_line(exc)

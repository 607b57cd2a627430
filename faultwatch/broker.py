"""A throwaway MQTT broker on loopback for the demo and the tests.

`start_broker()` runs the system's `mosquitto` as a subprocess with a temporary config when it is
installed, else an embedded amqtt broker (the `broker` extra) in a background thread. Both listen
on 127.0.0.1 only and allow anonymous clients: never a production broker.

    with start_broker() as broker:
        print(broker.kind, broker.port)

For tests of access control, mosquitto also runs with a TLS listener, an ACL and a password file
(`start_broker(tls=BrokerTls(...), acl_file=..., password_file=...)`), or runs a production config
such as deploy/mosquitto/mosquitto.conf adapted to loopback (`MosquittoBroker(config=text,
settings={"cafile": ...})`, see `adapt_config`).
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

BrokerKind = Literal["auto", "mosquitto", "amqtt"]
DEBIAN_MOSQUITTO = "/usr/sbin/mosquitto"  # Debian installs it outside a normal user's PATH


def find_mosquitto() -> str | None:
    """Path of the mosquitto executable, or None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return DEBIAN_MOSQUITTO if os.access(DEBIAN_MOSQUITTO, os.X_OK) else None


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return "root" if os.geteuid() == 0 else "nobody"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_listening(
    port: int, timeout_s: float, is_alive: Callable[[], bool] = lambda: True
) -> bool:
    """Poll until 127.0.0.1:`port` accepts a TCP connection; False on timeout or death."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and is_alive():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


@dataclass(frozen=True)
class BrokerTls:
    """A TLS listener's files (PEM), e.g. from deploy/mosquitto/make-certs.sh.

    ca_file: the CA clients' certificates must chain to; cert_file/key_file: the broker's own.
    require_certificate: refuse a client without a certificate from ca_file (mutual TLS).
    use_identity_as_username: the client certificate's CN is its username (for the ACL's %u).
    """

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = True
    use_identity_as_username: bool = True

    def config_lines(self) -> list[str]:
        if self.use_identity_as_username and not self.require_certificate:
            raise ValueError(
                "BrokerTls(use_identity_as_username=True) needs require_certificate=True: "
                "without a client certificate there is no identity"
            )
        return [
            f"cafile {self.ca_file}",
            f"certfile {self.cert_file}",
            f"keyfile {self.key_file}",
            f"require_certificate {str(self.require_certificate).lower()}",
            f"use_identity_as_username {str(self.use_identity_as_username).lower()}",
        ]


LOCAL_ONLY = ("user", "pid_file", "log_dest", "persistence_location")  # set by adapt_config


def adapt_config(
    text: str, port: int, data_dir: Path, settings: Mapping[str, str | Path] | None = None
) -> str:
    """`text`, a mosquitto.conf with one `listener`, made to run as a throwaway loopback broker.

    The listener moves to 127.0.0.1:`port` (its other options stay); mosquitto runs as this user,
    logs to stderr (unbuffered, unlike stdout to a file) and persists under `data_dir`; each
    `settings` directive (e.g. `cafile`, `acl_file`) replaces every line that sets it, or is added
    when the file has none. Everything else (TLS requirements, anonymous access, limits) is kept
    as written.
    """
    settings = {key: str(value) for key, value in (settings or {}).items()}
    clash = sorted(set(settings) & {"listener", *LOCAL_ONLY})
    if clash:
        raise ValueError(f"adapt_config sets {', '.join(clash)} itself; drop it from settings")
    lines, listeners, used = [], 0, set()
    for line in text.splitlines():
        words = line.split()
        key = words[0] if words and not words[0].startswith("#") else ""
        if key == "listener":
            listeners += 1
            lines.append(f"listener {port} 127.0.0.1")
        elif key in settings:
            used.add(key)
            lines.append(f"{key} {settings[key]}")
        elif key not in LOCAL_ONLY:
            lines.append(line)
    if listeners != 1:
        raise ValueError(
            f"adapt_config needs a config with exactly one listener, got {listeners}; "
            "a test broker serves one loopback port"
        )
    # Global options may follow the listener's: mosquitto reads them wherever they stand.
    lines += [f"{key} {value}" for key, value in settings.items() if key not in used]
    lines += [f"user {_user_name()}", "log_dest stderr", f"persistence_location {data_dir}/"]
    return "\n".join(lines) + "\n"


class BrokerHandle:
    """A running broker: `port`, `kind`, `mqtt_protocol` (for `mqtt.protocol`), `stop()`;
    also a context manager."""

    kind: str
    mqtt_protocol: str = "5"
    port: int

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> BrokerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MosquittoBroker(BrokerHandle):
    """`mosquitto -c <temp config>` on 127.0.0.1:`port`; `stop()`, `start()`, `restart()` keep it.

    With `persistence=True` the broker saves retained messages, persistent sessions and their
    queued messages on stop and restores them on start (like a production broker would).

    Access control: `tls` makes the listener TLS, `acl_file` and `password_file` (made with
    `mosquitto_passwd`) are used as given, and anonymous clients are refused once any of them
    identifies clients. Or `config`, the text of a whole mosquitto.conf, runs through
    `adapt_config` with `settings` instead of the generated config.
    """

    kind = "mosquitto"

    def __init__(
        self,
        port: int = 0,
        persistence: bool = False,
        extra_config: str = "",
        executable: str | None = None,
        *,
        tls: BrokerTls | None = None,
        acl_file: Path | None = None,
        password_file: Path | None = None,
        config: str | None = None,
        settings: Mapping[str, str | Path] | None = None,
    ) -> None:
        if config is not None:
            given = {"persistence": persistence, "extra_config": extra_config, "tls": tls,
                     "acl_file": acl_file, "password_file": password_file}  # fmt: skip
            mixed = [name for name, value in given.items() if value]
            if mixed:
                raise ValueError(
                    f"MosquittoBroker(config=...) takes its settings from the config; put "
                    f"{', '.join(mixed)} in settings= or the config text instead"
                )
        elif settings:
            raise ValueError("MosquittoBroker(settings=...) adapts a config: pass config= too")
        exe = executable or find_mosquitto()
        if exe is None:
            raise FileNotFoundError(
                "mosquitto is not installed; `apt install mosquitto`, or use the embedded "
                "broker: start_broker(kind='amqtt') (needs the broker extra)"
            )
        self.executable = exe
        self.port = port or free_port()
        self.persistence = persistence
        self._dir = Path(tempfile.mkdtemp(prefix="faultwatch-mosquitto-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)
        self.config_path = self._dir / "mosquitto.conf"
        self.log_path = self._dir / "mosquitto.log"
        if config is not None:
            self.config_path.write_text(adapt_config(config, self.port, self._dir, settings))
        else:
            identified = (tls is not None and tls.require_certificate) or password_file is not None
            lines = [
                f"listener {self.port} 127.0.0.1",
                *(tls.config_lines() if tls else []),
                f"allow_anonymous {'false' if identified else 'true'}",
                *([f"acl_file {acl_file}"] if acl_file else []),
                *([f"password_file {password_file}"] if password_file else []),
                f"user {_user_name()}",  # stay this user (as root it would switch to `mosquitto`)
                f"persistence {'true' if persistence else 'false'}",
                f"persistence_location {self._dir}/",
                extra_config,  # any other mosquitto.conf lines
            ]
            self.config_path.write_text("\n".join(lines) + "\n")
        self._process: subprocess.Popen | None = None
        self.start()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running else None  # type: ignore[union-attr]

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 10.0) -> None:
        if self.running:
            return
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [self.executable, "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if not wait_until_listening(self.port, timeout_s, lambda: self.running):
            tail = self.log_path.read_text(errors="replace")[-1500:]
            self.stop()
            raise RuntimeError(
                f"mosquitto did not listen on 127.0.0.1:{self.port} within {timeout_s} s "
                f"(is the port taken?). Its log:\n{tail}"
            )
        logger.info("mosquitto listening on 127.0.0.1:%d", self.port)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate (SIGTERM: a persistent broker saves its state; works on a SIGSTOPped one too),
        kill if it hangs."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        process.send_signal(signal.SIGCONT)  # a paused (SIGSTOP) broker must run to exit
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and delete the temporary folder (also done when the object is collected)."""
        self.stop()
        self._cleanup()

    def __exit__(self, *exc: object) -> None:
        self.close()


class AmqttBroker(BrokerHandle):
    """amqtt's broker (MQTT 3.1.1) in a background thread with its own event loop."""

    kind = "amqtt"
    mqtt_protocol = "3.1.1"  # amqtt has no MQTT 5

    def __init__(self, port: int = 0, timeout_s: float = 10.0) -> None:
        try:
            from amqtt.broker import Broker
        except ImportError as exc:
            raise ImportError(
                "the embedded broker needs amqtt: `pip install 'faultwatch[broker]'`, "
                "or install mosquitto"
            ) from exc
        self._broker_class = Broker
        self.port = port or free_port()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)
        self._thread.name = f"amqtt-{self.port}"
        self._thread.start()
        if not self._ready.wait(timeout_s) or self._error is not None:
            self.stop()
            raise RuntimeError(
                f"amqtt broker did not start on 127.0.0.1:{self.port}: {self._error or 'timeout'}"
            )
        logger.info("amqtt broker listening on 127.0.0.1:%d", self.port)

    async def _serve(self) -> None:
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        try:
            broker = self._broker_class(config)
            await broker.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stop_event.wait()
        await broker.shutdown()

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._loop is not None and self._stop_event is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop_event.set)
        self._thread.join(timeout=timeout_s)


def start_broker(
    port: int = 0,
    kind: BrokerKind = "auto",
    *,
    tls: BrokerTls | None = None,
    acl_file: Path | None = None,
    password_file: Path | None = None,
) -> BrokerHandle:
    """Start a loopback broker on `port` (0: a free one); `kind="auto"` prefers mosquitto.

    `tls`, `acl_file` and `password_file` (see `MosquittoBroker`) need mosquitto."""
    secured = tls is not None or acl_file is not None or password_file is not None
    if secured and kind not in ("auto", "mosquitto"):
        raise ValueError(f"tls, acl_file and password_file need kind='mosquitto', got {kind!r}")
    if kind == "mosquitto" or (kind == "auto" and (secured or find_mosquitto())):
        return MosquittoBroker(port, tls=tls, acl_file=acl_file, password_file=password_file)
    if kind in ("auto", "amqtt"):
        return AmqttBroker(port)
    raise ValueError(f"unknown broker kind {kind!r}; valid: auto, mosquitto, amqtt")

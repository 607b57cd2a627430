"""systemd's sd_notify protocol without a dependency: READY=1, WATCHDOG=1, STATUS=..., STOPPING=1.

A `Type=notify` service tells systemd it is ready, alive and what it is doing by sending
newline-separated `KEY=value` datagrams to the AF_UNIX socket named in `$NOTIFY_SOCKET` (a path,
or an abstract-namespace name when it starts with '@'). With `WatchdogSec=` set, systemd puts the
timeout in `$WATCHDOG_USEC` (for the process in `$WATCHDOG_PID`, when given) and restarts a
service that stays silent that long. These thirty lines replace the `sdnotify` PyPI package,
which has been unmaintained since 2017. Outside systemd (no `$NOTIFY_SOCKET`) everything here is
a no-op, so the agent runs the same from a terminal.
"""

from __future__ import annotations

import logging
import os
import socket

logger = logging.getLogger(__name__)


def notify(**fields: object) -> bool:
    """Send `KEY=value` lines to systemd, e.g. notify(READY=1, STATUS="running").

    Returns True when a datagram was sent; False without $NOTIFY_SOCKET or when sending failed
    (logged at debug level: a lost notification must never stop the agent). The send never
    blocks: a receiver that stopped reading (its queue full) loses the datagram instead of
    freezing the window loop.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not fields:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, socket.MSG_DONTWAIT, address)
    except OSError as exc:  # BlockingIOError included
        logger.debug("sd_notify to %r failed: %s", address, exc)
        return False
    return True


def watchdog_interval_s() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None without a watchdog.

    None as well when $WATCHDOG_PID names another process (the watchdog is not ours).
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        timeout_us = int(usec)
    except ValueError:
        return None
    return timeout_us / 2e6 if timeout_us > 0 else None


def kick_watchdog() -> None:
    """WATCHDOG=1 now, around work that may take a while (calibration, reloads, downloads)."""
    if watchdog_interval_s() is not None:
        notify(WATCHDOG=1)

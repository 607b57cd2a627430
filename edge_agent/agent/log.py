"""The agent's structured log lines (`event k=v k=v`).

The agent spans several modules (agent, publisher, commands); all log under the one
`edge_agent.service` logger (the service's name, as before the package split), so log filters
and the JSON `logger` field stay the same.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("edge_agent.service")


def log_fields(level: int, event: str, **fields: Any) -> None:
    """One structured line: `event k=v k=v` (the JSON log format gets the fields as keys)."""
    text = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
    logger.log(level, "%s %s", event, text, extra={"fields": {"event": event, **fields}})


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return f'"{text}"' if " " in text or not text else text

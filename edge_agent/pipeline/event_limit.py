"""A bound on state-change events per hour and channel: a storm becomes one summary line.

`EventLimiter.allow(state, t)` is asked before each state-change event is published. In any
`window_s` (one hour) at most `max_events_per_hour` events go out, summaries included:

- an ordinary change passes while fewer than `max_events_per_hour - 1` events went out in the
  last hour; the last slot is kept for an escalation;
- an escalation always passes: a change into an alarm state (a class other than the normal
  one) while the last state the operator was told was not an alarm (normal, unknown, uncertain
  or sensor_fault). Severity going up is never suppressed; since another escalation needs a
  published de-escalation first, escalations alone cannot exceed the bound;
- a suppressed change is counted per state. Once the budget has room again, `summary(t)`
  returns one line naming the counts and the current state; it takes a slot, and the state it
  names becomes what the operator was told. Every published event leaves the hour within an
  hour, so while a storm lasts a summary comes at least hourly (given max_events_per_hour >= 3).
"""

from __future__ import annotations

import math
from collections import Counter, deque

from edge_agent.pipeline.decisions import RESERVED_LABELS, UNKNOWN

HOUR_S = 3600.0


class EventLimiter:
    """Sliding-window budget of state-change events for one channel (see the module doc).

    Times `t` are the decisions' window times in seconds.
    """

    def __init__(
        self, normal_class: str, max_events_per_hour: int = 12, window_s: float = HOUR_S
    ) -> None:
        if max_events_per_hour < 3:
            raise ValueError(
                f"max_events_per_hour must be >= 3, got {max_events_per_hour}; one slot is kept "
                "for an escalation and one for the storm summary"
            )
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.normal_class = normal_class
        self.max_events = int(max_events_per_hour)
        self.window_s = float(window_s)
        self._sent: deque[float] = deque()  # times of published events in the window
        self._suppressed: Counter[str] = Counter()
        self._first_suppressed: float | None = None
        self.published = UNKNOWN  # the state the operator was told last
        self.current = UNKNOWN  # the state the machine is in

    @property
    def suppressed(self) -> int:
        """State changes suppressed since the last summary."""
        return sum(self._suppressed.values())

    def is_alarm(self, state: str) -> bool:
        return state != self.normal_class and state not in RESERVED_LABELS

    def allow(self, state: str, t: float) -> bool:
        """Whether the change into `state` at time `t` (s) may be published; else it is counted."""
        self.current = state
        escalation = self.is_alarm(state) and not self.is_alarm(self.published)
        if escalation or self._room(t):
            self._send(state, t)
            return True
        self._suppressed[state] += 1
        if self._first_suppressed is None:
            self._first_suppressed = t
        return False

    def summary(self, t: float) -> str | None:
        """The storm summary to publish now, or None (nothing suppressed, or no room yet).

        "12 state changes suppressed in the last 9 min: inner_race x7, normal x5; current state
        inner_race" (the minutes since the first suppressed change).
        """
        if not self._suppressed or not self._room(t):
            return None
        assert self._first_suppressed is not None
        total = self.suppressed
        minutes = max(1, math.ceil((t - self._first_suppressed) / 60))
        counts = sorted(self._suppressed.items(), key=lambda item: (-item[1], item[0]))
        parts = ", ".join(f"{state} x{count}" for state, count in counts)
        text = (
            f"{total} state change{'s' if total != 1 else ''} suppressed in the last {minutes} "
            f"min: {parts}; current state {self.current}"
        )
        self._suppressed.clear()
        self._first_suppressed = None
        self._send(self.current, t)
        return text

    def _room(self, t: float) -> bool:
        """Whether an ordinary event fits: fewer than max - 1 sent in the last window_s."""
        while self._sent and self._sent[0] <= t - self.window_s:
            self._sent.popleft()
        return len(self._sent) < self.max_events - 1

    def _send(self, state: str, t: float) -> None:
        self._sent.append(t)
        self.published = state

"""Debounced decisions: from per-window class probabilities to a state that does not flap.

Each window gets a label:

- "sensor_fault" when the input failed its sanity checks (clipping, flat line, disconnection),
- "uncertain" when the highest class probability is below `uncertain_below`,
- otherwise the most probable class name.

The state starts as "unknown". Nothing changes while the current state still has `k` of the
last `n` labels. Otherwise a label with at least `k` of the last `n` may take over, by one of
two rules:

Prompt (k of n, as soon as it happens), because a rise in severity or bad data must not wait:
- into "sensor_fault", from any state: the data is bad, so no diagnosis can be trusted;
- into a class from "unknown", and into a fault class from the normal class (an escalation);
- from a sensor fault back to the state before it, once `k_exit` of the last `n` windows agree
  with that state, unless the sensor fault recurred within `min_dwell_s` of the previous one:
  one glitch costs two events, a loose connector holds "sensor_fault" instead of flapping.

Hysteresis (every other change: a fault clearing, one fault class becoming another, anything
becoming or leaving "uncertain"), the new label needs all of
- `k_exit` (default k + 1) of the last `n` windows,
- `min_dwell_s` seconds of window time in the current state since it was entered,
- `hold_fraction` of the windows of the last `min_dwell_s` seconds: for a class, windows whose
  most probable class it is, confident or not (sensor-fault windows count against it); for
  "uncertain", uncertain windows over the last `uncertain_after_s` seconds;
- when leaving "uncertain": uncertain windows are no longer half of the last
  `uncertain_after_s` seconds (entering needs `hold_fraction`, leaving < 1/2: a band).

So a stream hovering between two classes, or around the uncertain threshold, settles in one
state and stays there: neither side reaches `hold_fraction` (> 1/2). Short bursts of uncertain
windows never replace a confident state; a fault onset is still called after k of n windows
(0.09 s at 12 kHz, hop 512); a clean recovery once normal windows fill `hold_fraction` of the
last `min_dwell_s` (48 s by default), never sooner than `min_dwell_s` after the fault was
raised. Time is the windows' own timestamps `t`; if they go backwards the dwell clocks restart.
The service publishes an event whenever `Decision.changed` is true; `pipeline.event_limit`
bounds how many reach the operator per hour.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.contract.bundle import Manifest

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"
UNCERTAIN = "uncertain"
SENSOR_FAULT = "sensor_fault"
RESERVED_LABELS = (UNKNOWN, UNCERTAIN, SENSOR_FAULT)
PROBABILITY_SUM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Decision:
    """The state after one window, and what that window alone said.

    state/previous: debounced state after/before this window (a class name or a reserved label).
    class_name/confidence: argmax class and its probability for this window (None when the
    probabilities were unusable because the sensor check failed). label: this window's label.
    t: the caller's timestamp of the window (seconds). sanity_reason: why the sanity check failed.
    """

    state: str
    changed: bool
    previous: str
    class_name: str | None
    confidence: float | None
    label: str
    t: float
    sanity_reason: str | None = None


class TimedCounts:
    """How often each key occurred among the windows of the last `span_s` seconds."""

    def __init__(self, span_s: float) -> None:
        self.span_s = span_s
        self.counts: Counter[str] = Counter()
        self._items: deque[tuple[float, str]] = deque()

    def add(self, t: float, key: str) -> None:
        self._items.append((t, key))
        self.counts[key] += 1
        oldest = t - self.span_s
        while self._items[0][0] < oldest:
            self.counts[self._items.popleft()[1]] -= 1

    def share(self, key: str) -> float:
        return self.counts[key] / len(self._items) if self._items else 0.0

    def clear(self) -> None:
        self.counts.clear()
        self._items.clear()


class DecisionMachine:
    """k-of-n entry, hysteresis and dwell on exit, persistent uncertainty (module docstring)."""

    def __init__(
        self,
        class_names: Sequence[str],
        normal_class: str,
        k: int = 3,
        n: int = 5,
        uncertain_below: float = 0.7,
        *,
        k_exit: int | None = None,
        min_dwell_s: float = 60.0,
        hold_fraction: float = 0.8,
        uncertain_after_s: float = 60.0,
    ) -> None:
        names = list(class_names)
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f"class_names must be >= 2 distinct names, got {names}")
        clash = sorted(set(names) & set(RESERVED_LABELS))
        if clash:
            raise ValueError(
                f"class_names {clash} clash with the reserved labels {RESERVED_LABELS}; rename "
                "those classes"
            )
        if normal_class not in names:
            raise ValueError(f"normal_class {normal_class!r} is not in class_names {names}")
        if n < 1 or k < 1 or k > n:
            raise ValueError(
                f"debounce needs 1 <= k <= n, got k={k}, n={n}; k windows out of the last n "
                "must agree before the state changes"
            )
        k_exit = min(n, k + 1) if k_exit is None else k_exit
        if not k <= k_exit <= n:
            raise ValueError(
                f"k_exit must be in [k, n], got k_exit={k_exit}, k={k}, n={n}; leaving a state "
                "needs at least the agreement that entering it did"
            )
        if not 0 < uncertain_below <= 1:
            raise ValueError(f"uncertain_below must be in (0, 1], got {uncertain_below}")
        for name, value in (("min_dwell_s", min_dwell_s), ("uncertain_after_s", uncertain_after_s)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value}")
        if not 0.5 < hold_fraction <= 1:
            raise ValueError(
                f"hold_fraction must be in (0.5, 1], got {hold_fraction}; at most one label may "
                "hold at a time"
            )
        self.class_names = names
        self.normal_class = normal_class
        self.k, self.n, self.k_exit = int(k), int(n), int(k_exit)
        self.uncertain_below = float(uncertain_below)
        self.min_dwell_s, self.hold_fraction = float(min_dwell_s), float(hold_fraction)
        self.uncertain_after_s = float(uncertain_after_s)
        self._labels: deque[str] = deque(maxlen=self.n)
        self._counts: Counter[str] = Counter()  # of self._labels
        self._tops = TimedCounts(self.min_dwell_s)  # argmax class, or sensor_fault
        self._unsure = TimedCounts(self.uncertain_after_s)  # window labels
        self.reset()

    @classmethod
    def from_manifest(
        cls, manifest: Manifest, k: int = 3, n: int = 5, **options: Any
    ) -> DecisionMachine:
        """Machine for a bundle: its class names, normal class and uncertainty threshold."""
        return cls(
            manifest.class_names,
            manifest.normal_class,
            k,
            n,
            manifest.thresholds.uncertain_below,
            **options,
        )

    @property
    def state(self) -> str:
        return self._state

    @property
    def since(self) -> float | None:
        """Timestamp of the window that entered the current state (None while unknown)."""
        return self._since

    def reset(self) -> None:
        """Back to "unknown" with no window history (e.g. after a new head is installed)."""
        self._labels.clear()
        self._counts.clear()
        self._prompt: str | None = None  # this window's label, when evidence decided it
        self._tops.clear()
        self._unsure.clear()
        self._state, self._since = UNKNOWN, None
        self._first_t: float | None = None  # first window since reset or a clock jump
        self._last_t: float | None = None
        self._before_sensor = UNKNOWN  # state a sensor fault interrupted
        self._sensor_left: float | None = None  # when the last sensor fault was left
        self._sensor_recurred = False

    def update(
        self,
        probabilities: np.ndarray,
        *,
        sanity_ok: bool,
        sanity_reason: str | None = None,
        t: float,
        novel: bool = False,
        prompt: bool = False,
    ) -> Decision:
        """Add one window: probabilities (C,) from the head, its sanity verdict and time (s).

        novel: the open-set score says the window is unlike every trained class; it is labeled
        `unknown`, which becomes the state only when it persists, like `uncertain`.
        prompt: this window's class comes from independent physical evidence (a clear defect
        line overruling an uncalibrated head): it may take over after k of n, without the dwell
        (a line overruling a calibrated head beyond its labels' reach is not prompt: it dwells).
        """
        class_name, confidence = self._top_class(probabilities, strict=sanity_ok)
        if not sanity_ok:
            label = top = SENSOR_FAULT
        elif novel:
            label = top = UNKNOWN
        else:
            assert class_name is not None and confidence is not None  # strict check passed
            label = UNCERTAIN if confidence < self.uncertain_below else class_name
            top = class_name
        self._prompt = label if prompt and sanity_ok and not novel else None
        self._add(label, top, float(t))

        previous = self._state
        new = self._next_state(t)
        if new != previous:
            self._enter(new, t)
            logger.info("state %s -> %s at t=%.3f", previous, new, t)
        return Decision(
            state=new,
            changed=new != previous,
            previous=previous,
            class_name=class_name,
            confidence=confidence,
            label=label,
            t=t,
            sanity_reason=None if sanity_ok else sanity_reason,
        )

    def _add(self, label: str, top: str, t: float) -> None:
        if self._last_t is not None and t < self._last_t:
            logger.warning(
                "window time went back from %.3f to %.3f; dwell clocks restart", self._last_t, t
            )
            self._tops.clear()
            self._unsure.clear()
            self._first_t = None
            self._since = None if self._since is None else t
            self._sensor_left = None
        self._first_t = t if self._first_t is None else self._first_t
        self._last_t = t
        if len(self._labels) == self.n:
            self._counts[self._labels[0]] -= 1
        self._labels.append(label)
        self._counts[label] += 1
        self._tops.add(t, top)
        self._unsure.add(t, label)

    def _next_state(self, t: float) -> str:
        """The label that replaces the state now, or the state itself (see the module doc)."""
        if self._counts[self._state] >= self.k:
            return self._state
        ready = [
            lab
            for lab, c in self._counts.items()
            if c >= self.k and lab != self._state and self._may_enter(lab, t)
        ]
        if not ready:
            return self._state
        recency = {lab: i for i, lab in enumerate(self._labels)}  # last position of each
        return max(ready, key=lambda lab: (self._counts[lab], recency[lab]))

    def _may_enter(self, label: str, t: float) -> bool:
        """Whether `label`, already k of the last n, may replace the current state now."""
        if label in (SENSOR_FAULT, self._prompt):
            return True
        in_sensor_fault = self._state == SENSOR_FAULT
        if in_sensor_fault and self._counts[label] < self.k_exit:
            return False
        ref = self._reference
        if in_sensor_fault and label == ref and not self._sensor_recurred:
            return True
        if label in self.class_names and (
            ref == UNKNOWN or (ref == self.normal_class and label != ref)
        ):
            return True  # the first state, or an escalation from normal
        return self._holds(label, t)

    @property
    def _reference(self) -> str:
        """The state whose evidence a change must overcome: the one before a sensor fault."""
        return self._before_sensor if self._state == SENSOR_FAULT else self._state

    def _holds(self, label: str, t: float) -> bool:
        """The hysteresis rule: k_exit of n, dwell in the current state, label dominating."""
        if self._counts[label] < self.k_exit:
            return False
        if self._since is not None and t - self._since < self.min_dwell_s:
            return False
        history = self._unsure if label in (UNCERTAIN, UNKNOWN) else self._tops
        assert self._first_t is not None  # set by _add
        if t - self._first_t < history.span_s or history.share(label) < self.hold_fraction:
            return False
        # leaving uncertain: uncertain windows must also have lost their majority (a band)
        doubt = self._unsure.share(UNCERTAIN)
        return label == UNCERTAIN or self._reference != UNCERTAIN or doubt < 0.5

    def _enter(self, new: str, t: float) -> None:
        if new == SENSOR_FAULT:
            self._before_sensor = self._state
            self._sensor_recurred = (
                self._sensor_left is not None and t - self._sensor_left < self.min_dwell_s
            )
        elif self._state == SENSOR_FAULT:
            self._sensor_left = t
        self._state, self._since = new, t

    def _top_class(
        self, probabilities: np.ndarray, strict: bool
    ) -> tuple[str | None, float | None]:
        """(argmax class name, its probability); invalid input raises when `strict`, else None."""
        p = np.asarray(probabilities, dtype=np.float64)
        c = len(self.class_names)
        problem = None
        if p.shape != (c,):
            problem = f"probabilities must have shape ({c},) for {c} classes, got {p.shape}"
        else:
            values = p.tolist()  # plain floats: faster than numpy for a handful of classes
            total, low = sum(values), min(values)
            if not all(map(math.isfinite, values)):
                problem = "probabilities contain NaN or inf"
            elif low < 0 or abs(total - 1.0) > PROBABILITY_SUM_TOLERANCE:
                problem = (
                    f"probabilities must be >= 0 and sum to 1, got sum {total:.4f}, min "
                    f"{low:.4f}; pass head.probabilities(), not logits"
                )
            else:
                top = max(range(c), key=values.__getitem__)
                return self.class_names[top], values[top]
        if strict:
            raise ValueError(problem)
        return None, None

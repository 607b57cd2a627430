"""Debounced decisions: from per-window class probabilities to a state that does not flap.

Each window gets a label:

- "sensor_fault" when the input failed its sanity checks (clipping, flat line, disconnection),
- "uncertain" when the highest class probability is below `uncertain_below`,
- otherwise the most probable class name.

The state starts as "unknown" and changes only when one label occurs in at least `k` of the last
`n` windows (a sensor fault too), so one noisy window never raises or clears an alarm. When
k <= n/2 two labels can qualify at once: the current state is kept if it qualifies, otherwise
the most frequent qualifying label wins (ties: the most recent). A label present in every
other window reaches ceil(n/2) of n, so with the default 3 of 5 an intermittent 50/50 pattern
switches state back and forth; choose k > ceil(n/2) (e.g. 4 of 5) where that must not happen.
The service publishes an event whenever `Decision.changed` is true.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_agent.bundle import Manifest

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


class DecisionMachine:
    """k-of-n debounced state machine over window labels (see the module docstring)."""

    def __init__(
        self,
        class_names: Sequence[str],
        normal_class: str,
        k: int = 3,
        n: int = 5,
        uncertain_below: float = 0.7,
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
        if not 0 < uncertain_below <= 1:
            raise ValueError(f"uncertain_below must be in (0, 1], got {uncertain_below}")
        self.class_names = names
        self.normal_class = normal_class
        self.k, self.n = int(k), int(n)
        self.uncertain_below = float(uncertain_below)
        self._labels: deque[str] = deque(maxlen=self.n)
        self._state = UNKNOWN
        self._since: float | None = None

    @classmethod
    def from_manifest(cls, manifest: Manifest, k: int = 3, n: int = 5) -> DecisionMachine:
        """Machine for a bundle: its class names, normal class and uncertainty threshold."""
        return cls(
            manifest.class_names, manifest.normal_class, k, n, manifest.thresholds.uncertain_below
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
        self._state, self._since = UNKNOWN, None

    def update(
        self,
        probabilities: np.ndarray,
        *,
        sanity_ok: bool,
        sanity_reason: str | None = None,
        t: float,
    ) -> Decision:
        """Add one window: probabilities (C,) from the head, its sanity verdict and time (s)."""
        class_name, confidence = self._top_class(probabilities, strict=sanity_ok)
        if not sanity_ok:
            label = SENSOR_FAULT
        else:
            assert class_name is not None and confidence is not None  # strict check passed
            label = UNCERTAIN if confidence < self.uncertain_below else class_name
        self._labels.append(label)

        previous = self._state
        counts = Counter(self._labels)
        qualifying = [lab for lab, c in counts.items() if c >= self.k]
        if qualifying and previous not in qualifying:
            recency = {lab: i for i, lab in enumerate(self._labels)}  # last position of each
            self._state = max(qualifying, key=lambda lab: (counts[lab], recency[lab]))
            self._since = t
            logger.info("state %s -> %s at t=%.3f", previous, self._state, t)
        return Decision(
            state=self._state,
            changed=self._state != previous,
            previous=previous,
            class_name=class_name,
            confidence=confidence,
            label=label,
            t=t,
            sanity_reason=None if sanity_ok else sanity_reason,
        )

    def _top_class(
        self, probabilities: np.ndarray, strict: bool
    ) -> tuple[str | None, float | None]:
        """(argmax class name, its probability); invalid input raises when `strict`, else None."""
        p = np.asarray(probabilities, dtype=np.float64)
        c = len(self.class_names)
        problem = None
        if p.shape != (c,):
            problem = f"probabilities must have shape ({c},) for {c} classes, got {p.shape}"
        elif not np.isfinite(p).all():
            problem = "probabilities contain NaN or inf"
        elif p.min() < 0 or abs(p.sum() - 1.0) > PROBABILITY_SUM_TOLERANCE:
            problem = (
                f"probabilities must be >= 0 and sum to 1, got sum {p.sum():.4f}, min "
                f"{p.min():.4f}; pass head.probabilities(), not logits"
            )
        if problem is None:
            top = int(p.argmax())
            return self.class_names[top], float(p[top])
        if strict:
            raise ValueError(problem)
        return None, None

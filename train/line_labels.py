"""Pool windows labeled by physics: where a window's envelope spectrum shows a clear defect
line of the monitored bearing, its class is known without an operator.

A window's score per defect line is the mean level of its harmonics in the physics view
(edge_agent.physics.view; dB over the line's neighbourhood, unresolved harmonics 0 dB), the
number `edge_agent.physics.evidence` ranks lines by; a line is clear at STRONGEST_DB, the level
white noise reaches in about 0.3 % of windows. The recipe's template takes the clearest windows of
each class, at most its self-training budget, beside the operator's labels (train.spectral).
Measured on the pool windows of every CWRU and MFPT task: 100 per class, none wrong.

The fine-tuned model learns from `record_line_labels`: the clear windows of the records most of
whose windows show the same line (RECORD_SHARE), spread over those records, so a bearing whose
lines are weaker than the clearest ones' still takes part (CWRU: the 0.021" inner race beside
the 0.007" one; the few clear windows of ball and 0.014" records, the only wrong ones, never).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from edge_agent.physics.bearing_sim import BearingGeometry
from edge_agent.physics.evidence import HARMONICS, LINES, STRONGEST_DB
from edge_agent.physics.view import default_band, line_view
from train.splits import WindowSet

RECORD_SHARE = 0.5  # a record's line counts when at least this share of its windows shows it


def line_scores(view: np.ndarray) -> np.ndarray:
    """(N, N_FEATURES) physics views -> (N, len(LINES)) mean level of each line's harmonics."""
    return view.reshape(len(view), len(LINES), len(HARMONICS)).mean(axis=2)


def line_named_classes(class_names: list[str]) -> list[int]:
    """Indices in `class_names` of the classes a defect line can name (none for classes by
    defect size: a line names a location)."""
    return [class_names.index(c) for c in LINES.values() if c in class_names]


def strongest_lines(
    windows: WindowSet, class_names: list[str], geometry: BearingGeometry, sample_rate_hz: float
) -> tuple[np.ndarray, np.ndarray]:
    """Each window's strongest fault line: (N,) the index in `class_names` of the class it
    names (-1 where that class is not among them) and (N,) its level (dB; -inf where the
    window's shaft speed is unknown, NaN or absent, and its class then -1)."""
    fault_classes = [cls for cls in LINES.values() if cls]  # the lines that name a class
    n = len(windows)
    if n == 0 or windows.shaft_hz is None:
        return np.full(n, -1, np.int64), np.full(n, -np.inf)
    view = line_view(
        windows.x, sample_rate_hz, windows.shaft_hz, geometry, default_band(sample_rate_hz)
    )
    scores = line_scores(view)[:, [cls is not None for cls in LINES.values()]]
    scores = np.where(np.isfinite(scores), scores, -np.inf)  # unknown speed: no line
    best, level = scores.argmax(axis=1), scores.max(axis=1)
    index = np.array([class_names.index(c) if c in class_names else -1 for c in fault_classes])
    return np.where(np.isfinite(level), index[best], -1), level


def clear_line_labels(
    windows: WindowSet,
    class_names: list[str],
    geometry: BearingGeometry,
    sample_rate_hz: float,
    per_class: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(indices, class indices) of the windows whose strongest fault line is clear (>=
    STRONGEST_DB) and names one of `class_names`, at most `per_class` of each class, clearest
    first. Windows of unknown speed (no or NaN shaft_hz) are never labeled."""
    none = np.zeros(0, np.int64)
    wanted = line_named_classes(class_names)
    if per_class == 0 or not wanted:
        return none, none
    named, level = strongest_lines(windows, class_names, geometry, sample_rate_hz)
    picked, labels = [none], [none]
    for c in wanted:
        clear = np.flatnonzero((named == c) & (level >= STRONGEST_DB))
        clearest = clear[np.argsort(-level[clear], kind="stable")][:per_class]
        picked.append(clearest)
        labels.append(np.full(len(clearest), c, np.int64))
    return np.concatenate(picked), np.concatenate(labels)


def record_line_labels(
    windows: WindowSet,
    class_names: list[str],
    geometry: BearingGeometry,
    sample_rate_hz: float,
    per_class: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(indices, class indices) of the clear-line windows (`clear_line_labels`) of records in
    which at least RECORD_SHARE of the windows show that class's line clearly, at most
    `per_class` per class taken in turns from those records, each record's clearest first."""
    found, labels = clear_line_labels(windows, class_names, geometry, sample_rate_hz, len(windows))
    records = np.asarray(windows.record_ids)
    if len(found) == 0 or len(records) != len(windows):
        return found[:0], labels[:0]
    names, size = np.unique(records, return_counts=True)
    windows_in = dict(zip(names, size, strict=True))
    picked, picked_labels = [], []
    for c in np.unique(labels):
        by_record: dict[str, list[int]] = defaultdict(list)
        for i in found[labels == c]:  # clearest first
            by_record[records[i]].append(int(i))
        turns = [v for r, v in by_record.items() if len(v) >= RECORD_SHARE * windows_in[r]]
        order = [v[k] for k in range(max(map(len, turns), default=0)) for v in turns if k < len(v)]
        picked += order[:per_class]
        picked_labels += [int(c)] * len(order[:per_class])
    return np.array(picked, np.int64), np.array(picked_labels, np.int64)

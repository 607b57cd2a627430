"""Leak-free splits: by record, or by time block inside each record, never by random windows.

A record's time blocks are train [0, 60%), val and test [70%, 100%), with a gap of one window
between blocks so no window straddles two of them. Labeled windows are drawn (without overlap)
from train blocks only; the unlabeled pool is the train blocks with their labels hidden.
Every split writes a JSON description (which record, which sample ranges) into the run folder.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from edge_agent.contract.preprocess import frame, normalize
from train.config import TrainConfig
from train.records import Record

TRAIN_END, VAL_END = 0.60, 0.70  # block boundaries as fractions of a record


@dataclass
class WindowSet:
    """Model-ready windows: x float32 (N, 1, W) normalized, y int64 (N,) class index or -1,
    shaft_hz (N,) the speed each window was recorded at (NaN unknown; None: not tracked)."""

    x: np.ndarray
    y: np.ndarray
    record_ids: list[str] = field(default_factory=list)
    shaft_hz: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @classmethod
    def empty(cls, window: int) -> WindowSet:
        return cls(np.zeros((0, 1, window), np.float32), np.zeros(0, np.int64), [])

    @classmethod
    def concat(cls, parts: Sequence[WindowSet], window: int) -> WindowSet:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty(window)
        speeds = [p.shaft_hz for p in parts]
        return cls(
            np.concatenate([p.x for p in parts]),
            np.concatenate([p.y for p in parts]),
            [r for p in parts for r in p.record_ids],
            None if any(v is None for v in speeds) else np.concatenate(speeds),  # type: ignore[arg-type]
        )


@dataclass
class Segment:
    """A contiguous stretch of one record (signal in g), with its class index (-1 unknown)."""

    record_id: str
    signal: np.ndarray
    label: int
    start: int  # first sample's index in the record
    shaft_hz: float = math.nan  # the record's shaft speed, when it carries one


class SegmentPool:
    """Unlabeled training pool: random window crops from train segments, normalized on the fly."""

    def __init__(self, segments: list[Segment], window: int, hop: int, normalization: str) -> None:
        self.segments = [s for s in segments if s.signal.shape[0] >= window]
        if not self.segments:
            raise ValueError(
                f"unlabeled pool is empty: no train segment holds a {window}-sample window"
            )
        self.window, self.hop, self.normalization = window, hop, normalization
        spans = np.array([s.signal.shape[0] - window + 1 for s in self.segments], dtype=np.int64)
        self._cum = np.cumsum(spans)
        # all segments end to end, so a batch of crops is one gather instead of a Python loop;
        # the segments become views of that one buffer (no second copy of the pool)
        self._signal = np.concatenate([s.signal.astype(np.float32) for s in self.segments])
        lengths = np.array([s.signal.shape[0] for s in self.segments], dtype=np.int64)
        self._first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self.segments = [
            replace(s, signal=self._signal[a : a + n])
            for s, a, n in zip(self.segments, self._first, lengths, strict=True)
        ]

    def __len__(self) -> int:
        """Number of hop-spaced windows (the nominal pool size)."""
        return int(self._hop_counts().sum())

    def _hop_counts(self) -> np.ndarray:
        """Hop-spaced windows per segment."""
        return np.array([1 + (s.signal.shape[0] - self.window) // self.hop for s in self.segments])

    def _spread_windows(self, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(segment index, offset in the segment) of at most `limit` hop-spaced windows, evenly
        spread over the pool."""
        counts = self._hop_counts()
        ends = np.cumsum(counts)
        keep = _spread(int(ends[-1]), limit)
        seg = np.searchsorted(ends, keep, side="right")
        return seg, (keep - (ends - counts)[seg]) * self.hop

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n random crops, uniform over all valid start positions -> (n, 1, W) float32."""
        flat = rng.integers(0, int(self._cum[-1]), size=n)
        seg_idx = np.searchsorted(self._cum, flat, side="right")
        offsets = flat - np.concatenate([[0], self._cum[:-1]])[seg_idx]
        starts = self._first[seg_idx] + offsets
        crops = self._signal[starts[:, None] + np.arange(self.window)]
        return normalize(crops, self.normalization)  # type: ignore[arg-type]

    def windows(self, limit: int | None = None) -> WindowSet:
        """Hop-spaced windows with their (hidden) true labels, for pseudo-labels and statistics;
        at most `limit`, evenly spread over the pool. Only the windows returned are cut."""
        seg, offsets = self._spread_windows(limit)
        crops = self._signal[(self._first[seg] + offsets)[:, None] + np.arange(self.window)]
        labels = np.array([s.label for s in self.segments], np.int64)
        speeds = np.array([s.shaft_hz for s in self.segments], np.float64)
        record_ids = [s.record_id for s in self.segments]
        return WindowSet(
            normalize(crops, self.normalization),  # type: ignore[arg-type]
            labels[seg],
            [record_ids[i] for i in seg],
            speeds[seg],
        )

    def positions(self, limit: int | None = None) -> list[tuple[str, int]]:
        """(record id, first sample in the record) of each window `windows(limit)` returns."""
        seg, offsets = self._spread_windows(limit)
        return [
            (self.segments[i].record_id, self.segments[i].start + int(o))
            for i, o in zip(seg, offsets, strict=True)
        ]


def _spread(n: int, limit: int | None) -> np.ndarray:
    """Indices of at most `limit` of n items, evenly spread (all of them without a limit)."""
    if limit is None or n <= limit:
        return np.arange(n)
    return np.linspace(0, n - 1, limit).astype(int)


@dataclass
class Split:
    class_names: list[str]
    labeled: WindowSet
    val: WindowSet
    test: WindowSet
    pool: SegmentPool
    description: dict[str, Any]

    def known(self) -> WindowSet:
        """The labeled and validation windows: every window whose label training may read."""
        return WindowSet.concat([self.labeled, self.val], self.pool.window)


def windows_of(segment: Segment, window: int, hop: int, normalization: str) -> WindowSet:
    if segment.signal.shape[0] < window:
        return WindowSet.empty(window)
    x = normalize(frame(segment.signal, window, hop), normalization)  # type: ignore[arg-type]
    return WindowSet(
        x,
        np.full(len(x), segment.label, np.int64),
        [segment.record_id] * len(x),
        np.full(len(x), segment.shaft_hz),
    )


def time_blocks(record: Record, label: int, window: int) -> dict[str, Segment]:
    """Cut a record into train / val / test segments with a one-window gap between blocks."""
    n = record.signal.shape[0]
    a, b = int(n * TRAIN_END), int(n * VAL_END)
    bounds = {"train": (0, a), "val": (a + window, b), "test": (b + window, n)}
    return {
        name: Segment(record.record_id, record.signal[lo:hi], label, lo, record.shaft_hz)
        for name, (lo, hi) in bounds.items()
        if hi > lo
    }


def pick_labeled(
    segments: list[Segment],
    per_class: int,
    n_classes: int,
    window: int,
    norm: str,
    rng: np.random.Generator,
) -> tuple[WindowSet, list[dict[str, Any]]]:
    """Draw up to `per_class` non-overlapping windows per class from the given segments."""
    chosen: list[WindowSet] = []
    picked: list[dict[str, Any]] = []
    for c in range(n_classes):
        cands = [
            (i, o)
            for i, s in enumerate(segments)
            if s.label == c
            for o in range(0, s.signal.shape[0] - window + 1, window)
        ]
        if not cands:
            continue
        take = rng.choice(len(cands), size=min(per_class, len(cands)), replace=False)
        for k in sorted(take):
            i, o = cands[k]
            seg = segments[i]
            chosen.append(
                windows_of(
                    replace(seg, signal=seg.signal[o : o + window], label=c, start=0),
                    window,
                    window,
                    norm,
                )
            )
            picked.append({"record": seg.record_id, "start": seg.start + o, "class": c})
    return WindowSet.concat(chosen, window), picked


def split_records(
    records: list[Record],
    class_names: list[str],
    cfg: TrainConfig,
    rng: np.random.Generator,
    label_of: Callable[[Record], str],
    labeled_filter: Callable[[Record], bool] = lambda r: True,
    test_filter: Callable[[Record], bool] = lambda r: True,
    pool_filter: Callable[[Record], bool] = lambda r: True,
    extra_pool: Sequence[Segment] = (),
) -> Split:
    """Time-block split inside every record (the CWRU and recordings path).

    Labeled and validation windows come from the train / val blocks of records passing
    `labeled_filter`, test windows from the test blocks of records passing `test_filter`, and
    the unlabeled pool from the train blocks of records passing `pool_filter`, and `extra_pool`.
    """
    index = {name: i for i, name in enumerate(class_names)}
    blocks = {r.record_id: (r, time_blocks(r, index[label_of(r)], cfg.window)) for r in records}
    train_lab = [b["train"] for r, b in blocks.values() if labeled_filter(r) and "train" in b]
    val_lab = [b["val"] for r, b in blocks.values() if labeled_filter(r) and "val" in b]
    labeled, picked = pick_labeled(
        train_lab, cfg.labels_per_class, len(class_names), cfg.window, cfg.normalization, rng
    )
    val, _ = pick_labeled(
        val_lab, max(cfg.labels_per_class, 5), len(class_names), cfg.window, cfg.normalization, rng
    )
    test = WindowSet.concat(
        [
            windows_of(b["test"], cfg.window, cfg.hop, cfg.normalization)
            for r, b in blocks.values()
            if test_filter(r) and "test" in b
        ],
        cfg.window,
    )
    pool_segments = [
        replace(s)
        for r, b in blocks.values()
        for s in [b.get("train")]
        if s is not None and pool_filter(r)
    ]
    pool = SegmentPool([*pool_segments, *extra_pool], cfg.window, cfg.hop, cfg.normalization)
    description = {
        "scheme": "time-block within each record",
        "blocks": {
            "train": [0.0, TRAIN_END],
            "val": [TRAIN_END, VAL_END],
            "test": [VAL_END, 1.0],
            "gap_samples": cfg.window,
        },
        "records": {
            rid: {
                "label": label_of(r),
                **{k: [s.start, s.start + s.signal.shape[0]] for k, s in b.items()},
            }
            for rid, (r, b) in blocks.items()
        },
        "labeled_records": [rid for rid, (r, _) in blocks.items() if labeled_filter(r)],
        "test_records": [rid for rid, (r, _) in blocks.items() if test_filter(r)],
        "pool_records": [s.record_id for s in pool_segments],
        "labeled_windows": picked,
    }
    return Split(class_names, labeled, val, test, pool, description)


def split_summary(split: Split) -> dict[str, Any]:
    def counts(ws: WindowSet) -> dict[str, int]:
        return {name: int((ws.y == i).sum()) for i, name in enumerate(split.class_names)}

    return {
        "labeled": counts(split.labeled),
        "val": counts(split.val),
        "test": counts(split.test),
        "unlabeled_pool_windows": len(split.pool),
    }

"""`bench openset` leaves a class out of everything training sees, and nothing else."""

from __future__ import annotations

import numpy as np

from bench.openset import without_class
from train.splits import Segment, SegmentPool, Split, WindowSet

W = 64


def windows(labels: list[int]) -> WindowSet:
    y = np.array(labels, dtype=np.int64)
    return WindowSet(np.zeros((len(y), 1, W), np.float32), y, [f"r{c}" for c in labels])


def test_the_held_out_class_is_gone_from_labels_val_pool_and_names():
    rng = np.random.default_rng(0)
    pool = SegmentPool(
        [Segment(f"r{c}", rng.normal(size=4 * W), c, 0) for c in (0, 1, 2, 2)], W, W, "zscore"
    )
    split = Split(
        class_names=["normal", "inner_race", "outer_race"],
        labeled=windows([0, 1, 2, 1]),
        val=windows([0, 1, 2]),
        test=windows([0, 1, 2, 2]),
        pool=pool,
        description={},
    )
    known = without_class(split, held=1)
    assert known.class_names == ["normal", "outer_race"]
    assert known.labeled.y.tolist() == [0, 1] and known.val.y.tolist() == [0, 1]
    assert known.test.y.tolist() == [0, 1, 1]
    assert [s.label for s in known.pool.segments] == [0, 1, 1]
    assert all(s.record_id != "r1" for s in known.pool.segments)
    assert known.description["held_out"] == "inner_race"
    assert split.labeled.y.tolist() == [0, 1, 2, 1]  # the original split is untouched

"""Build the split a config names: the simulator's reference scenario, CWRU tasks, or a plant's
own recordings. All paths end in a `Split` (train.splits) whose description is saved with the run.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from train.config import TrainConfig
from train.records import Record
from train.splits import (
    Segment,
    SegmentPool,
    Split,
    WindowSet,
    pick_labeled,
    split_records,
    windows_of,
)

logger = logging.getLogger(__name__)

LOCATION_CLASSES = ["normal", "inner_race", "outer_race", "ball"]


def build_split(cfg: TrainConfig) -> Split:
    rng = np.random.default_rng(cfg.seed)
    if cfg.data == "sim-reference":
        split = sim_reference_split(cfg, rng)
    elif cfg.data == "recordings":
        split = recordings_split(cfg, rng)
    else:
        split = cwru_split(cfg, rng)
    if cfg.pool_shards is not None:
        from train.shards import ShardPool

        split.pool = ShardPool(cfg.pool_shards)
        if split.pool.window != cfg.window:
            raise ValueError(
                f"pool_shards hold {split.pool.window}-sample windows; window is {cfg.window}"
            )
        split.description["unlabeled_pool"] = (
            f"shards: {cfg.pool_shards} ({len(split.pool)} windows)"
        )
    return split


def _resampled(records: list[Record], rate: int) -> list[Record]:
    from edge_agent.preprocess import resample

    return [
        r
        if r.sample_rate_hz == rate
        else Record(r.record_id, resample(r.signal, r.sample_rate_hz, rate), rate, r.label, r.meta)
        for r in records
    ]


def sim_reference_split(cfg: TrainConfig, rng: np.random.Generator) -> Split:
    """Lab (1500 rpm) labels, a production pool (1200-1800 rpm, ~90% normal, drift) without
    labels, and a labeled production test set from other records: split by record."""
    from train.scenarios import lab_records, production_records

    seconds = cfg.sim_seconds_per_record
    per_record = 1 + int((seconds * cfg.sample_rate_hz - cfg.window) // cfg.hop)
    names = LOCATION_CLASSES
    index = {n: i for i, n in enumerate(names)}
    lab_per_class = max(
        4, math.ceil(cfg.labels_per_class * cfg.window / (seconds * cfg.sample_rate_hz)) + 1
    )
    plant = cfg.seed  # one gearbox: lab, pool and test records share its structure and drift
    lab = _resampled(
        lab_records(lab_per_class, seconds, seed=cfg.seed, plant_seed=plant), cfg.sample_rate_hz
    )
    lab_val = _resampled(
        lab_records(2, seconds, seed=cfg.seed + 500, plant_seed=plant), cfg.sample_rate_hz
    )
    n_pool = max(1, math.ceil(cfg.unlabeled_windows / per_record))
    pool_recs = _resampled(
        production_records(n_pool, seconds, seed=cfg.seed + 1000, plant_seed=plant),
        cfg.sample_rate_hz,
    )
    n_test = max(8, n_pool // 4)
    test_recs = _resampled(
        production_records(
            n_test, seconds, seed=cfg.seed + 2000, normal_fraction=0.25, plant_seed=plant
        ),
        cfg.sample_rate_hz,
    )

    def segments(records: list[Record]) -> list[Segment]:
        return [Segment(r.record_id, r.signal, index[r.label], 0) for r in records]

    labeled, picked = pick_labeled(
        segments(lab), cfg.labels_per_class, len(names), cfg.window, cfg.normalization, rng
    )
    val, _ = pick_labeled(
        segments(lab_val),
        max(cfg.labels_per_class, 5),
        len(names),
        cfg.window,
        cfg.normalization,
        rng,
    )
    test = WindowSet.concat(
        [windows_of(s, cfg.window, cfg.hop, cfg.normalization) for s in segments(test_recs)],
        cfg.window,
    )
    pool = SegmentPool(segments(pool_recs), cfg.window, cfg.hop, cfg.normalization)
    description = {
        "scheme": "by record: lab records (labels), production records (unlabeled pool), "
        "separate production records (test)",
        "lab_records": [r.record_id for r in lab],
        "val_records": [r.record_id for r in lab_val],
        "pool_records": len(pool_recs),
        "test_records": [r.record_id for r in test_recs],
        "labeled_windows": picked,
    }
    return Split(names, labeled, val, test, pool, description)


def cwru_split(cfg: TrainConfig, rng: np.random.Generator) -> Split:
    """CWRU 12k drive end, time-block split inside every record.

    cwru-4class: location labels; cwru-10class: location x size; cwru-crossload: labels from
    load 0 only, unlabeled pool from all loads, test on load 3.
    """
    from train.cwru import default_data_root, load_cwru, size_label

    root = cfg.data_root or default_data_root()
    records = load_cwru(root, sample_rate_hz=cfg.sample_rate_hz)
    if cfg.data == "cwru-10class":
        names = ["normal"] + [f"{loc}_{s:03d}" for loc in LOCATION_CLASSES[1:] for s in (7, 14, 21)]
        return split_records(records, names, cfg, rng, label_of=size_label)
    if cfg.data == "cwru-crossload":
        return split_records(
            records,
            LOCATION_CLASSES,
            cfg,
            rng,
            label_of=lambda r: r.label,
            labeled_filter=lambda r: int(r.meta.get("load_hp", -1)) == 0,
            test_filter=lambda r: int(r.meta.get("load_hp", -1)) == 3,
        )
    return split_records(records, LOCATION_CLASSES, cfg, rng, label_of=lambda r: r.label)


def recordings_split(cfg: TrainConfig, rng: np.random.Generator) -> Split:
    """A plant's recordings: labeled ones are time-block split; unlabeled ones join the pool."""
    from train.recordings import load_manifest

    records = _resampled(load_manifest(cfg.manifest), cfg.sample_rate_hz)  # type: ignore[arg-type]
    labeled = [r for r in records if r.label]
    if not labeled:
        raise ValueError(f"{cfg.manifest}: no recording has a label; fine-tuning needs some")
    names = sorted({r.label for r in labeled}, key=lambda n: (n != "normal", n))
    split = split_records(labeled, names, cfg, rng, label_of=lambda r: r.label)
    extra = [Segment(r.record_id, r.signal, -1, 0) for r in records if not r.label]
    if extra:
        split.pool = SegmentPool(
            split.pool.segments + extra, cfg.window, cfg.hop, cfg.normalization
        )
        split.description["unlabeled_records"] = [s.record_id for s in extra]
    return split

"""Build the split a config names: the simulator's reference scenario, CWRU tasks, or a plant's
own recordings. All paths end in a `Split` (train.splits) whose description is saved with the run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge_agent.physics.bearing_sim import BearingGeometry
from train.config import DATA_DESCRIPTIONS, TrainConfig
from train.recordings import is_excerpt, manifest_row
from train.records import Record, resampled
from train.splits import (
    TRAIN_END,
    Segment,
    SegmentPool,
    Split,
    WindowSet,
    pick_labeled,
    split_records,
    time_blocks,
    windows_of,
)

logger = logging.getLogger(__name__)

LOCATION_CLASSES = ["normal", "inner_race", "outer_race", "ball"]


def build_split(cfg: TrainConfig, need_labels: bool = True) -> Split:
    """The split `cfg` names; need_labels=False lets a plant's recordings have none yet (to
    choose which windows to label)."""
    rng = np.random.default_rng(cfg.seed)
    if cfg.data == "sim-reference":
        split = sim_reference_split(cfg, rng)
    elif cfg.data == "recordings":
        split = recordings_split(cfg, rng, need_labels)
    elif cfg.data in MFPT_TASKS:
        split = mfpt_split(cfg, rng)
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
    return [resampled(r, rate) for r in records]


def _sim_test_records(cfg: TrainConfig) -> list[Record]:
    """The reference scenario's labeled production test records (a quarter normal)."""
    from train.scenarios import production_records

    seconds = cfg.sim_seconds_per_record
    per_record = 1 + int((seconds * cfg.sample_rate_hz - cfg.window) // cfg.hop)
    n_pool = max(1, math.ceil(cfg.unlabeled_windows / per_record))
    n_test = max(8, n_pool // 4)
    records = production_records(
        n_test, seconds, seed=cfg.seed + 2000, normal_fraction=0.25, plant_seed=cfg.seed
    )
    return _resampled(records, cfg.sample_rate_hz)


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
    test_recs = _sim_test_records(cfg)

    def segments(records: list[Record]) -> list[Segment]:
        return [Segment(r.record_id, r.signal, index[r.label], 0, r.shaft_hz) for r in records]

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


def _load(r: Record) -> int:
    return int(r.meta.get("load_hp", -1))


def _size_mils(r: Record) -> int:
    """Fault diameter in thousandths of an inch (0 for the normal record)."""
    return round(float(r.meta.get("fault_size_in", 0.0)) * 1000)


def _normal(r: Record) -> bool:
    return r.label == "normal"


def _every(r: Record) -> bool:
    return True


@dataclass(frozen=True)
class RecordTask:
    """Which records of a real data set give labels, test windows and the unlabeled pool (by
    time block each).

    pool_name names the pool, so tasks that share one can share a pretrained encoder.
    """

    labeled: Callable[[Record], bool] = _every
    test: Callable[[Record], bool] = _every
    pool: Callable[[Record], bool] = _every
    pool_name: str = "every record"
    ten_class: bool = False


def _lolo(k: int) -> RecordTask:
    return RecordTask(
        labeled=lambda r: _load(r) != k or _normal(r),
        test=lambda r: _load(r) == k or _normal(r),
    )


# data name -> task; what each means is in train.config.DATA_DESCRIPTIONS
CWRU_TASKS: dict[str, RecordTask] = {
    "cwru-4class": RecordTask(),
    "cwru-10class": RecordTask(ten_class=True),
    "cwru-crossload": RecordTask(labeled=lambda r: _load(r) == 0, test=lambda r: _load(r) == 3),
    "cwru-crossload-3to0": RecordTask(
        labeled=lambda r: _load(r) == 3 or _normal(r), test=lambda r: _load(r) == 0
    ),
    **{f"cwru-lolo-{k}": _lolo(k) for k in range(4)},
    "cwru-unseen-bearing": RecordTask(
        labeled=lambda r: _size_mils(r) != 14,
        test=lambda r: _size_mils(r) == 14 or _normal(r),
        pool=lambda r: _size_mils(r) != 14,
        pool_name="no 0.014 in record",
    ),
}


def _lbs(r: Record) -> int:
    return int(r.meta.get("load_lbs", -1))


# MFPT (train.mfpt): inner vs outer race; loads 0-100 lbs are "low", 200-300 "high"
MFPT_CLASSES = ["inner_race", "outer_race"]
MFPT_TASKS: dict[str, RecordTask] = {
    "mfpt-2class": RecordTask(),
    "mfpt-low-to-high": RecordTask(labeled=lambda r: _lbs(r) <= 100, test=lambda r: _lbs(r) >= 200),
    "mfpt-high-to-low": RecordTask(labeled=lambda r: _lbs(r) >= 200, test=lambda r: _lbs(r) <= 100),
}


def pool_name(data: str) -> str:
    """Name of the unlabeled pool `data` trains on: tasks with one name share one pool."""
    if data in CWRU_TASKS:
        return f"cwru: {CWRU_TASKS[data].pool_name}"
    return f"mfpt: {MFPT_TASKS[data].pool_name}" if data in MFPT_TASKS else data


def cwru_split(cfg: TrainConfig, rng: np.random.Generator) -> Split:
    """CWRU 12k drive end, time-block split inside every record; which records give labels,
    test windows and the pool is `CWRU_TASKS[cfg.data]` (described in DATA_DESCRIPTIONS)."""
    from train.cwru import size_label

    if cfg.data not in CWRU_TASKS:
        raise ValueError(f"data {cfg.data!r} is not a CWRU task; valid: {', '.join(CWRU_TASKS)}")
    task = CWRU_TASKS[cfg.data]
    records = cwru_records(cfg)
    if task.ten_class:
        names = ["normal"] + [f"{loc}_{s:03d}" for loc in LOCATION_CLASSES[1:] for s in (7, 14, 21)]
        label_of: Callable[[Record], str] = size_label
    else:
        names, label_of = LOCATION_CLASSES, lambda r: r.label
    return task_split(cfg, rng, task, records, names, label_of)


def mfpt_split(cfg: TrainConfig, rng: np.random.Generator) -> Split:
    """MFPT inner vs outer race, time-block split inside every record; which records give
    labels, test windows and the pool is `MFPT_TASKS[cfg.data]`."""
    task = MFPT_TASKS[cfg.data]
    return task_split(cfg, rng, task, mfpt_records(cfg), MFPT_CLASSES, lambda r: r.label)


def task_split(
    cfg: TrainConfig,
    rng: np.random.Generator,
    task: RecordTask,
    records: list[Record],
    names: list[str],
    label_of: Callable[[Record], str],
) -> Split:
    """`split_records` with the task's filters, described as DATA_DESCRIPTIONS[cfg.data]."""
    split = split_records(
        records,
        names,
        cfg,
        rng,
        label_of=label_of,
        labeled_filter=task.labeled,
        test_filter=task.test,
        pool_filter=task.pool,
    )
    split.description["task"] = DATA_DESCRIPTIONS[cfg.data]
    return split


def raw_test_records(cfg: TrainConfig) -> list[Record]:
    """The raw signal (g) behind the test windows of `cfg.data`'s split, one Record per test
    stretch (a CWRU record's test block, a whole simulated test record), meta kept (rpm), plus
    meta["test_block"] = [first, end) sample of the stretch in its record. For methods that
    need the signal rather than normalized windows (envelope analysis)."""
    if cfg.data == "sim-reference":
        return [
            Record(
                r.record_id,
                r.signal,
                r.sample_rate_hz,
                r.label,
                {**r.meta, "test_block": [0, r.signal.shape[0]]},
            )
            for r in _sim_test_records(cfg)
        ]
    if cfg.data == "recordings":
        records = [r for r in manifest_records(cfg) if r.label and not is_excerpt(r)]
        keep: Callable[[Record], bool] = _every
    elif cfg.data in MFPT_TASKS:
        records, keep = mfpt_records(cfg), MFPT_TASKS[cfg.data].test
    else:
        records = cwru_records(cfg)
        keep = CWRU_TASKS[cfg.data].test
    out = []
    for r in records:
        block = time_blocks(r, 0, cfg.window).get("test")
        if keep(r) and block is not None:
            lo, hi = block.start, block.start + block.signal.shape[0]
            meta = {**r.meta, "test_block": [lo, hi]}
            out.append(Record(r.record_id, block.signal, r.sample_rate_hz, r.label, meta))
    return out


def manifest_records(cfg: TrainConfig) -> list[Record]:
    """The recordings of `manifest` and `labels_manifest`, at the training rate, excerpts cut to
    their stretch. ValueError when both list the same recording."""
    from train.recordings import at_rate, load_manifest

    records = load_manifest(cfg.manifest)  # type: ignore[arg-type]
    if cfg.labels_manifest is not None:
        extra = load_manifest(cfg.labels_manifest)
        listed = {_identity(r): r.meta["where"] for r in records}
        for r in extra:
            if _identity(r) in listed:
                raise ValueError(
                    f"{r.meta['where']}: path: {r.record_id!r} is already listed in "
                    f"{listed[_identity(r)]}"
                )
        unlabeled = sum(not r.label for r in extra)
        if unlabeled:
            logger.info(
                "%s: %d of %d rows have no label; they join the unlabeled pool",
                cfg.labels_manifest,
                unlabeled,
                len(extra),
            )
        records += extra
    return [at_rate(r, cfg.sample_rate_hz) for r in records]


def _identity(record: Record) -> tuple[str, tuple[float, ...]]:
    """What a manifest row reads: the file (and column), and the excerpt's times if any."""
    return record.meta["source_id"], tuple(record.meta.get("excerpt_s", ()))


def recordings_split(cfg: TrainConfig, rng: np.random.Generator, need_labels: bool = True) -> Split:
    """A plant's recordings: labeled ones are time-block split; unlabeled ones join the pool;
    every window of a labeled excerpt (the operator picked it) joins the labeled windows."""
    records = manifest_records(cfg)
    for r in records:
        if r.signal.shape[0] < cfg.window and is_excerpt(r):
            raise ValueError(
                f"{r.meta['where']}: start_s, end_s: the excerpt holds {r.signal.shape[0]} "
                f"samples at {cfg.sample_rate_hz} Hz, less than one {cfg.window}-sample window"
            )
    whole = [r for r in records if r.label and not is_excerpt(r)]
    excerpts = [r for r in records if r.label and is_excerpt(r)]
    if need_labels and not whole:
        raise ValueError(
            f"{cfg.manifest}: no whole recording has a label ({len(excerpts)} labeled "
            "excerpts): label at least one (a row without start_s, end_s); the last 30 % of a "
            "labeled recording tests the model and checks its INT8 export"
        )
    _check_excerpts_against_whole(records, whole)
    names = sorted({r.label for r in whole + excerpts}, key=lambda n: (n != "normal", n))
    labeled_spans = _labeled_spans(excerpts, cfg.sample_rate_hz)
    extra = [
        piece
        for r in records
        if not r.label
        for piece in _unlabeled_pieces(r, labeled_spans.get(r.meta["source_id"], []))
    ]
    split = split_records(whole, names, cfg, rng, label_of=lambda r: r.label, extra_pool=extra)
    picked = _excerpt_windows(excerpts, records, names, cfg)
    split.labeled = WindowSet.concat([split.labeled, *picked], cfg.window)
    split.description["labeled_excerpts"] = [
        {"record": r.record_id, "label": r.label, "windows": len(w)}
        for r, w in zip(excerpts, picked, strict=True)
    ]
    untested = [name for i, name in enumerate(names) if not (split.test.y == i).any()]
    if need_labels and untested:
        logger.warning(
            "no test windows of %s: a labeled whole recording of each would measure them",
            ", ".join(untested),
        )
    if extra:
        split.description["unlabeled_records"] = list(dict.fromkeys(s.record_id for s in extra))
    split.description["sources"] = {
        r.record_id: {"row": manifest_row(r), "first_s": r.meta["first_s"]} for r in records
    }
    return split


def _labeled_spans(excerpts: list[Record], rate: int) -> dict[str, list[tuple[int, int]]]:
    """Per file, the sample ranges (at `rate`, from the file's start) its labeled excerpts hold."""
    spans: dict[str, list[tuple[int, int]]] = {}
    for r in excerpts:
        lo = round(r.meta["first_s"] * rate)
        spans.setdefault(r.meta["source_id"], []).append((lo, lo + r.signal.shape[0]))
    return spans


def _unlabeled_pieces(record: Record, labeled: list[tuple[int, int]]) -> list[Segment]:
    """An unlabeled record as pool segments, less the stretches labeled by excerpts of its file
    (so the pool, and the windows `suggest` proposes, hold no labeled window)."""
    first = round(record.meta["first_s"] * record.sample_rate_hz)  # the record in its file
    cuts = sorted((max(lo - first, 0), hi - first) for lo, hi in labeled if hi > first)
    pieces, start = [], 0
    for lo, hi in [*cuts, (record.signal.shape[0], record.signal.shape[0])]:
        if lo > start:
            pieces.append(Segment(record.record_id, record.signal[start:lo], -1, start))
        start = max(start, hi)
    return pieces


def _excerpt_windows(
    excerpts: list[Record], records: list[Record], names: list[str], cfg: TrainConfig
) -> list[WindowSet]:
    """Every non-overlapping window of each labeled excerpt, under its file's record id (one
    recording is one file, for train.monitor's leave-one-recording-out)."""
    file_ids = {r.meta["source_id"]: r.record_id for r in records if not is_excerpt(r)}
    windows = []
    for r in excerpts:
        file_id = file_ids.get(r.meta["source_id"], r.meta["source_id"])
        segment = Segment(file_id, r.signal, names.index(r.label), 0)
        windows.append(windows_of(segment, cfg.window, cfg.window, cfg.normalization))
    return windows


def _check_excerpts_against_whole(records: list[Record], whole: list[Record]) -> None:
    """An excerpt of a labeled whole recording must lie in its train block (a window from its
    validation or test block would leak into training) and carry its label, if any."""
    of_file = {r.meta["source_id"]: r for r in whole}
    for r in records:
        span, source = r.meta.get("excerpt_s"), of_file.get(r.meta["source_id"])
        if span is None or source is None:
            continue
        train_end_s = TRAIN_END * source.duration_s
        if span[1] > train_end_s:
            raise ValueError(
                f"{r.meta['where']}: end_s: {span[1]:g} s reaches past the train block "
                f"(0-{train_end_s:g} s) of {source.record_id} ({source.meta['where']}), a labeled "
                "recording whose later windows validate and test the model"
            )
        if r.label and r.label != source.label:
            raise ValueError(
                f"{r.meta['where']}: label: {r.label!r}, but the whole recording is "
                f"{source.label!r} ({source.meta['where']})"
            )


def cwru_records(cfg: TrainConfig) -> list[Record]:
    """The CWRU records under the configured data root, from the configured accelerometer."""
    from train.cwru import default_data_root, load_cwru

    root = cfg.data_root or default_data_root()
    return load_cwru(root, sample_rate_hz=cfg.sample_rate_hz, channel=cfg.cwru_channel)


def machine_geometry(cfg: TrainConfig) -> BearingGeometry:
    """The monitored bearing: the configured designation (CWRU's drive end and the simulator's
    default: a 6205); MFPT's rig, whose bearing is no catalogue designation, has its own."""
    from edge_agent.physics.evidence import bearing_geometry
    from train.mfpt import MFPT_GEOMETRY

    return MFPT_GEOMETRY if cfg.data in MFPT_TASKS else bearing_geometry(cfg.bearing)


def mfpt_records(cfg: TrainConfig) -> list[Record]:
    """The MFPT records under `<data_root>/mfpt`, at the configured sample rate."""
    from train.cwru import default_data_root
    from train.mfpt import load_mfpt, mfpt_root

    return load_mfpt(mfpt_root(cfg.data_root or default_data_root()), cfg.sample_rate_hz)

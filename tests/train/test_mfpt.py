"""MFPT loader and tasks: .mat files in the MathWorks copy's layout (made here; the real clone is
read when present under <data root>/mfpt), the cross-load tasks hold out the loads they name, and
a file that is not an MFPT record is refused by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from train.config import load_config
from train.cwru import default_data_root
from train.data import MFPT_TASKS, build_split, raw_test_records
from train.mfpt import MFPT_GEOMETRY, load_mfpt, mfpt_root

RATE, SHAFT_HZ = 48828, 25.0
IR_LOADS, OR_LOADS = (0, 50, 100, 150, 200, 250, 300), (25, 50, 100, 150, 200, 250, 300)


def write_record(path: Path, load: int, seconds: float = 3.0, seed: int = 0) -> None:
    """One record as MathWorks stores it: a struct `bearing` with gs (g), sr, rate, load."""
    gs = np.random.default_rng(seed).standard_normal(int(seconds * RATE)) * 0.5
    path.parent.mkdir(parents=True, exist_ok=True)
    bearing = {"gs": gs, "sr": RATE, "rate": SHAFT_HZ, "load": load}
    scipy.io.savemat(path, {"bearing": bearing, "BPFO": 81.125, "BPFI": 118.875})


def write_clone(data_root: Path) -> Path:
    """`data_root` with an mfpt/ holding the copy's 14 varying-load records in its two folders
    (and a baseline file that is no varying-load record)."""
    root = mfpt_root(data_root)
    for kind, loads in (("Inner", IR_LOADS), ("Outer", OR_LOADS)):
        for i, load in enumerate(loads, start=1):
            folder = "train_data" if i <= 5 else "test_data"
            write_record(root / folder / f"{kind}RaceFault_vload_{i}.mat", load, seed=i)
    (root / "train_data" / "baseline_1.mat").write_text(
        "version https://git-lfs.github.com/spec/v1"
    )
    return data_root


@pytest.fixture
def mfpt_folder(tmp_path: Path) -> Path:
    return write_clone(tmp_path)


def test_records_carry_label_load_and_speed_at_the_asked_rate(mfpt_folder: Path) -> None:
    records = load_mfpt(mfpt_root(mfpt_folder), 12_000)
    assert len(records) == 14  # the LFS pointer is not an MFPT record name: not read
    assert sorted(r.meta["load_lbs"] for r in records if r.label == "inner_race") == list(IR_LOADS)
    assert sorted(r.meta["load_lbs"] for r in records if r.label == "outer_race") == list(OR_LOADS)
    assert len({r.record_id for r in records}) == 14
    for r in records:
        assert r.sample_rate_hz == 12_000 and r.shaft_hz == SHAFT_HZ
        assert abs(r.signal.shape[0] - 3.0 * 12_000) <= 1
    native = load_mfpt(mfpt_root(mfpt_folder))
    assert {r.sample_rate_hz for r in native} == {RATE}


def test_the_rig_geometry_gives_the_data_sets_own_defect_frequencies() -> None:
    orders = MFPT_GEOMETRY.fault_orders()
    assert orders["bpfo"] * SHAFT_HZ == pytest.approx(81.125, abs=0.1)
    assert orders["bpfi"] * SHAFT_HZ == pytest.approx(118.875, abs=0.1)


def test_a_file_that_is_not_an_mfpt_record_is_refused_by_name(tmp_path: Path) -> None:
    bad = tmp_path / "train_data" / "InnerRaceFault_vload_1.mat"
    bad.parent.mkdir(parents=True)
    bad.write_text("version https://git-lfs.github.com/spec/v1")  # a clone without LFS
    with pytest.raises(ValueError, match=r"InnerRaceFault_vload_1\.mat"):
        load_mfpt(tmp_path)
    with pytest.raises(FileNotFoundError, match="clone"):
        load_mfpt(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("data", "labeled", "tested"),
    [
        ("mfpt-low-to-high", lambda lbs: lbs <= 100, lambda lbs: lbs >= 200),
        ("mfpt-high-to-low", lambda lbs: lbs >= 200, lambda lbs: lbs <= 100),
        ("mfpt-2class", lambda lbs: True, lambda lbs: True),
    ],
)
def test_cross_load_tasks_label_and_test_the_loads_they_name(
    mfpt_folder: Path, data, labeled, tested
) -> None:
    cfg = load_config(None, [f"data={data}", f"data_root={mfpt_folder}", "labels_per_class=5"])
    split = build_split(cfg)
    loads = {f"mfpt-{k}R-{lbs}": lbs for k, ls in (("I", IR_LOADS), ("O", OR_LOADS)) for lbs in ls}
    assert split.class_names == ["inner_race", "outer_race"]
    assert np.bincount(split.labeled.y).tolist() == [5, 5]
    assert {loads[r] for r in split.labeled.record_ids} <= {x for x in loads.values() if labeled(x)}
    assert {loads[r] for r in split.test.record_ids} == {x for x in loads.values() if tested(x)}
    assert {s.record_id for s in split.pool.segments} == set(loads)  # the pool: every record
    raw = raw_test_records(cfg)
    assert {r.record_id for r in raw} == set(split.test.record_ids)
    assert all(r.shaft_hz == SHAFT_HZ for r in raw)


def test_every_mfpt_task_is_a_data_name() -> None:
    from typing import get_args

    from train.config import DataName

    assert set(MFPT_TASKS) <= set(get_args(DataName))


real = mfpt_root(default_data_root())


@pytest.mark.skipif(not real.is_dir(), reason=f"MFPT clone not found at {real}")
@pytest.mark.realdata
def test_the_real_clone_has_seven_records_of_each_fault() -> None:
    records = load_mfpt(real)
    assert [r.label for r in records].count("inner_race") == 7
    assert [r.label for r in records].count("outer_race") == 7
    assert {r.sample_rate_hz for r in records} == {RATE}

"""The reference scenario: a labeled lab at 1500 rpm and a drifting, mostly healthy plant pool."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest

from train.scenarios import CLASS_NAMES, lab_records, production_records


@pytest.fixture(scope="module")
def lab():
    return lab_records(3, 0.5, seed=0)


@pytest.fixture(scope="module")
def production():
    return production_records(60, 0.5, seed=0, months=6)


def test_lab_has_each_class_at_1500_rpm(lab) -> None:
    assert Counter(r.label for r in lab) == {name: 3 for name in CLASS_NAMES}
    assert {r.meta["rpm"] for r in lab} == {1500.0}
    assert {r.meta["condition"] for r in lab} == {"lab"}
    assert all(r.sample_rate_hz == 12_000 and r.signal.shape == (6000,) for r in lab)
    assert all(r.signal.dtype == np.float32 for r in lab)
    loads = [r.meta["load"] for r in lab]
    assert len(set(loads)) == len(loads) and all(0 <= x <= 1 for x in loads)
    faults = [r for r in lab if r.label != "normal"]
    assert all(0.3 <= r.meta["severity"] <= 0.9 for r in faults)


def test_record_ids_unique_and_stable(lab) -> None:
    ids = [r.record_id for r in lab]
    assert len(set(ids)) == len(ids)
    assert "lab-s0-ball-002" in ids
    again = lab_records(3, 0.5, seed=0)
    assert ids == [r.record_id for r in again]
    np.testing.assert_array_equal(lab[5].signal, again[5].signal)
    other = lab_records(3, 0.5, seed=1)
    assert other[0].record_id == "lab-s1-normal-000"
    assert not np.allclose(other[5].signal, lab[5].signal)


def test_faults_are_more_impulsive_than_normal(lab) -> None:
    def kurtosis(x: np.ndarray) -> float:
        x = x - x.mean()
        return float(np.mean(x**4) / np.mean(x**2) ** 2)

    normal = max(kurtosis(r.signal) for r in lab if r.label == "normal")
    faults = [kurtosis(r.signal) for r in lab if r.label != "normal"]
    assert normal < 4 and min(faults) > normal


def test_production_is_mostly_normal_over_speeds_and_months(production) -> None:
    counts = Counter(r.label for r in production)
    assert counts["normal"] == 54 and sum(counts.values()) == 60
    assert all(counts[name] == 2 for name in CLASS_NAMES[1:])
    rpm = np.array([r.meta["rpm"] for r in production])
    assert rpm.min() >= 1200 and rpm.max() <= 1800 and rpm.std() > 100
    months = np.array([r.meta["month"] for r in production])
    assert months.min() >= 0 and months.max() <= 6 and months.max() - months.min() > 3
    assert {r.meta["condition"] for r in production} == {"production"}
    assert len({r.record_id for r in production}) == 60


def test_sensor_drifts_with_months(production) -> None:
    early = [r for r in production if r.meta["month"] < 1]
    late = [r for r in production if r.meta["month"] > 5]
    assert early and late
    assert max(abs(r.meta["gain"] - 1) for r in early) < 0.06
    assert max(abs(r.meta["gain"] - 1) for r in late) > 0.1
    assert np.mean([r.meta["noise_floor_g"] for r in late]) > np.mean(
        [r.meta["noise_floor_g"] for r in early]
    )
    # DC offset shows up in the signal itself, not only in meta.
    drifted = max(production, key=lambda r: abs(r.meta["dc_offset_g"]))
    assert float(np.mean(drifted.signal)) == pytest.approx(drifted.meta["dc_offset_g"], abs=0.01)


def test_some_production_records_clip() -> None:
    pool = production_records(200, 0.05, seed=3)
    clipped = [r for r in pool if r.meta["clip_g"] is not None]
    assert 1 <= len(clipped) <= 30
    for r in clipped:
        assert np.abs(r.signal).max() <= np.float32(r.meta["clip_g"])


def test_production_faults_are_milder_than_lab() -> None:
    lab = lab_records(10, 0.05, seed=2)
    pool = production_records(200, 0.05, seed=2, normal_fraction=0.5)
    lab_sev = np.mean([r.meta["severity"] for r in lab if r.label != "normal"])
    prod_sev = np.mean([r.meta["severity"] for r in pool if r.label != "normal"])
    assert prod_sev < lab_sev - 0.05  # expected gap 0.15 (0.3-0.9 vs 0.2-0.7)


def test_benchmark_sizes_are_cheap() -> None:
    start = time.perf_counter()
    records = production_records(100, 1.0, seed=0)  # a fifth of the benchmark's pool
    assert len(records) == 100
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_records": 0}, "n_records"),
        ({"duration_s": 0.0}, "duration_s"),
        ({"normal_fraction": 1.5}, "normal_fraction"),
        ({"months": -1}, "months"),
    ],
)
def test_bad_arguments_name_the_field(kwargs: dict, field: str) -> None:
    args = {"n_records": 4, "duration_s": 0.1, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=field):
        production_records(**args)

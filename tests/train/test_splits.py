"""Splits never leak: time blocks are disjoint with a gap, labels come from train blocks only."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from train.config import load_config
from train.data import build_split
from train.records import Record
from train.splits import Segment, SegmentPool, WindowSet, split_records, time_blocks, windows_of

W = 64


def records(n_per_class: int, length: int, seed: int = 0) -> list[Record]:
    rng = np.random.default_rng(seed)
    return [
        Record(
            f"{label}-{i}",
            rng.normal(size=length).astype(np.float32) + c,
            12_000,
            label,
            {"load_hp": i % 4},
        )
        for c, label in enumerate(["normal", "inner_race", "outer_race", "ball"])
        for i in range(n_per_class)
    ]


@settings(max_examples=40, deadline=None)
@given(length=st.integers(4 * W, 5000))
def test_time_blocks_are_disjoint_ordered_and_separated_by_a_window(length):
    rec = Record("r", np.zeros(length, np.float32), 12_000, "normal")
    blocks = time_blocks(rec, 0, W)
    spans = [
        (blocks[k].start, blocks[k].start + len(blocks[k].signal))
        for k in ("train", "val", "test")
        if k in blocks
    ]
    for (_, a1), (b0, _) in itertools.pairwise(spans):
        assert b0 - a1 >= W  # no window can straddle two blocks
    assert spans[-1][1] <= length


def test_labeled_windows_come_from_train_blocks_and_test_from_test_blocks():
    cfg = load_config(None, None, data="cwru-4class", labels_per_class=3, window=W, hop=W // 2)
    recs = records(2, 3000)
    split = split_records(
        recs,
        ["normal", "inner_race", "outer_race", "ball"],
        cfg,
        np.random.default_rng(0),
        label_of=lambda r: r.label,
    )
    blocks = split.description["records"]
    for item in split.description["labeled_windows"]:
        lo, hi = blocks[item["record"]]["train"]
        assert lo <= item["start"] and item["start"] + W <= hi
    assert np.bincount(split.labeled.y, minlength=4).tolist() == [3, 3, 3, 3]
    assert len(split.test) > 0 and set(split.test.record_ids) <= {r.record_id for r in recs}
    # the unlabeled pool only holds train-block samples
    for seg in split.pool.segments:
        lo, hi = blocks[seg.record_id]["train"]
        assert seg.start == lo and seg.start + len(seg.signal) == hi


def test_crossload_labels_from_load0_test_on_load3():
    cfg = load_config(None, None, data="cwru-crossload", labels_per_class=2, window=W, hop=W)
    recs = records(4, 2000)
    split = split_records(
        recs,
        ["normal", "inner_race", "outer_race", "ball"],
        cfg,
        np.random.default_rng(0),
        label_of=lambda r: r.label,
        labeled_filter=lambda r: r.meta["load_hp"] == 0,
        test_filter=lambda r: r.meta["load_hp"] == 3,
    )
    assert {item["record"].split("-")[-1] for item in split.description["labeled_windows"]} == {"0"}
    assert {rid.split("-")[-1] for rid in split.test.record_ids} == {"3"}
    assert len({s.record_id for s in split.pool.segments}) == len(recs)  # pool: all loads


def test_pool_sampling_is_deterministic_and_normalized():
    pool = SegmentPool([Segment("a", np.arange(1000, dtype=np.float32), -1, 0)], W, W, "zscore")
    x1 = pool.sample(8, np.random.default_rng(3))
    x2 = pool.sample(8, np.random.default_rng(3))
    np.testing.assert_array_equal(x1, x2)
    assert x1.shape == (8, 1, W)
    np.testing.assert_allclose(x1.mean(-1), 0, atol=1e-5)
    with pytest.raises(ValueError, match="pool is empty"):
        SegmentPool([Segment("b", np.zeros(10, np.float32), -1, 0)], W, W, "zscore")


def test_pool_windows_keep_each_window_s_record_and_speed_when_thinned():
    segments = [
        Segment("slow", np.arange(2000, dtype=np.float32), 1, 0, shaft_hz=20.0),
        Segment("fast", np.arange(2000, dtype=np.float32), 2, 0, shaft_hz=30.0),
    ]
    pool = SegmentPool(segments, W, W, "zscore")
    every, thinned = pool.windows(), pool.windows(limit=5)
    assert len(thinned) == 5 < len(every)
    assert thinned.shaft_hz is not None
    speed_of = {"slow": 20.0, "fast": 30.0}
    assert list(thinned.shaft_hz) == [speed_of[r] for r in thinned.record_ids]
    assert list(thinned.y) == [1 if r == "slow" else 2 for r in thinned.record_ids]


def test_sim_reference_split_separates_records():
    cfg = load_config(
        None,
        None,
        labels_per_class=4,
        unlabeled_windows=50,
        sim_seconds_per_record=1.0,
        window=512,
        hop=256,
    )
    split = build_split(cfg)
    desc = split.description
    assert not set(desc["lab_records"]) & set(desc["test_records"])
    assert set(split.test.record_ids) == set(desc["test_records"])
    assert np.bincount(split.labeled.y, minlength=4).tolist() == [4, 4, 4, 4]
    assert len(split.pool) >= 50


@settings(max_examples=20, deadline=None)
@given(
    lengths=st.lists(st.integers(64, 300), min_size=1, max_size=5),
    n=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
def test_pool_crops_are_normalized_slices_of_the_segments(lengths, n, seed):
    from edge_agent.contract.preprocess import normalize

    rng = np.random.default_rng(seed)
    segments = [
        Segment(f"r{i}", rng.standard_normal(length).astype(np.float32), -1, 0)
        for i, length in enumerate(lengths)
    ]
    pool = SegmentPool(segments, 64, 32, "zscore")
    crops = pool.sample(n, np.random.default_rng(seed))
    every = np.concatenate(
        [normalize(np.lib.stride_tricks.sliding_window_view(s.signal, 64)) for s in segments]
    )[:, 0]
    assert crops.shape == (n, 1, 64)
    distance = np.abs(crops[:, 0][:, None, :] - every[None]).max(-1).min(1)
    assert distance.max() < 1e-4  # every crop is one valid window of one segment


def test_pool_batches_come_ahead_on_cuda_and_plain_on_cpu():
    import torch

    from train.loop import pool_batches

    counter = itertools.count()
    batches = pool_batches(
        lambda: np.full((2, 1, 8), next(counter), np.float32), torch.device("cpu")
    )
    assert [int(next(batches)[0, 0, 0]) for _ in range(3)] == [0, 1, 2]
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device for the prefetching path")
    counter = itertools.count()
    batches = pool_batches(
        lambda: np.full((2, 1, 8), next(counter), np.float32), torch.device("cuda")
    )
    first = [next(batches) for _ in range(3)]
    assert all(b.is_cuda for b in first) and [int(b[0, 0, 0]) for b in first] == [0, 1, 2]


# -- generalization splits on a CWRU-like folder (synthetic, and the real one when present) ----

CWRU_FAULTS = [(loc, size) for loc in ("IR", "B", "OR") for size in (7, 14, 21)]


def _write_cwru_like(root, length: int = 3000) -> None:
    """Every CWRU file name (3 locations x 3 sizes x 4 loads + the load-0 normal), short noise."""
    (root / "cwru" / "normal").mkdir(parents=True)
    (root / "cwru" / "12k_DE").mkdir()
    rng = np.random.default_rng(0)
    files = [("normal", 0, 0, 97, root / "cwru" / "normal" / "Normal_0_97.npz")]
    number = 100
    for loc, size in CWRU_FAULTS:
        for load in range(4):
            number += 1
            tag = f"{loc}{size:03d}{'at6' if loc == 'OR' else ''}_{load}_{number}.npz"
            files.append((loc, size, load, number, root / "cwru" / "12k_DE" / tag))
    for loc, size, load, number, path in files:
        np.savez(
            path,
            DE=rng.normal(size=length).astype(np.float32),
            FE=rng.normal(size=length).astype(np.float32),
            fs=12_000,
            rpm=1797.0 - 20 * load,
            fault_location=loc,
            fault_size_in=size / 1000,
            load_hp=load,
            file_number=number,
        )


@pytest.fixture(params=["synthetic", "real"])
def cwru_root(request, tmp_path):
    if request.param == "real":
        from train.cwru import default_data_root

        root = default_data_root()
        if not (root / "cwru" / "12k_DE").is_dir():
            pytest.skip(f"real CWRU records not found under {root / 'cwru'}")
        return root, 2048
    _write_cwru_like(tmp_path)
    return tmp_path, W


def _cwru_split(root, window: int, data: str, labels: int = 3):
    cfg = load_config(
        None, None, data=data, data_root=root, labels_per_class=labels, window=window, hop=window
    )
    return cfg, build_split(cfg)


def _size(record_id: str) -> str:
    """'cwru-IR014-2-171' -> '014'; the normal record -> ''."""
    name = record_id.split("-")[1]
    return "" if name == "Normal" else name[-3:]


def _load(record_id: str) -> int:
    return int(record_id.split("-")[2])


def test_unseen_bearing_holds_out_the_014_records_everywhere_but_test(cwru_root):
    root, window = cwru_root
    _, split = _cwru_split(root, window, "cwru-unseen-bearing")
    desc = split.description
    seen = (
        set(desc["labeled_records"])
        | {item["record"] for item in desc["labeled_windows"]}
        | set(split.val.record_ids)
        | {s.record_id for s in split.pool.segments}
        | set(desc["pool_records"])
    )
    assert seen and not [rid for rid in seen if _size(rid) == "014"]
    assert {_size(rid) for rid in seen} == {"", "007", "021"}
    assert {_load(rid) for rid in seen} == {0, 1, 2, 3}  # every load gives labels
    normal = split.class_names.index("normal")
    test = zip(split.test.record_ids, split.test.y, strict=True)
    fault_test = {rid for rid, y in test if y != normal}
    assert {_size(rid) for rid in fault_test} == {"014"}
    assert len(fault_test) == 12  # every 0.014 in record, 3 locations x 4 loads
    assert (split.test.y == normal).any()  # the normal record's test block
    assert np.bincount(split.labeled.y, minlength=4).tolist() == [3, 3, 3, 3]


@pytest.mark.parametrize(
    ("data", "labels_from", "tested"), [("cwru-crossload", 0, 3), ("cwru-crossload-3to0", 3, 0)]
)
def test_crossload_puts_each_load_on_its_side(cwru_root, data, labels_from, tested):
    root, window = cwru_root
    _, split = _cwru_split(root, window, data)
    labeled = [item["record"] for item in split.description["labeled_windows"]]
    assert {_load(rid) for rid in labeled if _size(rid)} == {labels_from}
    assert {_load(rid) for rid in split.test.record_ids} == {tested}
    fault_test = {rid for rid in split.test.record_ids if _size(rid)}
    assert len(fault_test) == 9  # every fault record at that load
    normal_labeled = any(not _size(rid) for rid in labeled)
    assert normal_labeled  # the one normal record (load 0) gives the normal labels
    assert len({s.record_id for s in split.pool.segments}) == 37  # pool: every load


def test_leave_one_load_out_tests_each_load_once(cwru_root):
    root, window = cwru_root
    tested: list[str] = []
    for k in range(4):
        _, split = _cwru_split(root, window, f"cwru-lolo-{k}")
        labeled = {item["record"] for item in split.description["labeled_windows"]}
        assert k not in {_load(rid) for rid in labeled if _size(rid)}
        assert {_load(rid) for rid in labeled if _size(rid)} == {0, 1, 2, 3} - {k}
        fault_test = {rid for rid in split.test.record_ids if _size(rid)}
        assert {_load(rid) for rid in fault_test} == {k}
        assert "normal" in {split.class_names[y] for y in split.test.y}  # by time block
        tested += sorted(fault_test)
    assert len(tested) == len(set(tested)) == 36  # every fault record tested exactly once


def test_raw_test_records_are_the_test_blocks_of_the_split(cwru_root):
    from train.data import raw_test_records

    root, window = cwru_root
    cfg, split = _cwru_split(root, window, "cwru-unseen-bearing")
    raw = raw_test_records(cfg)
    assert {r.record_id for r in raw} == set(split.test.record_ids)
    for r in raw:
        assert r.meta["test_block"] == split.description["records"][r.record_id]["test"]
        assert r.signal.shape[0] == r.meta["test_block"][1] - r.meta["test_block"][0]
        assert r.meta["rpm"] > 0


def test_every_data_name_is_described_and_every_cwru_task_is_a_data_name():
    from typing import get_args

    from train.config import DATA_DESCRIPTIONS, DataName
    from train.data import CWRU_TASKS

    assert set(DATA_DESCRIPTIONS) == set(get_args(DataName))
    assert set(CWRU_TASKS) <= set(get_args(DataName))


@settings(max_examples=30, deadline=None)
@given(
    lengths=st.lists(st.integers(W, 6 * W), min_size=1, max_size=4),
    hop=st.sampled_from([W // 4, W // 2, W]),
    limit=st.one_of(st.none(), st.integers(1, 40)),
)
def test_pool_windows_are_the_hop_spaced_windows_of_every_segment_thinned_evenly(
    lengths, hop, limit
):
    rng = np.random.default_rng(len(lengths))
    segments = [
        Segment(f"r{i}", rng.normal(size=n).astype(np.float32), i, 0, shaft_hz=20.0 + i)
        for i, n in enumerate(lengths)
    ]
    pool = SegmentPool(segments, W, hop, "zscore")
    every = WindowSet.concat([windows_of(s, W, hop, "zscore") for s in segments], W)
    keep = np.arange(len(every))
    if limit is not None and limit < len(every):
        keep = np.linspace(0, len(every) - 1, limit).astype(int)
    got = pool.windows(limit)
    np.testing.assert_array_equal(got.x, every.x[keep])
    np.testing.assert_array_equal(got.y, every.y[keep])
    assert got.record_ids == [every.record_ids[i] for i in keep]
    np.testing.assert_array_equal(got.shaft_hz, every.shaft_hz[keep])

"""Sharded window pools: round trip, streaming writes, memory maps and per-rank batches."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from train.shards import ShardedWindows, write_shards

W = 32


def labelled_chunks(sizes: list[int]) -> Iterator[np.ndarray]:
    """Chunks whose window i is filled with the value i, so a read window names its index."""
    start = 0
    for n in sizes:
        values = np.arange(start, start + n, dtype=np.float32)
        yield np.broadcast_to(values[:, None, None], (n, 1, W)).copy()
        start += n


def ids(windows: np.ndarray) -> np.ndarray:
    return windows[:, 0, 0].astype(np.int64)


@pytest.fixture
def pool(tmp_path: Path) -> ShardedWindows:
    return ShardedWindows(
        write_shards(labelled_chunks([7, 13, 1, 30, 0, 9]), tmp_path / "pool", shard_size=16)
    )


def test_round_trip_and_index(pool: ShardedWindows) -> None:
    assert len(pool) == 60 and pool.num_shards == 4
    everything = pool[np.arange(60)]
    assert everything.dtype == np.float32 and everything.shape == (60, 1, W)
    np.testing.assert_array_equal(everything, np.concatenate(list(labelled_chunks([60]))))
    index = json.loads((pool.folder / "index.json").read_text())
    assert index["window"] == W and index["dtype"] == "float32" and index["total"] == 60
    assert [s["count"] for s in index["shards"]] == [16, 16, 16, 12]
    assert sorted(p.name for p in pool.folder.glob("shard-*.npy")) == [
        f"shard-0000{i}.npy" for i in range(4)
    ]


def test_indexing_by_int_array_and_negative(pool: ShardedWindows) -> None:
    assert pool[17].shape == (1, W) and pool[17][0, 0] == 17
    assert pool[-1][0, 0] == 59
    np.testing.assert_array_equal(ids(pool[np.array([50, 3, 17, 3, -2])]), [50, 3, 17, 3, 58])
    with pytest.raises(IndexError, match="60 windows"):
        pool[np.array([5, 60])]


def test_shards_are_memory_mapped(pool: ShardedWindows) -> None:
    shard = pool.shard(1)
    assert isinstance(shard, np.memmap) and shard.shape == (16, 1, W)
    assert isinstance(np.load(pool.files[0], mmap_mode="r"), np.memmap)


def test_write_streams_shards_before_the_input_ends(tmp_path: Path) -> None:
    folder = tmp_path / "pool"

    def chunks() -> Iterator[np.ndarray]:
        yield np.zeros((20, 1, W), np.float32)
        # 16 of the first 20 windows must already be on disk: nothing waits for the end.
        assert (folder / "shard-00000.npy").exists()
        yield np.ones((5, 1, W), np.float32)

    write_shards(chunks(), folder, shard_size=16)
    assert len(ShardedWindows(folder)) == 25


def test_batches_are_deterministic_shuffled_and_local(pool: ShardedWindows) -> None:
    first = [ids(b) for b in pool.batches(8, seed=1, epoch=0)]
    again = [ids(b) for b in pool.batches(8, seed=1, epoch=0)]
    other = [ids(b) for b in pool.batches(8, seed=1, epoch=1)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    flat = np.concatenate(first)
    assert sorted(flat) == list(range(60)) and not np.array_equal(flat, np.arange(60))
    assert all(len(set(b // 16)) <= 2 for b in first), "a batch should read from one or two shards"
    batch = next(pool.batches(8, seed=1, epoch=0))
    assert batch.dtype == np.float32 and batch.shape == (8, 1, W)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_disjoint_equal_batches(pool: ShardedWindows, world_size: int) -> None:
    per_rank = [
        [ids(b) for b in pool.batches(5, 3, 0, rank=r, world_size=world_size)]
        for r in range(world_size)
    ]
    assert len({len(batches) for batches in per_rank}) == 1, (
        "every rank must take the same number of steps"
    )
    assert all(len({len(b) for b in step}) == 1 for step in zip(*per_rank, strict=True)), (
        "batch sizes must agree per step"
    )
    seen = np.concatenate([np.concatenate(batches) for batches in per_rank])
    assert len(np.unique(seen)) == len(seen) == 60 - 60 % world_size


def test_bad_inputs_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="width 16 differs"):
        write_shards([np.zeros((3, 1, W)), np.zeros((3, 1, 16))], tmp_path / "a")
    with pytest.raises(ValueError, match=r"\(3, 32\)"):
        write_shards([np.zeros((3, W))], tmp_path / "b")
    with pytest.raises(ValueError, match="empty"):
        write_shards(iter([]), tmp_path / "c")
    write_shards([np.zeros((3, 1, W))], tmp_path / "d")
    with pytest.raises(FileExistsError, match="already holds a pool"):
        write_shards([np.zeros((3, 1, W))], tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="write_shards"):
        ShardedWindows(tmp_path / "nothing")
    with pytest.raises(ValueError, match="rank=2"):
        next(ShardedWindows(tmp_path / "d").batches(2, 0, 0, rank=2, world_size=2))


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(0, 20), min_size=1, max_size=6), shard_size=st.integers(1, 12))
def test_any_chunking_round_trips(sizes: list[int], shard_size: int) -> None:
    total = sum(sizes)
    with tempfile.TemporaryDirectory() as tmp:
        if total == 0:
            with pytest.raises(ValueError):
                write_shards(labelled_chunks(sizes), Path(tmp), shard_size)
            return
        pool = ShardedWindows(write_shards(labelled_chunks(sizes), Path(tmp), shard_size))
        assert len(pool) == total and pool.num_shards == -(-total // shard_size)
        np.testing.assert_array_equal(ids(pool[np.arange(total)]), np.arange(total))

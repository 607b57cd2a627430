"""Unlabeled window pools larger than memory: .npy shards on disk, read through memory maps.

Layout of a pool folder:
    shard-00000.npy ...   float32 (count, 1, window) each, `shard_size` windows except the last
    index.json            {"format_version", "window", "channels", "dtype", "shard_size",
                           "total", "shards": [{"file", "count"}, ...]}

index.json is written last (atomically), so a pool without one is incomplete.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from edge_agent.contract.preprocess import PreprocessSpec

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
FORMAT_VERSION = 1


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}.npy"


def write_shards(windows_iter: Iterable[np.ndarray], folder: Path, shard_size: int = 4096) -> Path:
    """Stream chunks of windows (n, 1, W) into shards of `shard_size`; return the folder.

    Holds at most one shard (plus the chunk being consumed) in memory. Chunks may have any n;
    W must be the same throughout. Refuses a folder that already holds a pool.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    folder = Path(folder)
    if (folder / INDEX_FILE).exists():
        raise FileExistsError(f"{folder} already holds a pool ({INDEX_FILE}); pick an empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    buffer: np.ndarray | None = None
    fill, shards = 0, []

    def flush() -> None:
        nonlocal fill
        np.save(folder / _shard_name(len(shards)), buffer[:fill])
        shards.append({"file": _shard_name(len(shards)), "count": fill})
        fill = 0

    for number, chunk in enumerate(windows_iter):
        chunk = np.asarray(chunk)
        if chunk.ndim != 3 or chunk.shape[1] != 1 or not np.issubdtype(chunk.dtype, np.floating):
            raise ValueError(
                f"chunk {number}: need float windows (n, 1, W), got {chunk.dtype} {chunk.shape}"
            )
        if buffer is None:
            buffer = np.empty((shard_size, 1, chunk.shape[2]), dtype=np.float32)
        if chunk.shape[2] != buffer.shape[2]:
            raise ValueError(
                f"chunk {number}: window width {chunk.shape[2]} differs from the first chunk's "
                f"{buffer.shape[2]}; a pool holds one window size"
            )
        start = 0
        while start < len(chunk):
            take = min(shard_size - fill, len(chunk) - start)
            buffer[fill : fill + take] = chunk[start : start + take]
            fill, start = fill + take, start + take
            if fill == shard_size:
                flush()
    if buffer is None or (fill == 0 and not shards):
        raise ValueError("write_shards got no windows; the iterator was empty")
    if fill:
        flush()
    index = {
        "format_version": FORMAT_VERSION,
        "window": int(buffer.shape[2]),
        "channels": 1,
        "dtype": "float32",
        "shard_size": shard_size,
        "total": sum(s["count"] for s in shards),
        "shards": shards,
    }
    tmp = folder / (INDEX_FILE + ".tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, folder / INDEX_FILE)
    logger.info("wrote %d windows in %d shards to %s", index["total"], len(shards), folder)
    return folder


class ShardedWindows:
    """Read-only view of a pool written by `write_shards`; shards are memory-mapped on demand."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        path = self.folder / INDEX_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"no {INDEX_FILE} in {self.folder}; write the pool with write_shards"
            )
        index = json.loads(path.read_text())
        if index.get("format_version") != FORMAT_VERSION or index.get("dtype") != "float32":
            raise ValueError(
                f"{path}: need format_version {FORMAT_VERSION} and dtype float32, "
                f"got {index.get('format_version')!r} and {index.get('dtype')!r}"
            )
        self.window: int = index["window"]
        self.files = [self.folder / s["file"] for s in index["shards"]]
        self.counts = np.array([s["count"] for s in index["shards"]], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])  # (shards + 1,)
        self._maps: dict[int, np.memmap] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def num_shards(self) -> int:
        return len(self.files)

    def shard(self, i: int) -> np.memmap:
        """Shard i as a read-only memory map (count, 1, W); nothing is read until indexed."""
        if i not in self._maps:
            array = np.load(self.files[i], mmap_mode="r")
            expected = (int(self.counts[i]), 1, self.window)
            if array.shape != expected or array.dtype != np.float32:
                raise ValueError(
                    f"{self.files[i]}: expected float32 {expected} from {INDEX_FILE}, "
                    f"got {array.dtype} {array.shape}; the pool is damaged, rewrite it"
                )
            self._maps[i] = array
        return self._maps[i]

    def __getitem__(self, idx: int | np.ndarray) -> np.ndarray:
        """An int gives one window (1, W); an int array gives (n, 1, W). Negatives count back."""
        if np.ndim(idx) == 0:
            return self._read(np.array([idx]))[0]
        return self._read(np.asarray(idx))

    def _read(self, idx: np.ndarray) -> np.ndarray:
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"indices must be integers, got {idx.dtype}")
        n = len(self)
        idx = idx.astype(np.int64).ravel()
        idx = np.where(idx < 0, idx + n, idx)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(
                f"index out of range for a pool of {n} windows: {idx.min()}..{idx.max()}"
            )
        out = np.empty((len(idx), 1, self.window), dtype=np.float32)
        shard_of = np.searchsorted(self.offsets, idx, side="right") - 1
        for s in np.unique(shard_of):  # one fancy read per shard, in file order
            rows = np.flatnonzero(shard_of == s)
            local = idx[rows] - self.offsets[s]
            order = np.argsort(local, kind="stable")
            out[rows[order]] = self.shard(int(s))[local[order]]
        return out

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        """All indices for one epoch: shards in random order, each shard's windows shuffled."""
        rng = np.random.default_rng([seed, epoch])
        parts = [
            self.offsets[s] + rng.permutation(self.counts[s])
            for s in rng.permutation(self.num_shards)
        ]
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def batch_indices(
        self, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
    ) -> Iterator[np.ndarray]:
        """This rank's index batches for one epoch; deterministic per (seed, epoch).

        The epoch order is cut to a multiple of world_size and walked in global batches of
        batch_size * world_size; rank r takes the r-th part of each. So ranks are disjoint,
        take the same number of steps, and each batch reads from one or two shards.
        The last batch may be smaller (the same size on every rank).
        """
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                "need batch_size >= 1 and 0 <= rank < world_size, "
                f"got {batch_size=}, {rank=}, {world_size=}"
            )
        order = self.epoch_order(seed, epoch)
        order = order[: len(order) - len(order) % world_size]
        step = batch_size * world_size
        for start in range(0, len(order), step):
            chunk = order[start : start + step]
            per_rank = len(chunk) // world_size
            yield chunk[rank * per_rank : (rank + 1) * per_rank]

    def batches(
        self, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
    ) -> Iterator[np.ndarray]:
        """float32 (B, 1, W) batches in the order of `batch_indices`."""
        for idx in self.batch_indices(batch_size, seed, epoch, rank, world_size):
            yield self._read(idx)


class ShardPool:
    """The unlabeled pretraining pool read from shards (same interface as splits.SegmentPool):
    random batches come from memory-mapped files, so the pool may be far larger than RAM."""

    def __init__(self, folder: Path) -> None:
        self.shards = ShardedWindows(folder)
        self.window = self.shards.window
        if len(self.shards) == 0:
            raise ValueError(f"{folder}: the shard pool holds no windows")

    def __len__(self) -> int:
        return len(self.shards)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n random windows (already normalized when written) -> (n, 1, W) float32."""
        return np.ascontiguousarray(self.shards[np.sort(rng.integers(0, len(self.shards), n))])

    def windows(self, limit: int | None = None):  # -> train.splits.WindowSet
        from train.splits import WindowSet

        n = len(self.shards) if limit is None else min(limit, len(self.shards))
        idx = np.linspace(0, len(self.shards) - 1, n).astype(np.int64)
        return WindowSet(self.shards[idx], np.full(n, -1, np.int64), [f"shard:{i}" for i in idx])


def write_manifest_shards(
    manifest: Path, folder: Path, spec: PreprocessSpec, shard_size: int = 4096
) -> Path:
    """Stream every recording of a manifest (one at a time) into normalized window shards."""
    from edge_agent.contract.preprocess import prepare
    from train.recordings import at_rate, iter_manifest

    def windows() -> Iterator[np.ndarray]:
        for record in iter_manifest(manifest):
            signal = at_rate(record, spec.sample_rate_hz).signal
            if signal.shape[0] >= spec.window:
                yield prepare(signal, spec)

    return write_shards(windows(), folder, shard_size)

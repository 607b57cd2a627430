"""WindowBuffer: chunked streams give exactly preprocess.frame's windows; gaps and overruns."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.contract.preprocess import PreprocessSpec, frame
from edge_agent.pipeline.ringbuffer import WindowBuffer
from edge_agent.sources.base import Chunk

FS = 1000.0


def chunks_of(signal: np.ndarray, sizes: list[int], t0: float = 100.0) -> list[Chunk]:
    """Cut `signal` into chunks, cycling through `sizes` (empty chunks included)."""
    if not any(sizes):
        sizes = [*sizes, 1]
    out, pos, i = [], 0, 0
    while pos < len(signal):
        size = sizes[i % len(sizes)]
        out.append(Chunk(signal[pos : pos + size], t0 + pos / FS, 0))
        pos, i = pos + size, i + 1
    return out


@settings(max_examples=60, deadline=None)
@given(
    window=st.integers(4, 40),
    hop_factor=st.floats(0.1, 2.5),
    length=st.integers(0, 400),
    sizes=st.lists(st.integers(0, 60), min_size=1, max_size=40),
    seed=st.integers(0, 2**16),
)
def test_any_chunking_gives_the_same_windows_as_frame(window, hop_factor, length, sizes, seed):
    hop = max(1, int(window * hop_factor))
    signal = np.random.default_rng(seed).standard_normal(length).astype(np.float32)
    buf = WindowBuffer(window, hop, capacity_windows=8, sample_rate_hz=FS)
    longest = hop * (buf.capacity_windows - 1)  # longer chunks overrun (tested below)
    got, times = [], []
    for chunk in chunks_of(signal, [min(size, longest) for size in sizes]):
        buf.push(chunk)
        for w, t_end in buf.windows():
            got.append(w)
            times.append(t_end)
    expected = frame(signal, window, hop) if length >= window else np.zeros((0, window))
    assert len(got) == len(expected)
    if got:
        np.testing.assert_array_equal(np.stack(got), expected)
        starts = np.arange(len(got)) * hop
        np.testing.assert_allclose(times, 100.0 + (starts + window - 1) / FS)
    assert buf.overruns == 0 and buf.dropped_samples == 0


def test_windows_are_copies_not_views_of_the_ring():
    buf = WindowBuffer(8, 8, capacity_windows=2, sample_rate_hz=FS)
    buf.push(Chunk(np.ones(8, np.float32), 0.0))
    ((w, _),) = list(buf.windows())
    buf.push(Chunk(np.full(16, 5.0, np.float32), 0.008))
    assert np.all(w == 1.0)


def test_slow_consumer_overruns_are_counted_and_the_newest_windows_survive():
    window, hop, cap = 16, 8, 4
    signal = np.arange(400, dtype=np.float32)
    buf = WindowBuffer(window, hop, capacity_windows=cap, sample_rate_hz=FS)
    for chunk in chunks_of(signal, [20] * 20):
        buf.push(chunk)  # nobody reads
    got = np.stack([w for w, _ in buf.windows()])
    every = frame(signal, window, hop)
    assert len(got) == cap
    np.testing.assert_array_equal(got, every[-cap:])
    assert buf.overruns == len(every) - cap
    assert buf.pending == 0


def test_a_gap_restarts_windowing_so_no_window_spans_it():
    window, hop = 10, 5
    before = np.arange(23, dtype=np.float32)
    after = 1000 + np.arange(30, dtype=np.float32)
    buf = WindowBuffer(window, hop, capacity_windows=16, sample_rate_hz=FS)
    buf.push(Chunk(before, 0.0))
    buf.push(Chunk(after, 1.0, dropped=7))  # gap reported by the source
    got = [w for w, _ in buf.windows()]
    expected = [*frame(before, window, hop), *frame(after, window, hop)]
    assert len(got) == len(expected)
    np.testing.assert_array_equal(np.stack(got), np.stack(expected))
    assert not any((w < 1000).any() and (w >= 1000).any() for w in got)
    assert buf.dropped_samples == 7 and buf.gaps == 1


def test_times_after_a_gap_follow_the_new_chunk():
    buf = WindowBuffer(4, 4, sample_rate_hz=FS)
    buf.push(Chunk(np.zeros(6, np.float32), 10.0))
    buf.push(Chunk(np.zeros(8, np.float32), 20.0, dropped=3))
    times = [t for _, t in buf.windows()]
    assert times == pytest.approx([10.003, 20.003, 20.007])


def test_chunk_longer_than_the_buffer_keeps_its_tail():
    buf = WindowBuffer(8, 4, capacity_windows=3, sample_rate_hz=FS)  # 16 samples
    signal = np.arange(100, dtype=np.float32)
    buf.push(Chunk(signal, 0.0))
    got = np.stack([w for w, _ in buf.windows()])
    every = frame(signal, 8, 4)
    np.testing.assert_array_equal(got, every[-3:])
    assert buf.overruns == len(every) - 3


def test_from_spec_and_bad_arguments():
    buf = WindowBuffer.from_spec(PreprocessSpec(sample_rate_hz=12000, window=64, hop=32))
    assert (buf.window, buf.hop, buf.sample_rate_hz) == (64, 32, 12000)
    with pytest.raises(ValueError, match="hop"):
        WindowBuffer(8, 0, sample_rate_hz=FS)
    with pytest.raises(ValueError, match="1-D"):
        buf.push(Chunk(np.zeros((2, 3), np.float32), 0.0))

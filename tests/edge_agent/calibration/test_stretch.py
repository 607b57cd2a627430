"""Labeling a stretch of a recording: exactly the windows wholly inside it, or a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.calibration.embedding_log import stretch_windows
from edge_agent.contract.preprocess import PreprocessSpec, frame
from edge_agent.sources.base import SourceError

SPEC = PreprocessSpec(12_000, 2048, 512, "zscore")
SAMPLES = 12_000 * 3  # a 3 s recording


@settings(max_examples=200, deadline=None)
@given(
    start=st.one_of(st.none(), st.floats(0.0, 3.0)),
    end=st.one_of(st.none(), st.floats(0.0, 3.0)),
)
def test_a_stretch_gives_exactly_the_windows_wholly_inside_it(start, end) -> None:
    lo = 0.0 if start is None else start
    hi = SAMPLES / SPEC.sample_rate_hz if end is None else end
    n = len(frame(np.zeros(SAMPLES), SPEC.window, SPEC.hop))
    slack = 1e-9 * SPEC.hop  # float round-off, in samples
    inside = [
        i for i in range(n)
        if i * SPEC.hop >= lo * SPEC.sample_rate_hz - slack
        and i * SPEC.hop + SPEC.window <= hi * SPEC.sample_rate_hz + slack
    ]  # fmt: skip
    if lo >= hi or not inside:
        with pytest.raises(SourceError, match=r"rec\.npy: the stretch"):
            stretch_windows(Path("rec.npy"), SAMPLES, SPEC, start, end)
    else:
        got = stretch_windows(Path("rec.npy"), SAMPLES, SPEC, start, end)
        assert got.tolist() == inside


@pytest.mark.parametrize(
    ("start", "end", "reason"),
    [
        (2.0, 1.0, "needs 0 <= start < end"),
        (-1.0, None, "needs 0 <= start < end"),
        (float("nan"), None, "needs 0 <= start < end"),
        (None, 4.0, "ends at 4 s, past the recording's 3.000 s"),
        (None, float("inf"), "past the recording's"),
        (2.9, None, "holds no whole window (0.171 s)"),
    ],
)
def test_a_stretch_the_recording_cannot_give_is_refused_naming_the_file(start, end, reason):
    with pytest.raises(SourceError, match=r"rec\.npy") as error:
        stretch_windows(Path("rec.npy"), SAMPLES, SPEC, start, end)
    assert reason in str(error.value)


def test_no_stretch_is_every_window() -> None:
    n = len(frame(np.zeros(SAMPLES), SPEC.window, SPEC.hop))
    assert stretch_windows(Path("rec.npy"), SAMPLES, SPEC, None, None).tolist() == list(range(n))

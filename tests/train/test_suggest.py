"""Label suggestions: one window from each kind of window the pool holds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from train.suggest import suggest_labels

W, FS = 2048, 12_000


def ringing_at(centre_hz: float, rng: np.random.Generator) -> np.ndarray:
    """A window of noise shaped by one resonance at `centre_hz` (random phases)."""
    f = np.fft.rfftfreq(W, 1 / FS)
    gain = 1 + 30 * np.exp(-(((f - centre_hz) / 300) ** 2))
    return np.fft.irfft(gain * np.exp(1j * rng.uniform(0, 2 * np.pi, f.size)), W)


def pool(counts: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Windows (N, 1, W) of resonances at len(counts) places, counts[i] of place i."""
    rng = np.random.default_rng(seed)
    kind = np.repeat(np.arange(len(counts)), counts)
    places = np.linspace(1500, 5000, len(counts))
    x = np.stack([ringing_at(places[k], rng) for k in kind])[:, None, :]
    return x.astype(np.float32), kind


@pytest.mark.parametrize("seed", range(3))
def test_a_few_more_labels_than_kinds_cover_every_kind_however_rare(seed: int) -> None:
    x, kind = pool([60, 3, 40, 5])  # two rare kinds (3 % and 5 % of the pool)
    picks = suggest_labels(x, 6, seed=seed)
    assert set(kind[picks]) == {0, 1, 2, 3}
    rng = np.random.default_rng(seed)
    misses = sum(len(set(kind[rng.choice(len(x), 6, replace=False)])) < 4 for _ in range(200))
    assert misses > 100  # six random windows leave a kind unlabeled more often than not


def test_suggestions_are_deterministic_and_distinct() -> None:
    x, _ = pool([20, 20, 20])
    first, again = suggest_labels(x, 6, seed=3), suggest_labels(x, 6, seed=3)
    assert np.array_equal(first, again) and len(set(first.tolist())) == 6


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 12), budget=st.integers(-1, 14), flat=st.booleans())
def test_any_budget_is_served_or_refused_by_name(n: int, budget: int, flat: bool) -> None:
    x, _ = pool([n])
    if flat:  # dead sensor windows: all alike, fewer groups than asked can hold a window
        x[:] = 0.0
    if not 1 <= budget <= n:
        with pytest.raises(ValueError, match="label budget"):
            suggest_labels(x, budget, seed=0)
        return
    picks = suggest_labels(x, budget, seed=0)
    assert 1 <= len(picks) <= budget and len(set(picks.tolist())) == len(picks)
    assert picks.min() >= 0 and picks.max() < n


TINY = ["labels_per_class=4", "unlabeled_windows=60", "sim_seconds_per_record=1.0",
        "window=512", "hop=256"]  # fmt: skip


def test_pool_positions_are_where_the_pool_windows_come_from() -> None:
    from edge_agent.contract.preprocess import normalize
    from train.config import load_config
    from train.data import build_split

    cfg = load_config(None, TINY)
    pool = build_split(cfg).pool
    for limit in (None, 7):
        windows, where = pool.windows(limit), pool.positions(limit)
        assert len(where) == len(windows) and windows.record_ids == [r for r, _ in where]
        for x, (record, start) in zip(windows.x, where, strict=True):
            seg = next(s for s in pool.segments if s.record_id == record and s.start <= start)
            raw = seg.signal[start - seg.start : start - seg.start + cfg.window]
            np.testing.assert_allclose(
                normalize(raw[None], cfg.normalization).ravel(), x.ravel(), atol=1e-6
            )


def test_the_cli_lists_the_windows_to_label_and_writes_them(tmp_path) -> None:
    from typer.testing import CliRunner

    from train.cli import app

    out = tmp_path / "label-these.csv"
    args = ["suggest", "--budget", "3", "--out", str(out)]
    for item in TINY:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = out.read_text().splitlines()
    assert rows[0] == "record,first_sample,from_s,to_s" and len(rows) == 4
    for row in rows[1:]:
        record, first, start, end = row.split(",")
        assert record in result.output and int(first) >= 0
        assert float(end) - float(start) == pytest.approx(512 / 12_000, abs=1e-3)
    too_many = CliRunner().invoke(app, ["suggest", "--budget", "100000", *args[5:]])
    assert too_many.exit_code == 1 and "label budget of 100000" in too_many.output

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

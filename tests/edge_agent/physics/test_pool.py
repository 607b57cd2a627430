"""The pool gate: whether a window's log spectrum lies among the unlabeled pool's, measured as the
distance to its k-th nearest pool window in the pool's principal components."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.physics.pool import QUERY_BLOCK, PoolGate, kth_neighbour_distance


def brute_force(queries: np.ndarray, points: np.ndarray, k: int, skip_self: bool) -> np.ndarray:
    out = []
    for i, q in enumerate(queries):
        d = np.sqrt(((points - q) ** 2).sum(axis=1))
        if skip_self:
            d = np.delete(d, i)
        out.append(np.sort(d)[k - 1])
    return np.array(out)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 30),
    dims=st.integers(1, 6),
    k=st.integers(1, 5),
    seed=st.integers(0, 1000),
    repeated=st.booleans(),
)
def test_the_kth_neighbour_distance_is_the_sorted_one(n, dims, k, seed, repeated) -> None:
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(n, dims))
    if repeated:  # duplicated pool windows are still distinct neighbours
        points[n // 2 :] = points[: n - n // 2]
    k = min(k, n - 1)
    queries = rng.normal(size=(7, dims))
    np.testing.assert_allclose(
        kth_neighbour_distance(queries, points, k),
        brute_force(queries, points, k, False),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        kth_neighbour_distance(points, points, k, leave_self_out=True),
        brute_force(points, points, k, True),
        atol=1e-6,
    )


def test_queries_beyond_one_block_leave_each_its_own_self_out() -> None:
    points = np.arange(QUERY_BLOCK + 5, dtype=float)[:, None]  # a line: neighbours at 1, 1, 2
    own = kth_neighbour_distance(points, points, 2, leave_self_out=True)
    assert own[0] == 2.0 and (own[1:-1] == 1.0).all() and own[-1] == 2.0


def gate(rng: np.random.Generator, bands: int = 16, points: int = 200) -> PoolGate:
    """A gate on the first 3 bands of standardized spectra, whose pool is a unit cloud."""
    components = np.eye(3, bands)
    return PoolGate(
        np.zeros(bands), np.ones(bands), components, rng.normal(size=(points, 3)), 1.0, 5
    )


def test_a_window_among_the_pool_is_near_and_one_beside_it_is_not() -> None:
    rng = np.random.default_rng(0)
    g = gate(rng)
    among = np.zeros((4, 16))
    among[:, 3:] = 50.0  # bands off the components do not count
    beside = np.zeros((4, 16))
    beside[:, 0] = 6.0  # six standard deviations out on the first component
    assert g.near(among).all() and not g.near(beside).any()
    scaled = PoolGate(g.center + 1.0, g.scale * 2.0, g.components, g.points, 1.0, 5)
    np.testing.assert_allclose(scaled.project(beside + 1.0)[:, 0], 3.0)  # standardized first
    assert g.near(np.zeros((0, 16))).shape == (0,)


def test_the_gate_round_trips_through_json() -> None:
    g = gate(np.random.default_rng(1))
    back = PoolGate.from_dict(json.loads(json.dumps(g.to_dict())))
    np.testing.assert_array_equal(back.points, g.points)
    assert (back.radius, back.neighbours, back.bands) == (1.0, 5, 16)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"components": np.eye(3, 15)}, "components"),
        ({"points": np.zeros((10, 2))}, "points"),
        ({"scale": np.zeros(16)}, "scale"),
        ({"center": np.full(16, np.inf)}, "finite"),
        ({"radius": -1.0}, "radius"),
        ({"radius": np.nan}, "radius"),
        ({"neighbours": 0}, "neighbours"),
        ({"neighbours": 201}, "neighbours"),
    ],
)
def test_a_malformed_gate_is_refused(fields, match) -> None:
    g = gate(np.random.default_rng(2))
    with pytest.raises(ValueError, match=match):
        PoolGate(**{**g.to_dict(), **fields})

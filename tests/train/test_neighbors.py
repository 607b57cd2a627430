"""kNN, prototype and label spreading on embeddings: clusters with known answers."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from train.neighbors import (
    combine_votes,
    knn_probabilities,
    propagated_labels,
    prototype_probabilities,
    spread_labels,
)


def clusters(sizes: list[int], dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tight clusters around orthogonal directions: cluster i is class i."""
    rng = np.random.default_rng(seed)
    x = np.concatenate(
        [np.eye(dim)[i] + 0.05 * rng.standard_normal((n, dim)) for i, n in enumerate(sizes)]
    )
    y = np.repeat(np.arange(len(sizes)), sizes)
    return x.astype(np.float32), y


def test_knn_and_prototype_recover_clusters():
    x, y = clusters([30, 30, 30])
    train = np.concatenate([np.flatnonzero(y == c)[:3] for c in range(3)])
    for probs in (
        knn_probabilities(x[train], y[train], x, 3, k=3),
        prototype_probabilities(x[train], y[train], x, 3),
    ):
        assert (probs.argmax(1) == y).all()
        np.testing.assert_allclose(probs.sum(1), 1.0)


def test_spread_labels_reaches_clusters_and_leaves_unlabeled_ones_out():
    x, y = clusters([40, 60, 50])
    labeled = np.array([0, 1, 40, 41])  # classes 0 and 1 labeled, cluster 2 never
    pool = np.setdiff1d(np.arange(len(y)), labeled)
    spread = spread_labels(x[labeled], y[labeled], x[pool])
    assert (spread[y[pool] == 0] == 0).all() and (spread[y[pool] == 1] == 1).all()
    assert (spread[y[pool] == 2] == -1).all()


def test_a_rare_class_is_not_filled_up_with_strangers():
    x, y = clusters([6, 200, 200])
    labeled = np.array([0, 1, 6, 7, 206, 207])
    pool = np.setdiff1d(np.arange(len(y)), labeled)
    spread = spread_labels(x[labeled], y[labeled], x[pool])
    assert (spread == 0).sum() <= 4 and (spread[spread >= 0] == y[pool][spread >= 0]).all()


@settings(max_examples=25, deadline=None)
@given(
    n_pool=st.integers(0, 40),
    n_labeled=st.integers(2, 10),
    seed=st.integers(0, 2**16),
)
def test_spread_labels_returns_a_known_class_or_minus_one(n_pool, n_labeled, seed):
    rng = np.random.default_rng(seed)
    train_y = rng.integers(0, 3, n_labeled)
    out = spread_labels(
        rng.standard_normal((n_labeled, 4)), train_y, rng.standard_normal((n_pool, 4))
    )
    assert out.shape == (n_pool,)
    assert set(out.tolist()) <= {-1, *train_y.tolist()}


@given(st.lists(st.tuples(st.integers(-1, 3), st.integers(-1, 3)), max_size=30))
def test_combined_votes_keep_agreement_and_single_votes_and_drop_conflicts(pairs):
    a = np.array([p[0] for p in pairs], dtype=np.int64)
    b = np.array([p[1] for p in pairs], dtype=np.int64)
    out = combine_votes(a, b)
    for x, y, o in zip(a, b, out, strict=True):
        if x >= 0 and y >= 0 and x != y:
            assert o == -1
        else:
            assert o == max(x, y)


def test_propagation_labels_every_window_of_a_labeled_cluster():
    x, y = clusters([30, 30, 40])
    labeled = np.array([0, 1, 2, 30, 31, 32, 60, 61, 62])
    pool = np.setdiff1d(np.arange(len(y)), labeled)
    np.testing.assert_array_equal(propagated_labels(x[labeled], y[labeled], x[pool]), y[pool])

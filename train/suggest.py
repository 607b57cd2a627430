"""Which windows to label: a few labels go furthest when they cover every kind of window the
unlabeled pool holds.

Random labels miss whole bearings: on CWRU with 5 labels per class, every error of the recipe is
a bearing size that drew no label (README "Benchmarks"). `suggest_labels` clusters the pool's
spectral views (edge_agent.physics.spectral: the view the template decides on) into as many
groups as there are labels to spend, k-means on standardized views (scikit-learn), and proposes
the window nearest each group's centre. The operator labels those; no class count is fixed in
advance, so a class the pool shows in several guises gets several labels. k-means favours large
groups: a kind of window much rarer than 1 / budget of the pool can still go unlabeled, so spend
a few more labels than the kinds expected (on CWRU, 20 labels for 10 bearings covered all).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np

from edge_agent.physics.spectral import spectral_view

if TYPE_CHECKING:
    from train.splits import SegmentPool, WindowSet

KMEANS_RESTARTS = 4
SUGGEST_POOL_WINDOWS = 2000  # pool windows the suggestions are drawn from, evenly spread


def suggest_labels(windows: np.ndarray, budget: int, seed: int) -> np.ndarray:
    """Indices into `windows` (N, 1, W) of the windows to label, one per k-means group of their
    spectral views, in group order: `budget` of them, fewer only if fewer windows differ.
    ValueError when budget is not in [1, N]."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    n = len(windows)
    if not 1 <= budget <= n:
        raise ValueError(f"a label budget of {budget} needs 1 to {n} (the pool's windows)")
    views = spectral_view(windows).astype(np.float64)
    z = (views - views.mean(axis=0)) / np.where(views.std(axis=0) > 0, views.std(axis=0), 1.0)
    with warnings.catch_warnings():  # fewer distinct windows than budget: fewer groups, said
        warnings.simplefilter("ignore", ConvergenceWarning)
        groups = KMeans(budget, n_init=KMEANS_RESTARTS, random_state=seed).fit(z)
    picks = []
    for group, centre in enumerate(groups.cluster_centers_):
        members = np.flatnonzero(groups.labels_ == group)
        if len(members):  # k-means leaves a group empty when fewer windows differ than budget
            picks.append(members[((z[members] - centre) ** 2).sum(axis=1).argmin()])
    return np.array(picks, dtype=np.int64)


def suggest_from_pool(
    pool: SegmentPool, budget: int, seed: int
) -> tuple[WindowSet, list[tuple[str, int]]]:
    """The suggested windows of up to SUGGEST_POOL_WINDOWS evenly spread pool windows (with the
    pool's hidden labels, which only a benchmark may read) and where each comes from (record id,
    first sample)."""
    from train.splits import WindowSet

    windows = pool.windows(limit=SUGGEST_POOL_WINDOWS)
    where = pool.positions(limit=SUGGEST_POOL_WINDOWS)
    picks = suggest_labels(windows.x, budget, seed)
    chosen = WindowSet(windows.x[picks], windows.y[picks], [windows.record_ids[i] for i in picks])
    return chosen, [where[i] for i in picks]

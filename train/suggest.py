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

On a plant's recordings `write_label_sheet` writes the suggestions as a recordings manifest of
excerpts (start_s, end_s) with an empty label column: the operator fills it in and trains with
`labels_manifest` set to that file, nothing cut by hand; asked again with `labels_manifest` set,
it carries that file's rows into the new one, so one file holds every label.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.physics.spectral import spectral_view

if TYPE_CHECKING:
    from train.records import Record
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
    pool: SegmentPool, budget: int, seed: int, records: Collection[str] | None = None
) -> tuple[WindowSet, list[tuple[str, int]]]:
    """The suggested windows of up to SUGGEST_POOL_WINDOWS evenly spread pool windows (with the
    pool's hidden labels, which only a benchmark may read) and where each comes from (record id,
    first sample). records: draw from these records' windows only (ValueError if none is in
    the pool)."""
    from train.splits import SegmentPool, WindowSet

    if records is not None:
        segments = [s for s in pool.segments if s.record_id in records]
        if not segments:
            raise ValueError("every recording is labeled: no unlabeled window to suggest")
        pool = SegmentPool(segments, pool.window, pool.hop, pool.normalization)

    windows = pool.windows(limit=SUGGEST_POOL_WINDOWS)
    where = pool.positions(limit=SUGGEST_POOL_WINDOWS)
    picks = suggest_labels(windows.x, budget, seed)
    chosen = WindowSet(windows.x[picks], windows.y[picks], [windows.record_ids[i] for i in picks])
    return chosen, [where[i] for i in picks]


SHEET_FIELDS = ("path", "sample_rate_hz", "column", "scale_g", "start_s", "end_s", "label")


def write_label_sheet(
    out: Path,
    where: list[tuple[str, int]],
    sources: dict[str, dict[str, Any]],
    rate: int,
    window: int,
    carried: Sequence[Record] = (),
) -> None:
    """The suggested windows (record id, first sample at `rate`) as a manifest of unlabeled
    excerpts, after the rows of `carried` (the labels so far), paths relative to `out`'s folder;
    `sources`: per record id, its file's manifest row and the time of its first sample there."""
    from train.recordings import manifest_row

    rows = [manifest_row(record) for record in carried]
    for record_id, first in where:
        source = sources[record_id]
        start = source["first_s"] + first / rate
        end = start + window / rate
        rows.append(dict(source["row"], start_s=f"{start:.6f}", end_s=f"{end:.6f}", label=""))
    folder = out.resolve().parent
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, SHEET_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(dict(row, path=os.path.relpath(Path(row["path"]).resolve(), folder)))

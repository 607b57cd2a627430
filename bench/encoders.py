"""`python -m bench encoders`: which encoder a device's few labels can use on a machine it never
saw: the simulator's SimCLR encoder (pretrained, and fine-tuned as the bundle carries it), the
supervised CNN trained on the same labels, or one never trained.

Per seed, the configured training data (the simulator's reference scenario at `epochs=8` unless
--config or --set says otherwise) trains the encoders; CWRU's records (the configured sensor)
are the device's machine, as in `bench device`: 12 label sets of one record per class (the normal
record, and each fault size at each load), k = 1, 3, 5, 10 windows per class drawn from the first
half of those records. A logistic regression on the frozen embedding (standardized on every
first-half window: the unlabeled data a device has) stands in for the device head. Scored by
macro-F1 on the last 30 % of those records ("same": the labeled bearings later) and of every other
record ("rig": bearings, sizes and loads without a label). Needs the CWRU records; prints a table
and writes bench/results/encoders.json.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.options import config_from, has_cwru, seeded_parser, write_result

console = Console()
RESULTS = Path("bench/results/encoders.json")
K_LABELS = (1, 3, 5, 10)
ENCODERS = ("never trained", "supervised only", "SimCLR pretrained", "SimCLR fine-tuned")


@dataclass
class Halves:
    """One record's class index, its label set key (fault size, load) and its windows."""

    label: int
    key: tuple[float, int]
    first: np.ndarray  # (N, 1, W): the first half, where labels are drawn
    last: np.ndarray  # (M, 1, W): the last 30 %, scored


def cwru_halves(cfg, names: list[str]) -> dict[str, Halves]:
    """The CWRU records of the classes in `names`, cut into non-overlapping windows."""
    from edge_agent.contract.preprocess import frame, normalize
    from train.data import cwru_records

    def windows(signal: np.ndarray) -> np.ndarray:
        return normalize(frame(signal, cfg.window, cfg.window), cfg.normalization)

    out = {}
    for r in cwru_records(cfg):
        if r.label in names:
            n = r.signal.shape[0]
            key = (r.meta.get("fault_size_in", 0.0), r.meta.get("load_hp", -1))
            first, last = windows(r.signal[: n // 2]), windows(r.signal[int(0.7 * n) :])
            out[r.record_id] = Halves(names.index(r.label), key, first, last)
    return out


def probe(
    embedded: dict[str, tuple[np.ndarray, np.ndarray]],
    records: dict[str, Halves],
    k: int,
    seed: int,
) -> dict[str, float]:
    """Macro-F1 of a logistic regression on k labeled windows per class of each label set: mean
    and worst over the sets, on the labeled records later ("same") and on the others ("rig")."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    pool = np.concatenate([first for first, _ in embedded.values()])
    mean, std = pool.mean(axis=0), pool.std(axis=0) + 1e-6
    normal = [r for r, h in records.items() if h.label == 0]
    keys = sorted({h.key for h in records.values() if h.label != 0})
    same, rig = [], []
    for key in keys:
        chosen = normal + [r for r, h in records.items() if h.key == key and h.label != 0]
        rng = np.random.default_rng([seed, k, *(round(1000 * v) for v in key)])
        picks = [rng.choice(len(embedded[r][0]), k, replace=False) for r in chosen]
        x = np.concatenate([embedded[r][0][p] for r, p in zip(chosen, picks, strict=True)])
        y = np.repeat([records[r].label for r in chosen], k)
        head = LogisticRegression(max_iter=2000).fit((x - mean) / std, y)
        others = [r for r in records if r not in chosen]
        for group, scores in ((chosen, same), (others, rig)):
            x = np.concatenate([embedded[r][1] for r in group])
            y = np.concatenate([np.full(len(embedded[r][1]), records[r].label) for r in group])
            scores.append(f1_score(y, head.predict((x - mean) / std), average="macro"))
    return dict(same=float(np.mean(same)), same_worst=float(np.min(same)),
                rig=float(np.mean(rig)), rig_worst=float(np.min(rig)))  # fmt: skip


def trained_encoders(cfg, split):
    """(name, encoder) for each of ENCODERS, trained on `split` as the recipe trains them."""
    from train.baselines import supervised
    from train.loop import finetune, initial_encoder, pretrain

    yield ENCODERS[0], initial_encoder(cfg)
    yield ENCODERS[1], supervised(cfg, split, show_progress=True).encoder
    pretrained = pretrain(cfg, split, show_progress=True).encoder
    yield ENCODERS[2], pretrained
    yield ENCODERS[3], finetune(cfg, split, copy.deepcopy(pretrained), show_progress=True).encoder


def main(argv: list[str] | None = None) -> int:
    parser = seeded_parser("python -m bench encoders", __doc__, 3, RESULTS)
    args = parser.parse_args(argv)
    if args.config is None and not any(s.startswith("epochs=") for s in args.set):
        args.set = ["epochs=8", *args.set]
    from train.data import build_split
    from train.loop import embed

    logging.basicConfig(level=logging.WARNING)
    base = config_from(parser, args)
    if not has_cwru(base):
        return 0
    started = time.perf_counter()
    runs: dict[str, list[dict]] = {name: [] for name in ENCODERS}
    for seed in range(args.seeds):
        cfg = base.model_copy(update={"seed": seed})
        split = build_split(cfg)
        records = cwru_halves(cfg, split.class_names)
        for name, encoder in trained_encoders(cfg, split):
            embedded = {
                r: (embed(encoder, h.first), embed(encoder, h.last)) for r, h in records.items()
            }
            scores = {f"k{k}": probe(embedded, records, k, seed) for k in K_LABELS}
            runs[name].append(scores)
            shown = ", ".join(f"{k}: {v['same']:.3f} / {v['rig']:.3f}" for k, v in scores.items())
            console.print(f"seed {seed}, {name}: {shown}")
    summary = {name: _summary(rows) for name, rows in runs.items()}
    table = Table(
        title="a device's few labels on CWRU, by encoder: labeled records later / the rig's others"
    )
    table.add_column("encoder")
    for k in K_LABELS:
        table.add_column(f"{k} label(s) / class")
    for name, cells in summary.items():
        table.add_row(name, *(cells[f"k{k}"]["shown"] for k in K_LABELS))
    console.print(table)
    write_result(args.out, args.set, summary, runs, started)
    return 0


def _summary(rows: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """Per k: mean over seeds of "same" and "rig", the worst label set and the worst seed."""
    out = {}
    for k in K_LABELS:
        runs = [row[f"k{k}"] for row in rows]
        same = float(np.mean([r["same"] for r in runs]))
        rig = [r["rig"] for r in runs]
        worst_set = min(r["same_worst"] for r in runs)
        shown = (f"{same:.3f} (worst set {worst_set:.3f}) / "
                 f"{np.mean(rig):.3f} (worst seed {min(rig):.3f})")  # fmt: skip
        out[f"k{k}"] = dict(shown=shown, same=same, same_worst_set=worst_set,
                            rig=float(np.mean(rig)), rig_worst_seed=float(min(rig)))  # fmt: skip
    return out

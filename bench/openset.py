"""`python -m bench openset`: does the bundle's unknown score flag a fault class it never saw?

For each fault class of the task in turn, that class is left out of training entirely (labels,
validation windows and the unlabeled pool), the product's recipe is run (SimCLR pretraining,
fine-tuning), and the open-set score of `edge_agent.pipeline.openset` (distance to the nearest known
class mean, from the run's reference statistics) is computed on every test window. Reported per
held-out class: AUROC of held-out vs known test windows, and the share of each flagged at the
run's own threshold (the 99th percentile on known validation windows, as exported in bundles).
Target: AUROC >= 0.90. Prints a table and writes bench/results/openset.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.options import add_config_options, config_from
from edge_agent.contract.bundle import ClassStats
from edge_agent.pipeline.openset import OpenSetScorer, auroc
from train.config import TrainConfig
from train.cwru import default_data_root
from train.data import build_split
from train.loop import finetune, pretrain
from train.runs import open_set, reference_stats
from train.splits import SegmentPool, Split, WindowSet

console = Console()
RESULTS = Path("bench/results/openset.json")
TARGET_AUROC = 0.90


def without_class(split: Split, held: int) -> Split:
    """`split` with class `held` removed everywhere training looks (labels, val, pool, names);
    the test set keeps only the known classes. Class indices are renumbered."""
    keep = [c for c in range(len(split.class_names)) if c != held]
    remap = np.full(len(split.class_names), -1)
    remap[keep] = np.arange(len(keep))

    def known(ws: WindowSet) -> WindowSet:
        mask = ws.y != held
        ids = [r for r, m in zip(ws.record_ids, mask, strict=False) if m] if ws.record_ids else []
        return WindowSet(ws.x[mask], remap[ws.y[mask]], ids)

    pool = split.pool
    segments = [replace(s, label=int(remap[s.label]) if s.label >= 0 else -1)
                for s in pool.segments if s.label != held]  # fmt: skip
    return Split(
        class_names=[split.class_names[c] for c in keep],
        labeled=known(split.labeled),
        val=known(split.val),
        test=known(split.test),
        pool=SegmentPool(segments, pool.window, pool.hop, pool.normalization),
        description={**split.description, "held_out": split.class_names[held]},
    )


def held_out_run(cfg: TrainConfig, split: Split, held: int) -> dict[str, Any]:
    known = without_class(split, held)
    encoder = pretrain(cfg, known, show_progress=False).encoder
    model = finetune(cfg, known, encoder, show_progress=False)
    stats = reference_stats(model, known)
    scorer = OpenSetScorer({k: ClassStats(**v) for k, v in stats.items()})
    threshold = open_set(model, known, stats)["unknown_above"]
    scores = scorer.score(model.embed(split.test.x))
    novel = split.test.y == held
    return {
        "held_out": split.class_names[held],
        "auroc": auroc(scores[~novel], scores[novel]),
        "novel_flagged": float((scores[novel] > threshold).mean()),
        "known_flagged": float((scores[~novel] > threshold).mean()),
        "threshold": threshold,
        "test_windows": {"known": int((~novel).sum()), "novel": int(novel.sum())},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench openset", description=__doc__)
    parser.add_argument("--data", default=None, help="cwru-4class (default when present) or "
                        "sim-reference")  # fmt: skip
    parser.add_argument("--labels", type=int, default=50, help="labels per class")
    parser.add_argument("--seeds", type=int, default=1)
    add_config_options(parser)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    base = config_from(parser, args)
    cwru = ((base.data_root or default_data_root()) / "cwru").is_dir()
    data = args.data or ("cwru-4class" if cwru else "sim-reference")
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for seed in range(args.seeds):
        cfg = base.model_copy(update={"data": data, "labels_per_class": args.labels, "seed": seed})
        split = build_split(cfg)
        normal = split.class_names.index("normal") if "normal" in split.class_names else -1
        for held in range(len(split.class_names)):
            if held == normal:
                continue
            rows.append({"seed": seed, **held_out_run(cfg, split, held)})
            console.print(f"seed {seed}, {rows[-1]['held_out']} held out: AUROC "
                          f"{rows[-1]['auroc']:.3f}")  # fmt: skip
    table = Table(title=f"open set on {data}: one fault class left out of training")
    for col in ("held out", "seed", "AUROC", "held-out flagged", "known flagged", "target"):
        table.add_column(col)
    for r in rows:
        met = "met" if r["auroc"] >= TARGET_AUROC else "not met"
        table.add_row(r["held_out"], str(r["seed"]), f"{r['auroc']:.3f}",
                      f"{r['novel_flagged']:.1%}", f"{r['known_flagged']:.1%}",
                      f">= {TARGET_AUROC}: {met}")  # fmt: skip
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"data": data, "labels_per_class": args.labels, "config": base.model_dump(
        mode="json"), "rows": rows, "seconds": time.perf_counter() - started}  # fmt: skip
    args.out.write_text(json.dumps(payload, indent=1))
    worst = min((r["auroc"] for r in rows), default=float("nan"))
    console.print(f"worst AUROC {worst:.3f}; wrote {args.out}")
    return 0

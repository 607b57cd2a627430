"""`python -m bench labels`: random labels against the labels faultwatch suggests, same budget.

CWRU 4 classes and 10 classes with 5 labels per class (budget 20 and 50 labels). Per seed, the
bench's split (`bench fewlabel`'s, time blocks within each record) once with its random labels
(5 per class, as `fewlabel` draws them) and once with the windows `train.suggest.suggest_labels`
proposes from the unlabeled pool (as many as the random labels), labeled with their records'
classes, as an operator would label them. Both go through the recipe's spectral template without
the model (`train.spectral.fit_spectral`, as `bench fewlabel --cheap-only`: no pretraining),
scored on the same test windows: macro-F1, ECE, uncertain share; mean ± std and the worst seed.
Needs the CWRU records; prints a table and writes bench/results/labels.json.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.options import config_from, has_cwru, seeded_parser, write_result

console = Console()
RESULTS = Path("bench/results/labels.json")
TASKS = {"cwru 4 classes, 20 labels": "cwru-4class", "cwru 10 classes, 50 labels": "cwru-10class"}
LABELS_PER_CLASS = 5


def suggested(split, seed: int):
    """`split` with the suggested pool windows as its labeled set (as many as it had)."""
    from train.suggest import suggest_from_pool

    labeled, _ = suggest_from_pool(split.pool, len(split.labeled), seed)
    return replace(split, labeled=labeled)


def recipe(cfg, split) -> dict[str, Any]:
    """The figures of the recipe's template without the model (`bench fewlabel --cheap-only`'s)."""
    from bench.fewlabel import FUSED_TEMPLATE, fused_template_metrics

    per_class = np.bincount(split.labeled.y, minlength=len(split.class_names)).tolist()
    m = fused_template_metrics(cfg, split).get(FUSED_TEMPLATE)
    if m is None:
        reason = "the template did not decide (its gate, or a class without labels)"
        return dict(macro_f1=None, reason=reason, labels_per_class=per_class)
    return dict(macro_f1=m["macro_f1"], ece=m["ece"], uncertain=m["uncertain_rate"],
                labels_per_class=per_class)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = seeded_parser("python -m bench labels", __doc__, 5, RESULTS)
    args = parser.parse_args(argv)
    from bench.fewlabel import task_config
    from train.data import build_split

    logging.basicConfig(level=logging.WARNING)
    base = config_from(parser, args)
    if not has_cwru(base):
        return 0
    started = time.perf_counter()
    runs: dict[str, list[dict]] = {}
    for task, data in TASKS.items():
        for seed in range(args.seeds):
            cfg = task_config(base, data, LABELS_PER_CLASS, seed)
            split = build_split(cfg)
            row = {"random": recipe(cfg, split), "suggested": recipe(cfg, suggested(split, seed))}
            runs.setdefault(task, []).append(row)
            console.print(f"{task}, seed {seed}: " + ", ".join(
                f"{k} {_f1(v)}" for k, v in row.items()))  # fmt: skip
    table = Table(title="the recipe with random vs suggested labels (same budget)")
    for col in ("task", "random labels", "suggested labels"):
        table.add_column(col)
    summary = {}
    for task, rows in runs.items():
        summary[task] = {k: _summary([r[k] for r in rows]) for k in ("random", "suggested")}
        table.add_row(task, *(summary[task][k]["shown"] for k in ("random", "suggested")))
    console.print(table)
    write_result(args.out, args.set, summary, runs, started)
    return 0


def _f1(result: dict) -> str:
    return "-" if result["macro_f1"] is None else f"{result['macro_f1']:.3f}"


def _summary(results: list[dict]) -> dict[str, Any]:
    """Mean ± std (worst) of macro-F1, mean ECE and uncertain share; seeds the recipe refused."""
    scored = [r for r in results if r["macro_f1"] is not None]
    refused = len(results) - len(scored)
    if not scored:
        return dict(shown=f"no seed scored ({refused} refused)", refused=refused)
    f1 = np.array([r["macro_f1"] for r in scored])
    ece = float(np.mean([r["ece"] for r in scored]))
    uncertain = float(np.mean([r["uncertain"] for r in scored]))
    shown = (f"{f1.mean():.3f} ± {f1.std():.3f} (worst {f1.min():.3f}); ECE {ece:.3f}, "
             f"{uncertain:.0%} uncertain")  # fmt: skip
    if refused:
        shown += f"; {refused} seed(s) refused: a class drew no label"
    return dict(shown=shown, macro_f1=float(f1.mean()), std=float(f1.std()),
                worst=float(f1.min()), ece=ece, uncertain=uncertain, refused=refused)  # fmt: skip

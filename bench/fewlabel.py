"""`python -m bench fewlabel`: supervised only vs pseudo-labeling vs SimCLR + fine-tune (and kNN /
prototype on frozen embeddings), mean ± std over seeds, on the simulator's reference scenario and
real CWRU tasks. Prints a table and writes bench/results/fewlabel.json (updated after every run).

The CWRU tasks share one unlabeled pool (train blocks of every record), so the encoder is
pretrained once per seed and fine-tuned for each task.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from train.config import TrainConfig, load_config
from train.cwru import default_data_root
from train.data import build_split
from train.loop import finetune, pretrain
from train.runs import evaluate
from train.workflow import frozen_embedding_metrics, run_baselines

console = Console()
RESULTS = Path("bench/results/fewlabel.json")
TARGET_ECE = 0.05  # expected calibration error on test windows (issue 8)

# task name -> (data, labels per class); "sim" is the reference scenario (200 labels = 50 x 4)
TASKS: dict[str, tuple[str, int]] = {
    "sim-reference (200 labels)": ("sim-reference", 50),
    "cwru 4-class, 5/class": ("cwru-4class", 5),
    "cwru 4-class, 50/class": ("cwru-4class", 50),
    "cwru 10-class, 5/class": ("cwru-10class", 5),
    "cwru cross-load 0->3, 50/class": ("cwru-crossload", 50),
}
TARGETS = {
    "cwru 4-class, 5/class": 0.95,
    "cwru 4-class, 50/class": 0.99,
    "cwru 10-class, 5/class": 0.90,
    "cwru cross-load 0->3, 50/class": 0.98,
}


def task_config(base: TrainConfig, data: str, labels: int, seed: int) -> TrainConfig:
    return base.model_copy(update={"data": data, "labels_per_class": labels, "seed": seed})


def run_task(cfg: TrainConfig, encoder, baselines: bool) -> dict[str, Any]:
    split = build_split(cfg)
    results = {
        "SimCLR + fine-tune": evaluate(
            finetune(cfg, split, copy.deepcopy(encoder), show_progress=False),
            split,
            cfg.uncertain_below,
        )
    }
    results.update(frozen_embedding_metrics(encoder, split, cfg.uncertain_below))
    if baselines:
        results.update(
            {k: m for k, (_, m) in run_baselines(cfg, split, show_progress=False).items()}
        )
    return {
        name: {
            "macro_f1": m["macro_f1"],
            "accuracy": m["accuracy"],
            "uncertain_rate": m["uncertain_rate"],
            "confident_accuracy": m["confident_accuracy"],
            "ece": m.get("ece"),  # methods scored through evaluate(); None for the others
        }
        for name, m in results.items()
    }


def mean_known(values: list[float | None]) -> float | None:
    """Mean over the seeds that have a value (a seed with no confident window has none)."""
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for task, seeds in runs.items():
        out[task] = {}
        for method in seeds[0]:
            f1 = np.array([s[method]["macro_f1"] for s in seeds])
            acc = np.array([s[method]["accuracy"] for s in seeds])
            out[task][method] = {
                "macro_f1_mean": float(f1.mean()),
                "macro_f1_std": float(f1.std()),
                "accuracy_mean": float(acc.mean()),
                **{
                    f"{key}_mean": mean_known([s[method].get(key) for s in seeds])
                    for key in ("ece", "uncertain_rate", "confident_accuracy")
                },
                "seeds": len(seeds),
            }
    return out


def print_table(summary: dict[str, dict[str, dict[str, float]]]) -> None:
    table = Table(title="few-label benchmark: macro-F1 on test windows (mean ± std over seeds)")
    methods = sorted(
        {m for t in summary.values() for m in t}, key=lambda m: (m != "SimCLR + fine-tune", m)
    )
    table.add_column("task")
    for m in methods:
        table.add_column(m)
    table.add_column("target")
    for task, res in summary.items():
        cells = [
            f"{res[m]['macro_f1_mean']:.3f} ± {res[m]['macro_f1_std']:.3f}" if m in res else "-"
            for m in methods
        ]
        table.add_row(
            task, *cells, f">= {TARGETS[task]:.2f}" if task in TARGETS else "+10 pts vs supervised"
        )
    console.print(table)
    print_calibration(summary)


def print_calibration(summary: dict[str, dict[str, dict[str, Any]]]) -> None:
    """ECE, uncertain rate and accuracy of confident windows, mean over seeds, for the methods
    scored through `evaluate` (those with probabilities from a trained head)."""
    methods = sorted(
        {m for t in summary.values() for m, r in t.items() if r.get("ece_mean") is not None},
        key=lambda m: (m != "SimCLR + fine-tune", m),
    )
    if not methods:
        return
    table = Table(title="calibration: ECE / uncertain / accuracy when confident")
    table.add_column("task")
    for m in methods:
        table.add_column(m)
    for task, res in summary.items():
        cells = []
        for m in methods:
            r = res.get(m, {})
            if r.get("ece_mean") is None:
                cells.append("-")
                continue
            conf = r["confident_accuracy_mean"]
            cells.append(
                f"{r['ece_mean']:.3f} / {r['uncertain_rate_mean']:.0%} / "
                + ("-" if conf is None else f"{conf:.3f}")
            )
        table.add_row(task, *cells)
    console.print(table)
    console.print(
        f"ECE over 15 equal-width confidence bins on test windows, mean over seeds (target <= "
        f"{TARGET_ECE:.2f}); confident = top probability >= the uncertain threshold."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench fewlabel", description=__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tasks", default="all", help="comma list of: sim, cwru (default all)")
    parser.add_argument("--config", type=Path, help="TOML training config (budget, model)")
    parser.add_argument("--set", action="append", default=[], help="override field=value")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    base = load_config(args.config, args.set)
    groups = {
        "sim": [t for t in TASKS if TASKS[t][0] == "sim-reference"],
        "cwru": [t for t in TASKS if TASKS[t][0].startswith("cwru")],
    }
    wanted = list(groups) if args.tasks == "all" else args.tasks.split(",")
    if "cwru" in wanted and not (default_data_root() / "cwru").is_dir() and base.data_root is None:
        console.print(
            f"[yellow]skipping CWRU tasks: {default_data_root() / 'cwru'} not found[/yellow]"
        )
        wanted.remove("cwru")
    runs: dict[str, list[dict[str, Any]]] = {}
    timings: dict[str, float] = {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in range(args.seeds):
        for group in wanted:
            tasks = groups[group]
            t0 = time.perf_counter()
            first = TASKS[tasks[0]]
            pre_cfg = task_config(base, first[0], first[1], seed)
            pre = pretrain(pre_cfg, build_split(pre_cfg), show_progress=False)
            timings[f"pretrain {group} seed {seed}"] = time.perf_counter() - t0
            timings[f"pretrain views/s {group}"] = pre.views_per_second
            for task in tasks:
                data, labels = TASKS[task]
                t1 = time.perf_counter()
                runs.setdefault(task, []).append(
                    run_task(
                        task_config(base, data, labels, seed), pre.encoder, not args.no_baselines
                    )
                )
                timings[f"{task} seed {seed}"] = time.perf_counter() - t1
                console.print(
                    f"{task} seed {seed}: "
                    + ", ".join(f"{m} {r['macro_f1']:.3f}" for m, r in runs[task][-1].items())
                )
                summary = summarize(runs)
                args.out.write_text(
                    json.dumps(
                        {
                            "config": base.model_dump(mode="json"),
                            "summary": summary,
                            "runs": runs,
                            "seconds": timings,
                        },
                        indent=1,
                    )
                )
    print_table(summarize(runs))
    console.print(f"wrote {args.out}")
    return 0

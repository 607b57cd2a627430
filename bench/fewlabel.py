"""`python -m bench fewlabel`: SimCLR + fine-tune vs supervised only vs pseudo-labeling (and the
same recipe from an encoder that never pretrained, kNN / prototype on frozen embeddings, a
spectral template, and a zero-label envelope analysis),
macro-F1 mean ± std and the worst seed, with each method's rank per task, on the simulator's
reference scenario and two real machines: CWRU (in distribution, and transfer: unseen bearing,
cross-load both ways, leave one load out) and MFPT where its clone is (in distribution,
cross-load both ways). Prints a table and writes bench/results/fewlabel.json (updated after
every task).

Tasks that share an unlabeled pool (every CWRU task but the unseen bearing, whose pool leaves
the 0.014" records out; every MFPT task) share one encoder, pretrained once per seed and
fine-tuned per task.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.options import add_config_options, config_from
from edge_agent.contract.preprocess import frame
from edge_agent.physics.bearing_sim import BearingGeometry
from edge_agent.physics.evidence import (
    EvidenceError,
    estimate_shaft_hz,
    evidence,
    select_band,
)
from train.config import DATA_DESCRIPTIONS, TrainConfig
from train.cwru import default_data_root
from train.data import (
    LOCATION_CLASSES,
    build_split,
    machine_geometry,
    pool_name,
    raw_test_records,
)
from train.loop import MIN_TEMPERATURE, finetune, initial_encoder, pretrain
from train.metrics import classification_metrics
from train.mfpt import MFPT_SOURCE, mfpt_root
from train.records import Record
from train.report import VIEWS  # what the recipe fuses with the model, each behind its gate
from train.runs import evaluate, probability_metrics
from train.spectral import fit_spectral
from train.workflow import (
    frozen_embedding_metrics,
    run_baselines,
    spectral_template_metrics,
)

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
    "cwru cross-load 3->0, 50/class": ("cwru-crossload-3to0", 50),
    **{f"cwru leave load {k} out, 50/class": (f"cwru-lolo-{k}", 50) for k in range(4)},
    'cwru unseen bearing (0.014" held out), 50/class': ("cwru-unseen-bearing", 50),
    "mfpt 2-class, 5/class": ("mfpt-2class", 5),
    "mfpt cross-load low->high, 5/class": ("mfpt-low-to-high", 5),
    "mfpt cross-load high->low, 5/class": ("mfpt-high-to-low", 5),
}
TARGETS = {
    "cwru 4-class, 5/class": 0.97,
    "cwru 4-class, 50/class": 0.99,
    "cwru 10-class, 5/class": 0.97,
    "cwru cross-load 0->3, 50/class": 0.98,
    "cwru cross-load 3->0, 50/class": 0.98,
    'cwru unseen bearing (0.014" held out), 50/class': 0.90,
}
TARGET_TEXT = {"sim-reference (200 labels)": ">= 0.95 and +10 pts vs supervised"}
RECIPE = "SimCLR + fine-tune"
MODEL_ALONE = "SimCLR + fine-tune, model alone"  # the recipe without its fused views
# the same fine-tune from an encoder that never pretrained: what the pretraining adds
UNPRETRAINED = "the recipe, never pretrained"
UNPRETRAINED_ALONE = "the recipe, never pretrained, model alone"
NOT_RANKED = (MODEL_ALONE, UNPRETRAINED_ALONE)  # they show what a part adds; they do not compete
PAIRED = {  # what the pretraining adds to each: (pretrained row, never-pretrained row)
    "the recipe": (RECIPE, UNPRETRAINED),
    "the model alone": (MODEL_ALONE, UNPRETRAINED_ALONE),
}
TIE = 0.005  # a paired macro-F1 gap smaller than this is a tie
FUSED_TEMPLATE = "the recipe's template, without the model (--cheap-only)"
# --tasks accepts these group names, a data name (`cwru-lolo-2`) or a task name
GROUPS: dict[str, list[str]] = {
    "sim": [t for t, (d, _) in TASKS.items() if d == "sim-reference"],
    "cwru": [t for t, (d, _) in TASKS.items() if d.startswith("cwru")],
    "mfpt": [t for t, (d, _) in TASKS.items() if d.startswith("mfpt")],
    "transfer": [
        t
        for t, (d, _) in TASKS.items()
        if d.startswith(("cwru-crossload", "cwru-lolo", "cwru-unseen", "mfpt-low", "mfpt-high"))
    ],
    "lolo": [t for t, (d, _) in TASKS.items() if d.startswith("cwru-lolo")],
}

# -- zero-label envelope analysis ---------------------------------------------------------------

ENVELOPE = "envelope analysis (0 labels)"
ENVELOPE_WINDOW = 4096  # samples; 341 ms at 12 kHz: the right line first in >= 95 % of windows
BAND_SECONDS = 2.0  # the demodulation band is chosen once per record, on its first 2 s
RPM_RANGE = (600.0, 3600.0)  # where shaft speed is searched when a record does not carry it


def shaft_hz_of(record: Record) -> float:
    """The record's measured speed (meta rpm), else estimated from its first seconds."""
    if math.isfinite(record.shaft_hz):
        return record.shaft_hz
    fs = record.sample_rate_hz
    head = record.signal[: int(BAND_SECONDS * fs)]
    return estimate_shaft_hz(head, fs, RPM_RANGE[0] / 60, RPM_RANGE[1] / 60)


def envelope_labels(record: Record, geometry: BearingGeometry, hop: int) -> list[str]:
    """Location class of each ENVELOPE_WINDOW-sample window of `record` (hop apart): the class
    of the strongest clear defect line (physics.evidence), "normal" when no line is clear."""
    fs, x = record.sample_rate_hz, record.signal
    if x.shape[0] < ENVELOPE_WINDOW:
        return []
    shaft_hz = shaft_hz_of(record)
    band = select_band(x[: int(BAND_SECONDS * fs)], fs)
    out = []
    for w in frame(x, ENVELOPE_WINDOW, hop):
        try:
            out.append(evidence(w, fs, shaft_hz, geometry, band).strongest or "normal")
        except EvidenceError:  # a flat or broken window shows no line
            out.append("normal")
    return out


def envelope_baseline(records: list[Record], geometry: BearingGeometry, hop: int) -> dict:
    """Macro-F1 of zero-label envelope analysis over location classes (normal / inner / outer /
    ball), on the test records' raw signal. Labels of size classes ("inner_race_014") count
    as their location: a 10-class task is scored on location only."""
    truth: list[int] = []
    pred: list[int] = []
    index = {name: i for i, name in enumerate(LOCATION_CLASSES)}
    for r in records:
        location = next(c for c in LOCATION_CLASSES if r.label == c or r.label.startswith(c + "_"))
        labels = envelope_labels(r, geometry, hop)
        truth += [index[location]] * len(labels)
        pred += [index[label] for label in labels]
    if not truth:
        raise ValueError(f"no test record holds a {ENVELOPE_WINDOW}-sample window")
    probs = np.eye(len(LOCATION_CLASSES))[pred]
    m = classification_metrics(probs, np.array(truth), LOCATION_CLASSES)
    return {**m, "uncertain_rate": None, "scored_on": "location", "windows": len(truth)}


# -- tasks, summary, table ----------------------------------------------------------------------


def with_data(base: TrainConfig, tasks: list[str]) -> list[str]:
    """`tasks` less those on a real data set whose folder is absent, saying which and why."""
    root = base.data_root or default_data_root()
    for prefix, folder, hint in (
        ("cwru", root / "cwru", ""),
        ("mfpt", mfpt_root(root), f" (clone {MFPT_SOURCE} there)"),
    ):
        if not folder.is_dir() and any(TASKS[t][0].startswith(prefix) for t in tasks):
            note = f"skipping {prefix.upper()} tasks: {folder} not found{hint}"
            console.print(f"[yellow]{note}[/yellow]")
            tasks = [t for t in tasks if not TASKS[t][0].startswith(prefix)]
    return tasks


def task_config(base: TrainConfig, data: str, labels: int, seed: int) -> TrainConfig:
    """`base` on one task and seed. MFPT runs without the physics view: its rig's bearing is
    not in the agent's catalogue (`bearing` names a designation), so the view's defect lines
    would be the drive end's 6205, not MFPT's (the envelope row uses MFPT_GEOMETRY)."""
    update = {"data": data, "labels_per_class": labels, "seed": seed}
    if data.startswith("mfpt"):
        update["physics"] = False
    return base.model_copy(update=update)


def run_task(
    cfg: TrainConfig, encoder, baselines: bool, unpretrained: bool = False
) -> dict[str, Any]:
    """Every method's test metrics on the task; with no encoder only the rows that train
    nothing on a budget (spectral template, envelope analysis). `unpretrained` adds the recipe
    fine-tuned from a freshly initialized encoder, the check that the pretraining pays."""
    split = build_split(cfg)
    results: dict[str, dict[str, Any]] = {}
    if encoder is not None:
        results.update(recipe_rows(cfg, split, copy.deepcopy(encoder), RECIPE, MODEL_ALONE))
        if unpretrained:
            fresh = initial_encoder(cfg, next(encoder.parameters()).device)
            results.update(recipe_rows(cfg, split, fresh, UNPRETRAINED, UNPRETRAINED_ALONE))
        results.update(frozen_embedding_metrics(encoder, split, cfg.uncertain_below))
        if baselines:
            results.update(run_baselines(cfg, split, show_progress=False))
    else:
        results.update(fused_template_metrics(cfg, split))
    results.update(spectral_template_metrics(cfg, split))
    results[ENVELOPE] = envelope_baseline(raw_test_records(cfg), machine_geometry(cfg), cfg.hop)
    return {
        name: {
            "macro_f1": m["macro_f1"],
            "accuracy": m["accuracy"],
            "uncertain_rate": m["uncertain_rate"],
            "confident_accuracy": m["confident_accuracy"],
            "ece": m.get("ece"),  # methods scored through evaluate(); None for the others
            **({"scored_on": m["scored_on"]} if "scored_on" in m else {}),
            **{f"{v}_used": m[f"{v}_used"] for v in VIEWS if f"{v}_used" in m},
        }
        for name, m in results.items()
    }


def recipe_rows(cfg: TrainConfig, split, encoder, name: str, alone_name: str) -> dict[str, Any]:
    """The recipe fine-tuned from `encoder`: its fused output and its model alone."""
    model = finetune(cfg, split, encoder, show_progress=False)
    recipe = evaluate(model, split, cfg.uncertain_below)
    used = {f"{view}_used": bool(recipe.get(view, {}).get("used")) for view in VIEWS}
    alone = recipe.get("model_alone", recipe)
    return {name: {**recipe, **used}, alone_name: {**alone, "ece": None}}


def fused_template_metrics(cfg: TrainConfig, split) -> dict[str, dict[str, Any]]:
    """The recipe's spectral template where it passes its gate (train.spectral), as fitted in the
    recipe but without the model (spectral_model_weight 0): no pretraining needed; nothing where
    the gate keeps the template out (the recipe is then the model)."""
    n = len(split.class_names)
    cfg = cfg.model_copy(update={"spectral_model_weight": 0.0})
    undecided = np.full((len(split.val), n), 1.0 / n)
    head, _ = fit_spectral(cfg, split, undecided, MIN_TEMPERATURE)
    if head is None:
        return {}
    probs = head.fuse(np.full((len(split.test), n), 1.0 / n), split.test.x)
    return {FUSED_TEMPLATE: probability_metrics(probs, split, cfg.uncertain_below)}


def ranks(means: dict[str, float]) -> dict[str, int]:
    """1 = best mean macro-F1; equal means (to 1e-6) share a rank (1, 1, 3, ...)."""
    return {m: 1 + sum(round(v, 6) > round(means[m], 6) for v in means.values()) for m in means}


def mean_known(values: list[float | None]) -> float | None:
    """Mean over the seeds that have a value (a seed with no confident window has none)."""
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for task, seeds in runs.items():
        out[task] = {}
        for method in dict.fromkeys(m for s in seeds for m in s):  # a row may miss a seed
            runs_of = [s[method] for s in seeds if method in s]
            f1 = np.array([r["macro_f1"] for r in runs_of])
            acc = np.array([r["accuracy"] for r in runs_of])
            out[task][method] = {
                "macro_f1_mean": float(f1.mean()),
                "macro_f1_std": float(f1.std()),
                "macro_f1_worst": float(f1.min()),
                "accuracy_mean": float(acc.mean()),
                **{
                    f"{key}_mean": mean_known([r.get(key) for r in runs_of])
                    for key in ("ece", "uncertain_rate", "confident_accuracy")
                },
                "seeds": len(runs_of),
                **{
                    f"{v}_used_seeds": sum(bool(r.get(f"{v}_used")) for r in runs_of) for v in VIEWS
                },
            }
        rank = ranks({m: r["macro_f1_mean"] for m, r in out[task].items() if m not in NOT_RANKED})
        for method, r in out[task].items():
            r["rank"] = rank.get(method)
    return out


def pretraining_gain(seeds: list[dict[str, Any]], pretrained: str, never: str) -> dict | None:
    """`pretrained` against `never` on the seeds that ran both (same split, same fine-tune):
    the mean per-seed gain in macro-F1, the worst seed's (worst against worst), and how many
    seeds gained, tied (|gain| < TIE) or lost. None where no seed ran both."""
    pairs = [
        (s[pretrained]["macro_f1"], s[never]["macro_f1"])
        for s in seeds
        if pretrained in s and never in s
    ]
    if not pairs:
        return None
    with_, without = np.array(pairs).T
    gain = with_ - without
    return {
        "mean": float(gain.mean()),
        "worst_seed": float(with_.min() - without.min()),
        "gained": int((gain >= TIE).sum()),
        "tied": int((np.abs(gain) < TIE).sum()),
        "lost": int((gain <= -TIE).sum()),
    }


def pretraining_gains(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, dict]]:
    """Per task, what the pretraining adds to the recipe and to its model alone (`PAIRED`)."""
    out: dict[str, dict[str, dict]] = {}
    for task, seeds in runs.items():
        gains = {
            part: pretraining_gain(seeds, pretrained, never)
            for part, (pretrained, never) in PAIRED.items()
        }
        if any(gains.values()):
            out[task] = {part: g for part, g in gains.items() if g}
    return out


def print_gains(gains: dict[str, dict[str, dict]]) -> None:
    if not gains:
        return
    table = Table(
        title="what the pretraining adds: pretrained minus never pretrained, paired per seed "
        f"(mean / worst seed; seeds gained, tied within {TIE}, lost)"
    )
    table.add_column("task")
    for part in PAIRED:
        table.add_column(part)
    for task, parts in gains.items():
        cells = [
            f"{g['mean']:+.3f} / {g['worst_seed']:+.3f}; {g['gained']}-{g['tied']}-{g['lost']}"
            if (g := parts.get(part))
            else "-"
            for part in PAIRED
        ]
        table.add_row(task, *cells)
    console.print(table)


def print_table(summary: dict[str, dict[str, dict[str, float]]]) -> None:
    table = Table(
        title="few-label benchmark: macro-F1 on test windows, mean ± std over seeds, "
        "(worst seed), #rank on the task"
    )
    methods = sorted(
        {m for t in summary.values() for m in t},
        key=lambda m: (
            m != RECIPE,
            m != FUSED_TEMPLATE,
            m != MODEL_ALONE,
            m not in (UNPRETRAINED, UNPRETRAINED_ALONE),
            m == ENVELOPE,
            m,
        ),
    )
    table.add_column("task")
    for m in methods:
        table.add_column(m)
    table.add_column("target")
    for task, res in summary.items():
        cells = [
            f"{res[m]['macro_f1_mean']:.3f} ± {res[m]['macro_f1_std']:.3f} "
            f"({res[m]['macro_f1_worst']:.3f})" + (f" #{res[m]['rank']}" if res[m]["rank"] else "")
            if m in res
            else "-"
            for m in methods
        ]
        target = f">= {TARGETS[task]:.2f}" if task in TARGETS else TARGET_TEXT.get(task, "-")
        table.add_row(task, *cells, target)
    console.print(table)
    print_calibration(summary)
    console.print(
        f"{ENVELOPE}: no labels, the bearing's geometry and the record's shaft speed; "
        "scored on fault location (on 10-class tasks too)."
    )
    if not any(RECIPE in r for r in summary.values()):
        return
    for view, text in VIEWS.items():
        used = [
            f"{task} ({r[RECIPE][f'{view}_used_seeds']}/{r[RECIPE]['seeds']} seeds)"
            for task, r in summary.items()
            if RECIPE in r and r[RECIPE][f"{view}_used_seeds"]
        ]
        console.print(
            f"{RECIPE} fuses the {text} where it passed its gate: "
            + (", ".join(used) if used else "on no task")
        )
    console.print(f"'{MODEL_ALONE}' is the same model without them (not ranked).")
    if any(UNPRETRAINED in r for r in summary.values()):
        console.print(
            f"'{UNPRETRAINED}': the same fine-tune from an encoder that never pretrained; the "
            "table below pairs it with the pretrained one seed by seed."
        )


def select_tasks(spec: str) -> list[str]:
    """'all', or a comma list of group names, data names and task names -> task names."""
    if spec == "all":
        return list(TASKS)
    chosen: list[str] = []
    for item in _items(spec):
        found = GROUPS.get(item) or [t for t, (d, _) in TASKS.items() if item in (t, d)]
        if not found:
            raise ValueError(
                f"unknown task {item!r}; valid: {', '.join(GROUPS)}, a data name "
                f"({', '.join(dict.fromkeys(d for d, _ in TASKS.values()))}) or a task name"
            )
        chosen += [t for t in found if t not in chosen]
    return chosen


def _items(spec: str) -> list[str]:
    """The comma list's items; a task name holds commas of its own ("cwru 4-class, 5/class"), so
    the longest run of parts that names a task is one item."""
    parts = [part.strip() for part in spec.split(",")]
    items, i = [], 0
    while i < len(parts):
        j = next((j for j in range(len(parts), i + 1, -1) if ", ".join(parts[i:j]) in TASKS), i + 1)
        items.append(", ".join(parts[i:j]))
        i = j
    return items


def pretrain_group(base: TrainConfig, task: str) -> str:
    """Tasks with one key share a pretrained encoder: same unlabeled pool, and no labels in
    pretraining. SupCon pretrains on the task's labels and the monitor keeps the epoch that
    scores best on them (a cross-load task must not pick its encoder with labels of the loads
    it is tested on), so then each task pretrains alone."""
    data = TASKS[task][0]
    own = base.loss == "supcon" or base.pretrain_monitor
    return f"task {data}, {TASKS[task][1]}/class" if own else pool_name(data)


def print_calibration(summary: dict[str, dict[str, dict[str, Any]]]) -> None:
    """ECE, uncertain rate and accuracy of confident windows, mean over seeds, for the methods
    scored through `evaluate` (those with probabilities from a trained head)."""
    methods = sorted(
        {m for t in summary.values() for m, r in t.items() if r.get("ece_mean") is not None},
        key=lambda m: (m != RECIPE, m),
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
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1"
    )
    parser.add_argument(
        "--tasks",
        default="all",
        help=f"comma list of groups ({', '.join(GROUPS)}), data names (cwru-lolo-2) or task "
        "names (default all)",
    )
    add_config_options(parser)
    parser.add_argument(
        "--no-baselines",
        action="store_true",
        help="skip supervised only and pseudo-labeling (the envelope and spectral template rows "
        "are cheap and stay)",
    )
    parser.add_argument(
        "--no-ablation",
        action="store_true",
        help=f"skip '{UNPRETRAINED}' (the recipe fine-tuned from an encoder that never "
        "pretrained: whether the pretraining pays; one more fine-tune per task)",
    )
    parser.add_argument(
        "--cheap-only",
        action="store_true",
        help="no pretraining: the spectral template and envelope rows, and the recipe's template "
        "without the model (where its gate passes: every CWRU and MFPT task); minutes for every "
        "task and seed",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    base = config_from(parser, args)
    try:
        tasks = select_tasks(args.tasks)
    except ValueError as err:
        parser.error(str(err))
    tasks = with_data(base, tasks)
    groups: dict[str, list[str]] = {}
    for task in tasks:
        groups.setdefault(pretrain_group(base, task), []).append(task)
    runs: dict[str, list[dict[str, Any]]] = {}
    timings: dict[str, float] = {}
    kept: dict[str, dict[str, Any]] = {}  # the pretraining epoch the monitor kept
    described = {
        t: {
            "data": TASKS[t][0],
            "labels_per_class": TASKS[t][1],
            "split": DATA_DESCRIPTIONS[TASKS[t][0]],
            "target_macro_f1": TARGETS.get(t),
            "pretrain_group": pretrain_group(base, t),
        }
        for t in tasks
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for group, members in groups.items():
            encoder = None
            if not args.cheap_only:
                t0 = time.perf_counter()
                first = TASKS[members[0]]
                pre_cfg = task_config(base, first[0], first[1], seed)
                pre = pretrain(pre_cfg, build_split(pre_cfg), show_progress=False)
                timings[f"pretrain {group} seed {seed}"] = time.perf_counter() - t0
                timings[f"pretrain views/s {group}"] = pre.views_per_second
                if pre.selection:
                    kept[f"{group} seed {seed}"] = {
                        "epoch": pre.selection["best_epoch"],
                        "trained": len(pre.selection["scores"]),
                        "scores": [round(v, 4) for v in pre.selection["scores"]],
                    }
                encoder = pre.encoder
            for task in members:
                data, labels = TASKS[task]
                t1 = time.perf_counter()
                runs.setdefault(task, []).append(
                    run_task(
                        task_config(base, data, labels, seed),
                        encoder,
                        not args.no_baselines,
                        unpretrained=not args.no_ablation,
                    )
                )
                timings[f"{task} seed {seed}"] = time.perf_counter() - t1
                console.print(
                    f"{task} seed {seed}: "
                    + ", ".join(f"{m} {r['macro_f1']:.3f}" for m, r in runs[task][-1].items())
                )
                args.out.write_text(
                    json.dumps(
                        {
                            "config": base.model_dump(mode="json"),
                            "tasks": described,
                            "summary": summarize(runs),
                            "pretraining_gain": pretraining_gains(runs),
                            "runs": runs,
                            "seconds": timings,
                            "pretrain_epoch_kept": kept,
                        },
                        indent=1,
                    )
                )
    print_table(summarize(runs))
    print_gains(pretraining_gains(runs))
    console.print(f"wrote {args.out}")
    return 0

"""The run report: Markdown with a metrics table per method, plus PNGs (PCA of embeddings before
fine-tuning, loss curves, confusion matrix of the fine-tuned model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def pca_2d(x: np.ndarray) -> np.ndarray:
    """Project (N, D) onto its first two principal components -> (N, 2)."""
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_embeddings(
    path: Path, emb: np.ndarray, y: np.ndarray, class_names: list[str], title: str
) -> None:
    plt = _plt()
    xy = pca_2d(emb)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for c, name in enumerate(class_names):
        m = y == c
        if m.any():
            ax.scatter(xy[m, 0], xy[m, 1], s=6, alpha=0.6, label=name)
    ax.set_title(title)
    ax.legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_losses(path: Path, curves: dict[str, list[float]]) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3), squeeze=False)
    for ax, (name, values) in zip(axes[0], curves.items(), strict=True):
        ax.plot(values, lw=0.8)
        ax.set_title(f"{name} loss")
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(path: Path, confusion: list[list[int]], class_names: list[str]) -> None:
    plt = _plt()
    cm = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(class_names), 1 + 0.5 * len(class_names)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=60, fontsize=7, ha="right")
    ax.set_yticks(range(len(class_names)), class_names, fontsize=7)
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def metrics_table(results: dict[str, dict[str, Any]]) -> str:
    rows = [
        "| method | accuracy | macro-F1 | uncertain rate | accuracy when confident | ECE |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in results.items():
        conf, ece = m.get("confident_accuracy"), m.get("ece")
        rows.append(
            f"| {name} | {m['accuracy']:.3f} | {m['macro_f1']:.3f} | {m['uncertain_rate']:.3f} | "
            f"{'-' if conf is None else f'{conf:.3f}'} | {'-' if ece is None else f'{ece:.3f}'} |"
        )
    return "\n".join(rows)


def task_table(tasks: dict[str, dict[str, Any]]) -> str:
    """Per task: its own head vs the flat head's marginal (accuracy / macro-F1)."""
    rows = [
        "| task | classes | task head accuracy | task head macro-F1 | flat head accuracy "
        "| flat head macro-F1 |",
        "|---|---|---|---|---|---|",
    ]
    for task, m in tasks.items():
        head, flat = m["head"], m["from_flat_head"]
        rows.append(
            f"| {task} | {', '.join(head['per_class'])} | {head['accuracy']:.3f} "
            f"| {head['macro_f1']:.3f} | {flat['accuracy']:.3f} | {flat['macro_f1']:.3f} |"
        )
    return "\n".join(rows)


VIEWS = {
    "physics": "physics view (defect lines at the shaft speed)",
    "spectral": "spectral template (where the pool looks like the labeled machine)",
}


def pool_label_text(view: dict[str, Any]) -> str:
    """The pool windows a fused template learned from, by what labeled them ("" for none)."""
    if not view.get("used") or "envelope_labels" not in view:
        return ""

    def counts(by_class: dict[str, int]) -> str:
        return ", ".join(f"{c} {n}" for c, n in by_class.items()) or "none"

    by_template = "; ".join(f"{v} view {counts(c)}" for v, c in view.get("pool_labels", {}).items())
    vouched = view.get("vouched_labels")
    return (
        f"; pool windows it learned from: by a clear defect line {counts(view['envelope_labels'])}"
        + (f"; by the model where the lines side with it: {counts(vouched)}" if vouched else "")
        + f"; by its own confident calls: {by_template or 'none'}"
    )


def views_section(main: dict[str, Any]) -> list[str]:
    """What the recipe fused with its model, why, and the model alone."""
    lines = [
        f"- {text}: **{'fused' if main[key].get('used') else 'not used'}**, "
        f"{main[key].get('reason', '')}{pool_label_text(main[key])}"
        for key, text in VIEWS.items()
        if main.get(key)
    ]
    alone = main.get("model_alone")
    if alone:
        lines.append(
            f"- the model alone: accuracy {alone['accuracy']:.3f}, macro-F1 "
            f"{alone['macro_f1']:.3f}, uncertain {alone['uncertain_rate']:.3f}"
        )
    return ["## What the first method fused", "", *lines, ""] if lines else []


def write_report(
    run_dir: Path,
    *,
    title: str,
    results: dict[str, dict[str, Any]],
    class_names: list[str],
    split_counts: dict[str, Any],
    collapse: dict[str, Any] | None,
    images: list[str],
    selection: dict[str, Any] | None = None,
) -> Path:
    """Write report.md in the run folder; returns its path."""
    main = next(iter(results.values()))
    lines = [
        f"# {title}",
        "",
        "## Test metrics",
        "",
        metrics_table(results),
        "",
        "ECE: expected calibration error over 15 equal-width confidence bins (0 = a window's "
        "confidence is its chance of being right); confident = not uncertain.",
        "",
        *views_section(main),
        "## Split",
        "",
        "```",
        *(f"{k}: {v}" for k, v in split_counts.items()),
        "```",
        "",
    ]
    if collapse:
        verdict = collapse.get("warning") or "no collapse detected"
        lines += [
            "## Representation health",
            "",
            f"effective rank {collapse.get('effective_rank', float('nan')):.1f} "
            f"of {collapse.get('dims')}, "
            f"mean per-dimension std {collapse.get('std_mean', float('nan')):.4f}: **{verdict}**",
            "",
        ]
    if selection:
        lines += [
            "## Pretraining epoch kept",
            "",
            f"epoch {selection['best_epoch']} of the {len(selection['scores'])} trained: "
            f"{selection['score']} {selection['best_score']:.3f} (train.monitor)",
            "",
        ]
    lines += [
        "## Per-class (first method)",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for name in class_names:
        pc = main["per_class"][name]
        lines.append(
            f"| {name} | {pc['precision']:.3f} | {pc['recall']:.3f} | {pc['f1']:.3f} "
            f"| {pc['support']} |"
        )
    if main.get("tasks"):
        lines += ["", "## Multi-head tasks (first method)", "", task_table(main["tasks"])]
    lines += ["", *(f"![{img}]({img})" for img in images), ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path

"""Classification metrics in numpy: accuracy, macro-F1, per-class precision/recall, confusion,
and the "uncertain" rate with accuracy on confident windows."""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts; rows are true classes, columns predictions."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def classification_metrics(
    probs: np.ndarray, y_true: np.ndarray, class_names: list[str], uncertain_below: float = 0.7
) -> dict[str, Any]:
    """Metrics of (N, C) probabilities against true labels.

    Macro-F1 averages over the classes present in the truth or the predictions (as sklearn).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    if probs.shape[0] == 0:
        raise ValueError("no test windows to evaluate")
    y_pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    n = len(class_names)
    cm = confusion_matrix(y_true, y_pred, n)
    tp = np.diag(cm).astype(float)
    precision = np.divide(tp, cm.sum(0), out=np.zeros(n), where=cm.sum(0) > 0)
    recall = np.divide(tp, cm.sum(1), out=np.zeros(n), where=cm.sum(1) > 0)
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros(n), where=(precision + recall) > 0
    )
    present = (cm.sum(0) + cm.sum(1)) > 0
    confident = conf >= uncertain_below
    return {
        "n": len(y_true),
        "accuracy": float((y_pred == y_true).mean()),
        "macro_f1": float(f1[present].mean()),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(cm[i].sum()),
            }
            for i, name in enumerate(class_names)
        },
        "confusion": cm.tolist(),
        "uncertain_rate": float(1 - confident.mean()),
        "confident_accuracy": float((y_pred[confident] == y_true[confident]).mean())
        if confident.any()
        else None,
        "nll": float(-np.log(np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, None)).mean()),
    }

"""The run folder: the fine-tuned checkpoint (what export reads), calibration and held-out windows,
the split description and metrics. Everything export and the report need, nothing guessed later."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_agent.pipeline.confidence import expected_calibration_error
from train.config import TrainConfig
from train.heads import to_numpy_head
from train.loop import Classifier, encoder_spec
from train.metrics import classification_metrics
from train.multitask import task_metrics
from train.splits import Split, split_summary

FINETUNED = "finetuned.pt"
PRETRAINED = "pretrained.pt"
CALIBRATION_WINDOWS = 512


def probability_metrics(probs: np.ndarray, split: Split, uncertain_below: float) -> dict[str, Any]:
    """Classification metrics of (N, C) test probabilities, with the expected calibration error."""
    metrics = classification_metrics(probs, split.test.y, split.class_names, uncertain_below)
    metrics["ece"] = expected_calibration_error(probs, split.test.y)
    return metrics


def evaluate(model: Classifier, split: Split, uncertain_below: float) -> dict[str, Any]:
    """Test metrics, with calibration ("ece", pipeline.confidence) beside the uncertain rate
    and the accuracy of confident windows; with multi-head fine-tuning also per task ("tasks")."""
    probs = model.fused_probabilities(split.test)
    metrics = probability_metrics(probs, split, uncertain_below)
    if model.physics_report:
        metrics["physics"] = model.physics_report
    if model.spectral_report:
        metrics["spectral"] = model.spectral_report
    if model.envelope_labels:
        metrics["finetune_envelope_labels"] = model.envelope_labels
    if model.physics is not None or model.spectral is not None:
        alone = probability_metrics(model.probabilities(split.test.x), split, uncertain_below)
        metrics["model_alone"] = {
            k: alone[k]
            for k in ("accuracy", "macro_f1", "uncertain_rate", "confident_accuracy", "ece")
        }
    if model.task_head is not None and model.task_targets is not None:
        metrics["tasks"] = task_metrics(
            model.task_probabilities(split.test.x),
            probs,
            split.test.y,
            model.task_targets,
            uncertain_below,
        )
    return metrics


def task_heads(model: Classifier) -> dict[str, Any]:
    """The multi-head task heads as numpy arrays (standardization folded in), by task."""
    if model.task_head is None or model.task_targets is None:
        return {}
    mean, scale = model.head.mean.cpu().numpy(), model.head.scale.cpu().numpy()
    return {
        task: {
            "classes": model.task_targets.names[task],
            "flat_to_task": model.task_targets.maps[task].tolist(),
            "head": to_numpy_head(head.cpu()).fold_input_affine(mean, scale).to_arrays(),
        }
        for task, head in model.task_head.heads.items()
    }


def reference_stats(
    model: Classifier, split: Split, pool_limit: int = 4000
) -> dict[str, dict[str, Any]]:
    """Mean and covariance of training embeddings per class, for the device's drift monitor.

    Uses the labeled windows plus pool windows the model classifies with confidence >= 0.9.
    """
    pool = split.pool.windows(limit=pool_limit)
    probs = model.probabilities(pool.x)
    keep = probs.max(1) >= 0.9
    emb = np.concatenate([model.embed(split.labeled.x), model.embed(pool.x[keep])])
    y = np.concatenate([split.labeled.y, probs.argmax(1)[keep]])
    stats = {}
    for c, name in enumerate(split.class_names):
        e = emb[y == c].astype(np.float64)
        if len(e) >= 2:
            stats[name] = {
                "count": len(e),
                "mean": e.mean(0).tolist(),
                "cov": np.cov(e, rowvar=False).tolist(),
            }
    return stats


def open_set(
    model: Classifier, split: Split, stats: dict[str, dict[str, Any]], quantile: float = 0.99
) -> dict[str, Any]:
    """The bundle's open-set threshold: the `quantile` of the unknown score (pipeline.openset)
    on validation windows of the known classes (labeled windows when there is no validation
    part). Empty when fewer than two classes have statistics."""
    from edge_agent.contract.bundle import ClassStats
    from edge_agent.pipeline.openset import OpenSetScorer, threshold_for

    try:
        scorer = OpenSetScorer({k: ClassStats(**v) for k, v in stats.items()})
    except ValueError:
        return {}
    x = split.val.x if len(split.val.x) >= 10 else split.labeled.x
    scores = scorer.score(model.embed(x))
    return {"unknown_above": threshold_for(scores, quantile), "quantile": quantile, "n": len(x)}


def calibration_windows(split: Split, seed: int) -> np.ndarray:
    """Representative windows for INT8 calibration: labeled plus pool windows over all records."""
    pool = split.pool.windows(limit=CALIBRATION_WINDOWS)
    x = np.concatenate([split.labeled.x, pool.x])
    rng = np.random.default_rng(seed)
    return x[rng.permutation(len(x))[:CALIBRATION_WINDOWS]]


def save_run(
    run_dir: Path,
    cfg: TrainConfig,
    model: Classifier,
    split: Split,
    metrics: dict[str, Any],
    provenance: dict[str, Any],
) -> Path:
    """Write finetuned.pt, calibration.npz, heldout.npz, split.json and metrics.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    head = model.head.cpu().to_numpy(model.temperature)
    stats = reference_stats(model, split)
    checkpoint = run_dir / FINETUNED
    torch.save(
        {
            "kind": "finetuned",
            "encoder": encoder_spec(cfg),
            "encoder_state": {k: v.cpu() for k, v in model.encoder.state_dict().items()},
            "head": head.to_arrays(),
            "class_names": split.class_names,
            "normal_class": "normal" if "normal" in split.class_names else split.class_names[0],
            "preprocess": {
                "sample_rate_hz": cfg.sample_rate_hz,
                "window": cfg.window,
                "hop": cfg.hop,
                "normalization": cfg.normalization,
            },
            "config": cfg.model_dump(mode="json"),
            "provenance": provenance,
            "metrics": metrics,
            "reference_stats": stats,
            "open_set": open_set(model, split, stats),
            "task_heads": task_heads(model),
            "physics": model.physics.head.to_dict() if model.physics else None,
            "physics_report": model.physics_report,
            "spectral": model.spectral.to_dict() if model.spectral else None,
            "spectral_report": model.spectral_report,
        },
        checkpoint,
    )
    np.savez_compressed(run_dir / "calibration.npz", x=calibration_windows(split, cfg.seed))
    heldout = {"x": split.test.x, "y": split.test.y}
    if split.test.shaft_hz is not None:
        heldout["shaft_hz"] = split.test.shaft_hz
    np.savez_compressed(run_dir / "heldout.npz", **heldout)
    (run_dir / "split.json").write_text(
        json.dumps({**split.description, "counts": split_summary(split)}, indent=1)
    )
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return checkpoint


def latest_checkpoint(out_dir: Path = Path("runs")) -> Path:
    """The newest runs/*/finetuned.pt; FileNotFoundError says how to make one."""
    found = sorted(Path(out_dir).glob(f"**/{FINETUNED}"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(
            f"no {FINETUNED} under {out_dir}/; run `faultwatch train run` (or `make demo`) first"
        )
    return found[-1]

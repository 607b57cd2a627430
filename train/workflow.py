"""End-to-end training workflow: split -> pretrain -> fine-tune -> baselines -> run folder + report.
The CLI commands and the benchmark are thin layers over these functions."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from train.baselines import pseudo_label, supervised
from train.config import TrainConfig
from train.data import build_split
from train.loop import (
    PretrainResult,
    embed,
    finetune,
    load_encoder,
    pick_device,
    pretrain,
)
from train.metrics import classification_metrics
from train.neighbors import knn_probabilities, prototype_probabilities
from train.report import plot_confusion, plot_embeddings, plot_losses, write_report
from train.runs import PRETRAINED, evaluate, probability_metrics, save_run
from train.spectral import spectral_template
from train.splits import Split, split_summary

logger = logging.getLogger(__name__)
SPECTRAL = "spectral template (linear)"


def frozen_embedding_metrics(
    encoder, split: Split, uncertain_below: float
) -> dict[str, dict[str, Any]]:
    """kNN and nearest-prototype classifiers on the frozen pretrained embeddings."""
    train_emb, test_emb = embed(encoder, split.labeled.x), embed(encoder, split.test.x)
    n = len(split.class_names)
    k = max(1, min(5, int(np.bincount(split.labeled.y, minlength=n).min())))
    return {
        "kNN on SimCLR embeddings": classification_metrics(
            knn_probabilities(train_emb, split.labeled.y, test_emb, n, k=k),
            split.test.y,
            split.class_names,
            uncertain_below,
        ),
        "prototype on SimCLR embeddings": classification_metrics(
            prototype_probabilities(train_emb, split.labeled.y, test_emb, n),
            split.test.y,
            split.class_names,
            uncertain_below,
        ),
    }


def run_baselines(cfg: TrainConfig, split: Split, show_progress: bool) -> dict[str, dict[str, Any]]:
    """Test metrics of the trained baselines: supervised only and pseudo-labeling."""
    out = {}
    for name, fn in (("supervised only", supervised), ("pseudo-labeling", pseudo_label)):
        model = fn(cfg, split, show_progress=show_progress)
        out[name] = evaluate(model, split, cfg.uncertain_below)
    return out


def spectral_template_metrics(cfg: TrainConfig, split: Split) -> dict[str, dict[str, Any]]:
    """The spectral template baseline (train.spectral): cheap, no pool."""
    probs = spectral_template(cfg, split).alone(split.test.x)
    return {SPECTRAL: probability_metrics(probs, split, cfg.uncertain_below)}


def provenance(cfg: TrainConfig, split: Split) -> dict[str, Any]:
    return {
        "data": cfg.data,
        "seed": cfg.seed,
        "split": split.description.get("scheme"),
        "counts": split_summary(split),
        "config": cfg.model_dump(mode="json"),
    }


def run_all(
    cfg: TrainConfig,
    *,
    baselines: bool = True,
    resume: bool = False,
    pretrained: Path | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """The whole recipe on one split; writes the run folder and returns the metrics per method."""
    t0 = time.perf_counter()
    run_dir = cfg.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    split = build_split(cfg)
    logger.info("split: %s", split_summary(split))
    if pretrained is not None:
        encoder = load_encoder(pretrained, pick_device(cfg.device))
        pre = PretrainResult(encoder, projection=None)  # type: ignore[arg-type]
    else:
        pre = pretrain(
            cfg, split, checkpoint=run_dir / PRETRAINED, resume=resume, show_progress=show_progress
        )
    plot_embeddings(
        run_dir / "embeddings_before_finetune.png",
        embed(pre.encoder, split.test.x),
        split.test.y,
        split.class_names,
        "test embeddings after pretraining (PCA)",
    )
    results: dict[str, dict[str, Any]] = {}
    frozen = frozen_embedding_metrics(pre.encoder, split, cfg.uncertain_below)
    model = finetune(cfg, split, pre.encoder, show_progress=show_progress)
    results["SimCLR + fine-tune"] = evaluate(model, split, cfg.uncertain_below)
    results.update(frozen)
    if baselines:
        results.update(run_baselines(cfg, split, show_progress))
        results.update(spectral_template_metrics(cfg, split))
    metrics = {
        "test": results,
        "temperature": model.temperature,
        "collapse": pre.collapse,
        "pretrain_selection": pre.selection,
        "pretrain_views_per_second": pre.views_per_second,
        "seconds": time.perf_counter() - t0,
    }
    checkpoint = save_run(run_dir, cfg, model, split, metrics, provenance(cfg, split))
    curves = {"pretrain": [h["loss"] for h in pre.history]} if pre.history else {}
    curves["fine-tune"] = [h["loss"] for h in model.history]
    plot_losses(run_dir / "loss_curves.png", curves)
    plot_confusion(
        run_dir / "confusion.png", results["SimCLR + fine-tune"]["confusion"], split.class_names
    )
    report = write_report(
        run_dir,
        title=f"faultwatch run {run_dir.name}",
        results=results,
        class_names=split.class_names,
        split_counts=split_summary(split),
        collapse=pre.collapse,
        selection=pre.selection,
        images=["embeddings_before_finetune.png", "loss_curves.png", "confusion.png"],
    )
    logger.info("run folder %s (checkpoint %s, report %s)", run_dir, checkpoint.name, report.name)
    return {"run_dir": str(run_dir), "checkpoint": str(checkpoint), "metrics": metrics}

"""Baselines on the same split: supervised only and pseudo-labeling (the spectral template is in
train.spectral, the kNN / prototype classifiers on frozen embeddings in train.neighbors)."""

from __future__ import annotations

import logging

import numpy as np

from train.config import TrainConfig
from train.loop import (
    Classifier,
    calibrate_temperature,
    initial_encoder,
    new_head,
    pick_device,
    train_classifier,
)
from train.splits import Split, WindowSet

logger = logging.getLogger(__name__)


def supervised(
    cfg: TrainConfig, split: Split, labeled: WindowSet | None = None, *, show_progress: bool = True
) -> Classifier:
    """Same encoder and head from random initialization, trained end-to-end on the labels only."""
    device = pick_device(cfg.device)
    encoder = initial_encoder(cfg, device)
    model = Classifier(encoder, new_head(cfg, len(split.class_names), device))
    train_classifier(
        cfg,
        model,
        labeled or split.labeled,
        epochs=cfg.supervised_epochs,
        lr=cfg.probe_lr,
        train_encoder=True,
        freeze_bn=False,
        stage="supervised",
        show_progress=show_progress,
    )
    calibrate_temperature(model, split.val)
    return model


def pseudo_label(
    cfg: TrainConfig, split: Split, *, show_progress: bool = True, pool_limit: int = 8000
) -> Classifier:
    """Self-training: fit on labels, label confident pool windows, refit on both (`pseudo_rounds`).

    Pseudo-labels are capped per class at the size of the largest class's share so the ~90%
    normal pool does not swamp the few fault windows.
    """
    model = supervised(cfg, split, show_progress=show_progress)
    pool = split.pool.windows(limit=pool_limit)
    for round_ in range(cfg.pseudo_rounds):
        probs = model.probabilities(pool.x)
        conf, pred = probs.max(1), probs.argmax(1)
        keep = np.flatnonzero(conf >= cfg.pseudo_threshold)
        cap = max(len(split.labeled), 1) * 4
        chosen = np.concatenate(
            [keep[pred[keep] == c][:cap] for c in range(len(split.class_names))]
        ).astype(int)
        logger.info(
            "pseudo-label round %d: %d of %d pool windows kept", round_ + 1, len(chosen), len(pool)
        )
        data = WindowSet.concat(
            [
                split.labeled,
                WindowSet(
                    pool.x[chosen],
                    pred[chosen].astype(np.int64),
                    [pool.record_ids[i] for i in chosen],
                ),
            ],
            split.labeled.x.shape[-1],
        )
        model = supervised(cfg, split, labeled=data, show_progress=show_progress)
    return model

"""Baselines on the same split: supervised only, pseudo-labeling, a spectral template, and
nearest-prototype / kNN classifiers on frozen embeddings (train.neighbors)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from train.config import TrainConfig
from train.encoder import build_encoder
from train.heads import fit_temperature
from train.loop import (
    MIN_TEMPERATURE,
    Classifier,
    calibrate_temperature,
    encoder_spec,
    new_head,
    pick_device,
    seed_everything,
    train_classifier,
)
from train.splits import Split, WindowSet

logger = logging.getLogger(__name__)


def supervised(
    cfg: TrainConfig, split: Split, labeled: WindowSet | None = None, *, show_progress: bool = True
) -> Classifier:
    """Same encoder and head from random initialization, trained end-to-end on the labels only."""
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    encoder = build_encoder(cfg.encoder, **encoder_spec(cfg)["kwargs"]).to(device)
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


SPECTRUM_BANDS = 512  # 11.7 Hz each for a 2048-sample window at 12 kHz
SPECTRAL_C = 0.1  # inverse L2 strength: a strongly regularized linear template transfers best


def log_spectrum(windows: np.ndarray, bands: int = SPECTRUM_BANDS) -> np.ndarray:
    """(N, W) or (N, 1, W) windows -> (N, bands) log power in equal-width bands from the first
    bin above DC up to Nyquist (Hann window), less each window's mean level: the shape of the
    spectrum, free of sensor gain and offset."""
    x = np.asarray(windows, np.float64).reshape(len(windows), -1)
    x = x - x.mean(axis=1, keepdims=True)
    power = np.abs(np.fft.rfft(x * np.hanning(x.shape[1]), axis=1))[:, 1:] ** 2
    bands = min(bands, power.shape[1])
    width = power.shape[1] // bands
    level = np.log(power[:, : bands * width].reshape(len(x), bands, width).mean(axis=2) + 1e-20)
    return (level - level.mean(axis=1, keepdims=True)).astype(np.float32)


class SpectralTemplate:
    """Spectral template: L2 logistic regression (scikit-learn) on the standardized log
    spectrum of the labeled windows, temperature-scaled on validation. No pretraining, no pool:
    what a plain linear model of one machine's fault spectra carries to other loads and bearings
    of that machine (and, fitted to one rig's resonances, not to other machines)."""

    def __init__(self, cfg: TrainConfig, split: Split) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.model = make_pipeline(
            StandardScaler(),
            LogisticRegression(C=SPECTRAL_C, max_iter=3000, random_state=cfg.seed),
        )
        self.model.fit(log_spectrum(split.labeled.x), split.labeled.y)
        self.n_classes = len(split.class_names)
        self.temperature = 1.0
        val = split.val
        if len(val) >= 2 and set(np.unique(val.y)) <= set(self.model.classes_):
            fitted = fit_temperature(
                torch.from_numpy(self._log_probs(val.x)), torch.from_numpy(val.y)
            )
            self.temperature = max(float(fitted), MIN_TEMPERATURE)

    def _log_probs(self, x: np.ndarray) -> np.ndarray:
        """(N, n_classes) log-probabilities; a class without labeled windows gets -30."""
        out = np.full((len(x), self.n_classes), -30.0)
        out[:, self.model.classes_] = self.model.predict_log_proba(log_spectrum(x))
        return out

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        z = self._log_probs(x) / self.temperature
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

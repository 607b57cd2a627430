"""The recipe's physics view (edge_agent.physics.view): fit its head on the labeled windows, decide
whether it earns a place in the model, and fuse it into the model's probabilities.

The view is kept only where it is reliable on the labeled data itself: its own accuracy by
cross-validation on the labeled windows and on the validation windows must both reach
`physics_min_accuracy`. On the simulator it is (and it carries the diagnosis to machines and
speeds the labels never saw); on CWRU 2048-sample windows the lines are too faint for it, so
the recipe stays with the model there (see the README's benchmarks).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.physics.evidence import bearing_geometry
from edge_agent.physics.view import PhysicsHead, default_band, line_view
from train.heads import class_logits

if TYPE_CHECKING:
    from train.config import TrainConfig
    from train.splits import WindowSet

logger = logging.getLogger(__name__)
CV_FOLDS = 5


@dataclass(frozen=True)
class PhysicsFusion:
    """A fitted physics head with what computing its view needs in training."""

    head: PhysicsHead
    bearing: str
    sample_rate_hz: int

    def view(self, ws: WindowSet) -> np.ndarray:
        return window_view(ws, self.sample_rate_hz, self.bearing, self.head.band_hz)

    def fuse(self, model_probs: np.ndarray, ws: WindowSet) -> np.ndarray:
        """Fused probabilities where the speed is known, the model's elsewhere."""
        return self.head.fuse(model_probs, self.view(ws))


def window_view(
    ws: WindowSet, sample_rate_hz: int, bearing: str, band: tuple[float, float]
) -> np.ndarray:
    """(N, N_FEATURES) line levels of `ws`; NaN rows where a window's shaft speed is unknown."""
    return line_view(ws.x, sample_rate_hz, _speeds(ws), bearing_geometry(bearing), band)


def _speeds(ws: WindowSet) -> np.ndarray:
    if ws.shaft_hz is None:
        return np.full(len(ws), np.nan)
    return np.asarray(ws.shaft_hz, dtype=np.float64)


def _logistic(seed: int):
    """The physics head's learner: L2 logistic regression (scikit-learn)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0, max_iter=3000, random_state=seed)


def cross_validated_accuracy(view: np.ndarray, y: np.ndarray, seed: int) -> float | None:
    """Accuracy of the physics head by stratified k-fold on the labeled windows (None when a
    class has fewer than two windows)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    counts = np.bincount(y)
    folds = int(min(CV_FOLDS, counts[counts > 0].min()))
    if folds < 2 or len(np.unique(y)) < 2:
        return None
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(_logistic(seed), view, y, cv=cv).mean())


def fit_physics(
    cfg: TrainConfig, labeled: WindowSet, val: WindowSet, n_classes: int
) -> tuple[PhysicsFusion | None, dict[str, Any]]:
    """The physics head on `labeled` if it passes the gate, and a report of the decision.

    The head's fused temperature is 1.0 here; `fit_fused_temperature` sets it on validation.
    """
    report: dict[str, Any] = {
        "used": False,
        "bearing": cfg.bearing,
        "min_accuracy": cfg.physics_min_accuracy,
    }
    if not cfg.physics:
        return None, {**report, "reason": "physics = false in the config"}
    speeds = _speeds(labeled)
    if len(labeled) == 0 or not np.isfinite(speeds).all():
        return None, {**report, "reason": "labeled windows carry no shaft speed (record rpm)"}
    band = default_band(cfg.sample_rate_hz)
    view = window_view(labeled, cfg.sample_rate_hz, cfg.bearing, band)
    cv = cross_validated_accuracy(view, labeled.y, cfg.seed)
    report.update(band_hz=list(band), cv_accuracy=cv)
    if len(np.unique(labeled.y)) < n_classes:
        return None, {**report, "reason": "not every class has labeled windows"}
    linear = _logistic(cfg.seed).fit(view, labeled.y)
    head = PhysicsHead(*class_logits(linear, n_classes, absent_bias=0.0), band)
    fusion = PhysicsFusion(head, cfg.bearing, cfg.sample_rate_hz)
    val_view = fusion.view(val)
    val_known = np.isfinite(val_view).all(axis=1)
    val_acc = (
        float((linear.predict(val_view[val_known]) == val.y[val_known]).mean())
        if val_known.sum() >= 10
        else None
    )
    report["val_accuracy"] = val_acc
    threshold = cfg.physics_min_accuracy
    failing = [
        f"{name} accuracy {value:.2f} < {threshold:.2f}"
        for name, value in (("cross-validated", cv), ("validation", val_acc))
        if value is not None and value < threshold
    ]
    if cv is None:
        failing.append("too few labeled windows per class to cross-validate")
    if failing:
        return None, {**report, "reason": "; ".join(failing)}
    logger.info("physics view kept: cross-validated %.3f, validation %s", cv, val_acc)
    return fusion, {**report, "used": True, "reason": "passed the gate"}


def fit_fused_temperature(
    fusion: PhysicsFusion, model_probs: np.ndarray, val: WindowSet, floor: float
) -> PhysicsFusion:
    """`fusion` with the temperature that calibrates the fused probabilities on `val` (never
    below `floor`; unchanged with fewer than two validation windows of known speed)."""
    from train.heads import calibrated_temperature

    view = fusion.view(val)
    known = np.isfinite(view).all(axis=1)
    if known.sum() < 2:
        return fusion
    z = np.log(np.clip(model_probs[known], 1e-12, 1.0)) + fusion.head.logits(view[known])
    t = calibrated_temperature(z, val.y[known], floor)
    head = PhysicsHead(fusion.head.weights, fusion.head.bias, fusion.head.band_hz, t)
    return PhysicsFusion(head, fusion.bearing, fusion.sample_rate_hz)

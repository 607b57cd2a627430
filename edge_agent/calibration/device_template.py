"""A spectral template of this device's own machine, fitted on the operator's labels.

The bundle's template (edge_agent.physics.spectral) describes the machine the model was trained
on, so a channel stops using it once its head is refitted here. The same view fitted on this
device's labeled windows describes this machine, where a few labels carry a template furthest
(README "Benchmarks", device calibration). `calibration.calibrate` fits one beside the refitted
head whenever the labeled windows carry spectral views, and keeps it (fused with the head as a
product of experts, model_weight 1) if the fusion predicts the cross-validation blocks at least
as well as the head alone; with too few windows to cross-validate it is kept like the head,
fitted and not checked (on CWRU with one label per class it never did worse than the head).

The fit: standardization and multinomial L2 logistic regression (the factory template's
strength, TEMPLATE_C), class-balanced, solved by scipy L-BFGS; numpy and scipy only.
"""

from __future__ import annotations

import numpy as np

from edge_agent.physics.spectral import ABSENT_CLASS_BIAS, TEMPLATE_C, SpectralHead


def fit_device_template(views: np.ndarray, labels: np.ndarray, n_classes: int) -> SpectralHead:
    """Template (model_weight 1, temperature 1) on (N, bands) views of at least two classes;
    a class without labeled windows gets no probability. ValueError for fewer classes."""
    from scipy.optimize import minimize  # here, as in refit: only while calibrating

    x = np.asarray(views, np.float64)
    y = np.asarray(labels, np.int64)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    if len(classes) < 2:
        raise ValueError("a device template needs labeled windows of at least two classes")
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    z = (x - mean) / scale
    k, bands = len(classes), x.shape[1]
    onehot = np.eye(k)[inverse]  # (N, K)
    weights = (len(y) / (k * counts[inverse]))[:, None]  # class-balanced

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[: k * bands].reshape(k, bands), theta[k * bands :]
        logits = z @ w.T + b
        logits -= logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        loss = -(weights * onehot * log_p).sum() + (w**2).sum() / (2 * TEMPLATE_C)
        d = weights * (np.exp(log_p) - onehot)  # (N, K)
        grad = np.concatenate([(d.T @ z + w / TEMPLATE_C).ravel(), d.sum(axis=0)])
        return float(loss), grad

    solved = minimize(
        objective, np.zeros(k * (bands + 1)), jac=True, method="L-BFGS-B",
        options={"maxiter": 3000},
    )  # fmt: skip
    w_all = np.zeros((n_classes, bands))
    b_all = np.full(n_classes, ABSENT_CLASS_BIAS)
    w_all[classes] = solved.x[: k * bands].reshape(k, bands)
    b_all[classes] = solved.x[k * bands :]
    return SpectralHead(mean, scale, w_all, b_all, model_weight=1.0)


def cross_validated_logits(
    views: np.ndarray, labels: np.ndarray, blocks: np.ndarray, n_classes: int
) -> np.ndarray:
    """(N, C) template logits of each checked window (block >= 0) from a template fitted
    without its block; zero where the rest holds a single class (the head decides there)."""
    y = np.asarray(labels)
    out = np.zeros((len(y), n_classes))
    for block in np.unique(blocks[blocks >= 0]):
        held = blocks == block
        if len(np.unique(y[~held])) >= 2:
            template = fit_device_template(views[~held], y[~held], n_classes)
            out[held] = template.view_logits(views[held])
    return out

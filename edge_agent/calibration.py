"""Per-device calibration: refit the head from a few labeled windows, in numpy.

Every device starts with the factory head from the bundle. Mounting, cabling and the machine
itself shift the embeddings a little, so an operator labels a few windows on site and
`calibrate()` refits the head on them, checks the result on held-out windows, and refuses a
head that is not better. What is refit, and why:

- By default only the last layer (`w2`, `b2`) is refit; the hidden layer stays frozen. With a
  few windows this is a convex problem with few parameters, hard to overfit. `train_hidden=True`
  also refits `w1`, `b1` with the same hand-written backprop (see `loss_and_gradients`).
- Loss: class-balanced cross-entropy + `l2_to_factory * sum ||P - P_factory||^2` over every
  refit weight and bias P, so few labels can only move the head a little from the factory head.
  Class weights are `N / (K * n_class)` (K = classes present), so a rare fault label counts as
  much as many normal windows.
- Optimizer: full-batch Adam (mini-batches shuffled by `seed` when N > `batch_size`), float64
  internally, float32 out. Same inputs and seed -> bit-identical head.
- The head's temperature is kept during the refit and re-fitted afterwards on the held-out part
  when it has at least `MIN_TEMPERATURE_SAMPLES` windows of at least two classes.

`fit_renormalization()` is the label-free alternative when only normal operation is available:
it sets the head's per-device `emb_mean`/`emb_scale` so this device's normal embeddings match the
bundle's reference normal statistics.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np

from edge_agent.head import Head

logger = logging.getLogger(__name__)

MIN_WINDOWS_PER_CLASS = 2
MIN_TEMPERATURE_SAMPLES = 30
TEMPERATURE_RANGE = (0.1, 10.0)
SCALE_RATIO_RANGE = (0.1, 10.0)


@dataclass(frozen=True)
class CalibrationResult:
    """Outcome of `calibrate`.

    `head` is the head to use from now on: the refit head when `accepted`, else `current`
    unchanged. Accuracies are class-balanced fractions in [0, 1] (mean per-class recall over the
    classes in the held-out part). `reason` is one line for logs and events.
    """

    head: Head
    accuracy_before: float
    accuracy_after: float
    n_train: int
    n_holdout: int
    accepted: bool
    reason: str


def refit_head(
    current: Head,
    factory: Head,
    emb: np.ndarray,
    labels: np.ndarray,
    *,
    l2_to_factory: float = 1e-2,
    epochs: int = 200,
    lr: float = 1e-2,
    seed: int = 0,
    train_hidden: bool = False,
    batch_size: int = 256,
) -> Head:
    """Refit `current` on labeled embeddings, regularized toward `factory`.

    emb: (N, D) float encoder outputs (before the head's re-normalization, which is applied here).
    labels: (N,) int class indices in [0, C). Returns a new Head with the same shapes,
    temperature and re-normalization as `current`.
    """
    _check_same_shapes(current, factory)
    raw, y = _check_inputs(current, emb, labels)
    x = current.adapt(raw).astype(np.float64)  # (N, D) in the space the head sees
    if l2_to_factory < 0:
        raise ValueError(f"l2_to_factory must be >= 0, got {l2_to_factory}")
    if epochs < 1 or lr <= 0 or batch_size < 1:
        raise ValueError(
            f"need epochs >= 1, lr > 0, batch_size >= 1; got {epochs=}, {lr=}, {batch_size=}"
        )

    names = ("w1", "b1", "w2", "b2") if train_hidden else ("w2", "b2")
    params = {k: getattr(current, k).astype(np.float64) for k in ("w1", "b1", "w2", "b2")}
    anchors = {k: getattr(factory, k).astype(np.float64) for k in names}
    weights = class_balanced_weights(y)
    rng = np.random.default_rng(seed)
    m = {k: np.zeros_like(params[k]) for k in names}
    v = {k: np.zeros_like(params[k]) for k in names}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    step = 0
    for _ in range(epochs):
        order = rng.permutation(len(y)) if len(y) > batch_size else np.arange(len(y))
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            _, grads = loss_and_gradients(
                params, anchors, x[idx], y[idx], weights[idx], current.temperature, l2_to_factory
            )
            step += 1
            for k in names:  # Adam
                m[k] = beta1 * m[k] + (1 - beta1) * grads[k]
                v[k] = beta2 * v[k] + (1 - beta2) * grads[k] ** 2
                m_hat = m[k] / (1 - beta1**step)
                v_hat = v[k] / (1 - beta2**step)
                params[k] = params[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return replace(current, **{k: params[k].astype(np.float32) for k in names})


def loss_and_gradients(
    params: dict[str, np.ndarray],
    anchors: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
    temperature: float,
    l2_to_factory: float,
) -> tuple[float, dict[str, np.ndarray]]:
    """Weighted cross-entropy + L2-to-anchor of the head, and its gradients by hand.

    params: w1 (D, H), b1 (H,), w2 (H, C), b2 (C,). x: (B, D) re-normalized embeddings,
    y: (B,) int, weights: (B,). Gradients are returned for the names in `anchors` only.
    loss = sum_i weights_i * CE_i / B + l2 * sum_k ||params_k - anchors_k||^2.
    """
    pre = x @ params["w1"] + params["b1"]  # (B, H)
    hidden = np.maximum(pre, 0.0)  # (B, H)
    logits = (hidden @ params["w2"] + params["b2"]) / temperature  # (B, C)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))  # (B, C)
    rows = np.arange(len(y))
    n = len(y)
    loss = float(-(weights * log_probs[rows, y]).sum() / n)

    d_logits = np.exp(log_probs)  # softmax, (B, C)
    d_logits[rows, y] -= 1.0
    d_out = d_logits * (weights / n)[:, None] / temperature  # d loss / d (hidden @ w2 + b2)
    grads = {"w2": hidden.T @ d_out, "b2": d_out.sum(axis=0)}
    if "w1" in anchors or "b1" in anchors:
        d_pre = (d_out @ params["w2"].T) * (pre > 0)  # (B, H)
        grads["w1"] = x.T @ d_pre
        grads["b1"] = d_pre.sum(axis=0)
    for k, anchor in anchors.items():
        diff = params[k] - anchor
        loss += l2_to_factory * float((diff**2).sum())
        grads[k] = grads[k] + 2.0 * l2_to_factory * diff
    return loss, {k: grads[k] for k in anchors}


def class_balanced_weights(labels: np.ndarray) -> np.ndarray:
    """(N,) weights N / (K * n_class) for each window: every present class weighs the same."""
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return len(labels) / (len(classes) * counts[inverse].astype(np.float64))


def fit_temperature(head: Head, emb: np.ndarray, labels: np.ndarray) -> Head:
    """Return `head` with the temperature in TEMPERATURE_RANGE minimizing NLL on (emb, labels).

    The NLL is convex in 1/T, so a golden-section search over 1/T finds the optimum.
    """
    x, y = _check_inputs(head, emb, labels)
    raw = head.logits(x).astype(np.float64) * head.temperature  # (N, C) logits at T = 1
    rows = np.arange(len(y))

    def nll(inv_t: float) -> float:
        z = raw * inv_t
        z = z - z.max(axis=1, keepdims=True)
        return float(-(z[rows, y] - np.log(np.exp(z).sum(axis=1))).mean())

    lo, hi = 1.0 / TEMPERATURE_RANGE[1], 1.0 / TEMPERATURE_RANGE[0]
    golden = (math.sqrt(5) - 1) / 2
    for _ in range(80):
        a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
        if nll(a) <= nll(b):
            hi = b
        else:
            lo = a
    return head.with_temperature(2.0 / (lo + hi))


def fit_renormalization(
    head: Head,
    normal_embeddings: np.ndarray,
    reference_mean: np.ndarray,
    reference_cov: np.ndarray,
) -> Head:
    """Set `emb_mean`/`emb_scale` so this device's normal embeddings match the reference normal.

    Per dimension j, with device normal mean mu_d, std s_d and reference mean mu_r, std
    s_r = sqrt(cov_jj), `head.adapt(x) = (x - emb_mean) * emb_scale` becomes
    `(x - mu_d) / s_d * s_r + mu_r`, i.e. emb_scale = s_r / s_d and
    emb_mean = mu_d - mu_r / emb_scale. Only the diagonal of the covariance is used; the scale
    ratio is clipped to SCALE_RATIO_RANGE so a near-constant dimension cannot explode.
    normal_embeddings: (N, D) raw encoder outputs, N >= 2 (a few dozen windows or more is wise).
    Any previous re-normalization of `head` is replaced, not composed.
    """
    d = head.embedding_dim
    x = np.asarray(normal_embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != d or len(x) < 2:
        raise ValueError(
            f"normal_embeddings must be (N >= 2, {d}), got shape {x.shape}; collect more "
            "windows of normal operation"
        )
    mu_r = np.asarray(reference_mean, dtype=np.float64)
    cov_r = np.asarray(reference_cov, dtype=np.float64)
    if mu_r.shape != (d,) or cov_r.shape != (d, d):
        raise ValueError(
            f"reference_mean must be ({d},) and reference_cov ({d}, {d}); got {mu_r.shape} "
            f"and {cov_r.shape}"
        )
    if not (np.isfinite(x).all() and np.isfinite(mu_r).all() and np.isfinite(cov_r).all()):
        raise ValueError("fit_renormalization got NaN or inf in the embeddings or reference stats")
    mu_d = x.mean(axis=0)
    floor = 1e-6 * max(float(np.sqrt(np.abs(np.diag(cov_r)).mean())), 1e-12)
    s_d = np.maximum(x.std(axis=0, ddof=1), floor)
    s_r = np.maximum(np.sqrt(np.clip(np.diag(cov_r), 0.0, None)), floor)
    scale = np.clip(s_r / s_d, *SCALE_RATIO_RANGE)
    mean = mu_d - mu_r / scale
    return replace(head, emb_mean=mean.astype(np.float32), emb_scale=scale.astype(np.float32))


def calibrate(
    current: Head,
    factory: Head,
    emb: np.ndarray,
    labels: np.ndarray,
    *,
    holdout_fraction: float = 0.3,
    seed: int = 0,
    min_gain_points: float = 0.0,
    order: np.ndarray | None = None,
    chance_p_value: float = 0.01,
    fit_temperature_on_holdout: bool = True,
    l2_to_factory: float = 1e-2,
    epochs: int = 200,
    lr: float = 1e-2,
    train_hidden: bool = False,
) -> CalibrationResult:
    """Split, refit on the train part, and accept the new head only if it is better held out.

    emb: (N, D), labels: (N,) int in [0, C); labels may cover only some classes. Each present
    class needs >= MIN_WINDOWS_PER_CLASS windows. The split is stratified: with `order` (N,)
    (e.g. timestamps) the LAST `holdout_fraction` of each class's windows in that order is held
    out, so overlapping neighbour windows do not leak into the check; without it the split is
    random (seeded). Refused (accepted=False) when
    - accuracy_after < accuracy_before + min_gain_points / 100 (points = percentage points), or
    - with >= 2 classes held out, the refit head's plain held-out accuracy does not beat always
      guessing the most common held-out class with a one-sided binomial p-value <= chance_p_value
      (nonsense labels; set chance_p_value=1 to disable).
    """
    x, y = _check_inputs(current, emb, labels)
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    train_idx, hold_idx = stratified_split(y, holdout_fraction, order=order, seed=seed)
    candidate = refit_head(
        current,
        factory,
        x[train_idx],
        y[train_idx],
        l2_to_factory=l2_to_factory,
        epochs=epochs,
        lr=lr,
        seed=seed,
        train_hidden=train_hidden,
    )
    x_hold, y_hold = x[hold_idx], y[hold_idx]
    pred_before = current.logits(x_hold).argmax(axis=1)
    pred_after = candidate.logits(x_hold).argmax(axis=1)
    before = balanced_accuracy(y_hold, pred_before)
    after = balanced_accuracy(y_hold, pred_after)
    n_hold = len(hold_idx)
    held_classes = np.unique(y_hold)
    summary = (
        f"held-out accuracy {before:.1%} -> {after:.1%} on {n_hold} windows "
        f"({len(held_classes)} classes)"
    )

    reason = f"{summary}; accepted"
    accepted = True
    if after * 100 < before * 100 + min_gain_points:
        accepted = False
        reason = (
            f"refused: {summary}; needs a gain of at least {min_gain_points:+.1f} points; kept the "
            "current head (check the labels or label more windows)"
        )
    elif len(held_classes) >= 2:
        correct = int((pred_after == y_hold).sum())
        p_chance = float(np.bincount(y_hold).max() / n_hold)
        p_value = binomial_tail(correct, n_hold, p_chance)
        if p_value > chance_p_value:
            accepted = False
            reason = (
                f"refused: {summary} is not clearly above chance ({correct}/{n_hold} correct vs "
                f"{p_chance:.1%} by always guessing one class, p={p_value:.3f} > "
                f"{chance_p_value}); kept the current head (check the labels or label more windows)"
            )
    enough_for_temperature = n_hold >= MIN_TEMPERATURE_SAMPLES and len(held_classes) >= 2
    if accepted and fit_temperature_on_holdout and enough_for_temperature:
        candidate = fit_temperature(candidate, x_hold, y_hold)
        reason += f"; temperature {candidate.temperature:.2f}"
    logger.info("calibration: %s", reason)
    return CalibrationResult(
        head=candidate if accepted else current,
        accuracy_before=before,
        accuracy_after=after,
        n_train=len(train_idx),
        n_holdout=n_hold,
        accepted=accepted,
        reason=reason,
    )


def stratified_split(
    labels: np.ndarray, holdout_fraction: float, *, order: np.ndarray | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, holdout_idx): per class, round(fraction * n) (at least 1) windows held out.

    With `order` (N,), each class's windows are sorted by it and the last ones are held out;
    otherwise they are shuffled with `seed`. Raises ValueError when a class has too few windows.
    """
    y = np.asarray(labels)
    counts = np.bincount(y)
    short = {
        int(c): int(counts[c])
        for c in np.flatnonzero((counts > 0) & (counts < MIN_WINDOWS_PER_CLASS))
    }
    if short:
        raise ValueError(
            f"calibration needs at least {MIN_WINDOWS_PER_CLASS} labeled windows per class present "
            f"(one to fit, one to check); got {short} (class index: windows); label more windows "
            "of those classes or drop their labels"
        )
    if order is not None:
        order = np.asarray(order)
        if order.shape != y.shape:
            raise ValueError(
                f"order must have one entry per window, shape {y.shape}; got {order.shape}"
            )
    rng = np.random.default_rng(seed)
    train, hold = [], []
    for c in np.flatnonzero(counts):
        idx = np.flatnonzero(y == c)
        idx = (
            idx[np.argsort(order[idx], kind="stable")]
            if order is not None
            else rng.permutation(idx)
        )
        n_hold = min(max(1, round(holdout_fraction * len(idx))), len(idx) - 1)
        train.append(idx[: len(idx) - n_hold])
        hold.append(idx[len(idx) - n_hold :])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(hold))


def balanced_accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Mean per-class recall over the classes present in `labels`."""
    recalls = [float((predicted[labels == c] == c).mean()) for c in np.unique(labels)]
    return float(np.mean(recalls))


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), in log space so large n does not overflow."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p >= 1.0:
        return 1.0
    if p <= 0.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1)
        - math.lgamma(i + 1)
        - math.lgamma(n - i + 1)
        + i * log_p
        + (n - i) * log_q
        for i in range(k, n + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def _check_same_shapes(current: Head, factory: Head) -> None:
    shapes = [(h.w1.shape, h.w2.shape) for h in (current, factory)]
    if shapes[0] != shapes[1]:
        raise ValueError(
            f"current head (w1 {shapes[0][0]}, w2 {shapes[0][1]}) and factory head (w1 "
            f"{shapes[1][0]}, w2 {shapes[1][1]}) differ in shape; both must come from one bundle"
        )


def _check_inputs(head: Head, emb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate (N, D) embeddings and (N,) labels; return them as float64 and int64."""
    e = np.asarray(emb)
    d, c = head.embedding_dim, head.num_classes
    if e.ndim != 2 or e.shape[1] != d or len(e) == 0:
        raise ValueError(f"embeddings must have shape (N >= 1, {d}), got {e.shape}")
    if not np.isfinite(e).all():
        raise ValueError(f"embeddings contain {int((~np.isfinite(e)).sum())} NaN/inf values")
    y = np.asarray(labels)
    if y.shape != (len(e),):
        raise ValueError(
            f"labels must have shape ({len(e)},) to match the embeddings, got {y.shape}"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    bad = np.unique(y[(y < 0) | (y >= c)])
    if bad.size:
        raise ValueError(f"labels must be class indices in [0, {c}), got {bad.tolist()}")
    return e.astype(np.float64), y.astype(np.int64)


__all__ = [
    "CalibrationResult",
    "balanced_accuracy",
    "calibrate",
    "class_balanced_weights",
    "fit_renormalization",
    "fit_temperature",
    "loss_and_gradients",
    "refit_head",
    "stratified_split",
]

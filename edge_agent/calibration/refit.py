"""Per-device calibration: refit the head from a few labeled windows, in numpy and scipy.

Every device starts with the factory head from the bundle. Mounting, cabling and the machine
itself shift the embeddings, so an operator labels a few windows on site (one per class is
enough to start) and `calibrate()` refits the head on all labels collected so far, checks the
refit on windows it did not fit, and refuses a head that is worse. What is refit, and why:

- By default only the last layer (`w2`, `b2`) is refit; the hidden layer stays frozen. That is a
  convex problem with few parameters, solved to convergence by `scipy.optimize` (L-BFGS), so the
  result depends on the labels only: the refit always starts from the factory head (keeping this
  device's re-normalization), and labeling one class today and another tomorrow gives the same
  head as labeling both at once. `train_hidden=True` also refits `w1`, `b1` (not convex).
- Loss: class-balanced cross-entropy + `l2_to_factory * sum ||P - P_factory||^2`, so few labels
  can only move the head a little from the factory head. Class weights are `N / (K * n_class)`.
- The check is cross-validation by blocks: each class's windows, in time order, are cut into up
  to `CV_BLOCKS` contiguous blocks (so overlapping neighbour windows stay together); every block
  is predicted by a head refit without it. The refit is accepted when this cross-validated
  balanced accuracy is not below the current head's on the same windows. A class with a single
  window cannot be cross-validated: it is fitted, and the result says so. A set with a single
  class is refused (the head would learn to say that class); its labels stay in the device's
  calibration set for the next call. From `CHANCE_TEST_MIN` cross-validated windows on, the
  refit must also beat always guessing the most common class (one-sided binomial test), which
  refuses nonsense labels; below that no test has the power, and the result says what was checked.
- The temperature is re-fitted on the cross-validated logits when at least
  `MIN_TEMPERATURE_SAMPLES` windows of two or more classes were cross-validated.
- Where the labeled windows carry spectral views, a device template is fitted on them too
  (`device_template`) and cross-validated on the same blocks; the head keeps it if the two fused
  predict at least as well as the head alone, and the check above then judges the pair (the
  current head with its own template, if any, against the refit with its new one). The refit
  also carries the reach of those views (`reach.LabelReach`): beyond it a clear defect line
  decides, not the head (`physics.stream`).

`fit_renormalization()` is the label-free alternative when only normal operation is available:
it sets the head's per-device `emb_mean`/`emb_scale` so this device's normal embeddings match the
bundle's reference normal statistics.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np

from edge_agent.calibration.device_template import cross_validated_logits, fit_device_template
from edge_agent.calibration.reach import LabelReach
from edge_agent.pipeline.head import Head

logger = logging.getLogger(__name__)

CV_BLOCKS = 5  # contiguous blocks per class for the cross-validated check
CHANCE_TEST_MIN = 20  # cross-validated windows from which "better than chance" is required
CHANCE_P_VALUE = 0.01
MIN_TEMPERATURE_SAMPLES = 30
TEMPERATURE_RANGE = (0.1, 10.0)
SCALE_RATIO_RANGE = (0.1, 10.0)
TEMPLATE_MODEL_WEIGHTS = (1.0, 0.5, 0.0)  # weights of the head beside a device template, tried


@dataclass(frozen=True)
class CalibrationResult:
    """Outcome of `calibrate`.

    `head` is the head to use from now on: the refit head when `accepted`, else `current`
    unchanged. Accuracies are class-balanced fractions in [0, 1] (mean per-class recall) on the
    cross-validated windows: the current head's, and the refit's predicted by heads that did not
    see them. `n_train` windows were fitted, `n_holdout` of them cross-validated (0 when every
    class has a single window). `reason` is one line for logs, events and the command result.
    Where the windows carry spectral views, accuracies are those of the head fused with its
    device template, if it has one.
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
    train_hidden: bool = False,
    max_iter: int = 500,
) -> Head:
    """Refit `current` on labeled embeddings, regularized toward `factory` (L-BFGS).

    emb: (N, D) float encoder outputs (before the head's re-normalization, which is applied here).
    labels: (N,) int class indices in [0, C). Returns a new Head with the same shapes,
    temperature and re-normalization as `current`, its refit weights starting from `current`'s.
    """
    _check_same_shapes(current, factory)
    raw, y = _check_inputs(current, emb, labels)
    if l2_to_factory < 0:
        raise ValueError(f"l2_to_factory must be >= 0, got {l2_to_factory}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    x = current.adapt(raw).astype(np.float64)  # (N, D) in the space the head sees
    names = ("w1", "b1", "w2", "b2") if train_hidden else ("w2", "b2")
    params = {k: getattr(current, k).astype(np.float64) for k in ("w1", "b1", "w2", "b2")}
    anchors = {k: getattr(factory, k).astype(np.float64) for k in names}
    shapes = [params[k].shape for k in names]
    sizes = [int(np.prod(shape)) for shape in shapes]
    weights = class_balanced_weights(y)

    def unpack(theta: np.ndarray) -> dict[str, np.ndarray]:
        parts = np.split(theta, np.cumsum(sizes)[:-1])
        return {
            **params,
            **{k: p.reshape(sh) for k, p, sh in zip(names, parts, shapes, strict=True)},
        }

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        loss, grads = loss_and_gradients(
            unpack(theta), anchors, x, y, weights, current.temperature, l2_to_factory
        )
        return loss, np.concatenate([grads[k].ravel() for k in names])

    theta0 = np.concatenate([params[k].ravel() for k in names])
    from scipy.optimize import minimize  # here: ~40 MB resident, only while calibrating matters

    solved = minimize(objective, theta0, jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    fitted = unpack(solved.x)
    return replace(current, **{k: fitted[k].astype(np.float32) for k in names})


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
    """Return `head` with the temperature in TEMPERATURE_RANGE minimizing NLL on (emb, labels)."""
    x, y = _check_inputs(head, emb, labels)
    raw = head.logits(x).astype(np.float64) * head.temperature  # (N, C) logits at T = 1
    return head.with_temperature(temperature_for(raw, y))


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
    views: np.ndarray | None = None,
    order: np.ndarray | None = None,
    fit_temperature_on_cv: bool = True,
    l2_to_factory: float = 1e-2,
    train_hidden: bool = False,
) -> CalibrationResult:
    """Refit from the factory head on every label, cross-validate, accept unless it is worse.

    emb: (N, D), labels: (N,) int in [0, C), order: (N,) times (blocks are contiguous in it;
    without it, the given order). views: (N, bands) the windows' spectral views (NaN rows:
    none), from which a device template is fitted and judged beside the head
    (`calibration.device_template`). See the module docstring for the rule. Raises ValueError
    for unusable inputs; a refusal is a result with accepted=False and the reason.
    """
    x, y = _check_inputs(current, emb, labels)
    v, view_note = _usable_views(views, len(y))
    present = np.unique(y)
    start = replace(
        current,
        **{k: getattr(factory, k) for k in ("w1", "b1", "w2", "b2")},
        temperature=factory.temperature,
        template=None,  # a device template and the labels' reach are fitted afresh
        reach=None,
    )

    def refit(rows: np.ndarray) -> Head:
        return refit_head(
            start, factory, x[rows], y[rows], l2_to_factory=l2_to_factory,
            train_hidden=train_hidden,
        )  # fmt: skip

    blocks = cv_blocks(y, order)
    checked = np.flatnonzero(blocks >= 0)
    if len(present) < 2:
        return _refused(
            current, y, checked, 0.0, 0.0,
            f"refused: only class {int(present[0])} is labeled ({len(y)} windows); a head fit "
            "to one class learns to say that class. The labels are kept: label windows of "
            "another class too (or use renormalize for normal operation only)",
        )  # fmt: skip
    cv_logits = np.zeros((len(y), current.num_classes))
    for block in np.unique(blocks[checked]):
        held = blocks == block
        cv_logits[held] = refit(np.flatnonzero(~held)).logits(x[held])
    candidate = refit(np.arange(len(y)))
    cv_scores, template_cv = cv_logits, None
    if v is not None:
        candidate = replace(candidate, reach=LabelReach.of(v, y))
        candidate, template_cv, view_note = _with_template(candidate, cv_logits, v, y, blocks)
        if candidate.template is not None:
            cv_scores = fused_scores(cv_logits, template_cv, candidate.template.model_weight)
    before = after = 1.0
    if len(checked):
        before = balanced_accuracy(y[checked], scores(current, x, v)[checked].argmax(axis=1))
        after = balanced_accuracy(y[checked], cv_scores[checked].argmax(axis=1))
    single = [int(c) for c in present if (blocks[y == c] < 0).all()]
    fit_acc = balanced_accuracy(y, scores(candidate, x, v).argmax(axis=1))
    summary = (
        f"cross-validated accuracy {before:.1%} -> {after:.1%} on {len(checked)} windows "
        f"({len(np.unique(y[checked]))} classes)"
        if len(checked)
        else "no class has 2 windows to cross-validate"
    )
    if single:
        summary += f"; classes {single} have one window each: fitted, not cross-validated"
    if view_note:
        summary += f"; {view_note}"
    if len(checked) and after < before:
        return _refused(
            current, y, checked, before, after,
            f"refused: {summary}; the refit predicts windows it did not see worse than the "
            "current head; kept it (check the labels or label more windows)",
        )  # fmt: skip
    if len(checked) >= CHANCE_TEST_MIN and len(np.unique(y[checked])) > 1:
        correct = int((cv_scores[checked].argmax(axis=1) == y[checked]).sum())
        p_chance = float(np.bincount(y[checked]).max() / len(checked))
        p_value = binomial_tail(correct, len(checked), p_chance)
        if p_value > CHANCE_P_VALUE:
            return _refused(
                current, y, checked, before, after,
                f"refused: {summary} is not clearly above chance ({correct}/{len(checked)} "
                f"correct vs {p_chance:.0%} by always guessing one class, p={p_value:.3f}); "
                "kept the current head (check the labels)",
            )  # fmt: skip
    if not len(checked) and fit_acc <= balanced_accuracy(y, scores(current, x, v).argmax(axis=1)):
        return _refused(
            current,
            y,
            checked,
            before,
            after,
            f"refused: {summary}; the current head already predicts every label",
        )
    reason = f"{summary}; fits {fit_acc:.0%} of the {len(y)} labels; accepted"
    cv_classes = np.unique(y[checked]) if len(checked) else present[:0]
    if fit_temperature_on_cv and len(checked) >= MIN_TEMPERATURE_SAMPLES and len(cv_classes) > 1:
        temperature = temperature_for(cv_logits[checked] * candidate.temperature, y[checked])
        cv_logits *= candidate.temperature / temperature
        candidate = candidate.with_temperature(temperature)
        reason += f"; temperature {temperature:.2f}"
        if candidate.template is not None:
            fused = fused_scores(cv_logits, template_cv, candidate.template.model_weight)[checked]
            t = temperature_for(fused, y[checked])
            candidate = replace(candidate, template=replace(candidate.template, temperature=t))
            reason += f", with the template {t:.2f}"
    logger.info("calibration: %s", reason)
    return CalibrationResult(candidate, before, after, len(y), len(checked), True, reason)


def scores(head: Head, x: np.ndarray, views: np.ndarray | None) -> np.ndarray:
    """(N, C) what `head` predicts from: its logits, fused with its device template where it has
    one and the windows have views (the argmax is the channel's decision)."""
    logits = head.logits(x).astype(np.float64)
    t = head.template
    if t is None or views is None:
        return logits
    return fused_scores(logits, t.view_logits(views), t.model_weight)


def fused_scores(
    head_logits: np.ndarray, template_logits: np.ndarray, model_weight: float
) -> np.ndarray:
    """model_weight * log p_head + template logits: a device template's fusion with its head
    (SpectralHead.fused_logits, from logits)."""
    z = np.asarray(head_logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return model_weight * log_p + template_logits


def _usable_views(views: np.ndarray | None, n: int) -> tuple[np.ndarray | None, str]:
    """Views as float64 when every window has one, else None and why (empty: none given)."""
    if views is None:
        return None, ""
    v = np.asarray(views, np.float64)
    if v.ndim != 2 or len(v) != n:
        raise ValueError(f"views must have one row per window, shape ({n}, bands); got {v.shape}")
    missing = int((~np.isfinite(v).all(axis=1)).sum())
    if missing:
        return None, (
            f"no device template: {missing} labeled windows have no spectral view (labeled "
            "while views were not kept; label them again)"
        )
    return v, ""


def _with_template(
    candidate: Head, cv_logits: np.ndarray, views: np.ndarray, y: np.ndarray, blocks: np.ndarray
) -> tuple[Head, np.ndarray, str]:
    """`candidate` with a device template where the two fused predict the held-out blocks at
    least as well as the head alone (or where nothing can be checked), at the model weight of
    TEMPLATE_MODEL_WEIGHTS that predicts them best (ties: the heavier); the template's
    cross-validated logits; a note for the reason."""
    checked = blocks >= 0
    template_cv = cross_validated_logits(views, y, blocks, candidate.num_classes)
    if len(np.unique(y[checked])) < 2:
        note = "device template fitted, not cross-validated (too few windows per class)"
        template = fit_device_template(views, y, candidate.num_classes)
        return replace(candidate, template=template), template_cv, note
    alone = balanced_accuracy(y[checked], cv_logits[checked].argmax(axis=1))
    accuracy = {
        w: balanced_accuracy(
            y[checked], fused_scores(cv_logits, template_cv, w)[checked].argmax(axis=1)
        )
        for w in TEMPLATE_MODEL_WEIGHTS
    }
    weight = max(accuracy, key=lambda w: (accuracy[w], w))
    said = (
        f"cross-validated {alone:.1%} by the head alone, {accuracy[weight]:.1%} with it "
        f"(model weight {weight:g})"
    )
    if accuracy[weight] < alone:
        return candidate, template_cv, f"device template dropped: {said}"
    template = replace(fit_device_template(views, y, candidate.num_classes), model_weight=weight)
    return replace(candidate, template=template), template_cv, f"device template kept: {said}"


def _refused(
    current: Head, y: np.ndarray, checked: np.ndarray, before: float, after: float, reason: str
) -> CalibrationResult:
    logger.info("calibration: %s", reason)
    return CalibrationResult(current, before, after, len(y), len(checked), False, reason)


def cv_blocks(labels: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """(N,) block id of each window for the cross-validated check; -1 where it cannot be checked.

    Each class's windows, sorted by `order`, are cut into min(CV_BLOCKS, n_class) contiguous
    blocks; a class with a single window gets -1.
    """
    y = np.asarray(labels)
    if order is not None and np.shape(order) != y.shape:
        raise ValueError(
            f"order must have one entry per window, shape {y.shape}; got {np.shape(order)}"
        )
    rank = np.arange(len(y)) if order is None else np.argsort(np.argsort(order, kind="stable"))
    blocks = np.full(len(y), -1)
    next_id = 0
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) < 2:
            continue
        idx = idx[np.argsort(rank[idx], kind="stable")]
        for part in np.array_split(idx, min(CV_BLOCKS, len(idx))):
            blocks[part] = next_id
            next_id += 1
    return blocks


def temperature_for(raw_logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature in TEMPERATURE_RANGE minimizing NLL of logits at T = 1 (N, C)."""
    raw, y = np.asarray(raw_logits, np.float64), np.asarray(labels)
    rows = np.arange(len(y))

    def nll(inv_t: float) -> float:
        z = raw * inv_t
        z = z - z.max(axis=1, keepdims=True)
        return float(-(z[rows, y] - np.log(np.exp(z).sum(axis=1))).mean())

    lo, hi = 1.0 / TEMPERATURE_RANGE[1], 1.0 / TEMPERATURE_RANGE[0]
    golden = (math.sqrt(5) - 1) / 2
    for _ in range(80):  # the NLL is convex in 1/T: golden-section search
        a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
        if nll(a) <= nll(b):
            hi = b
        else:
            lo = a
    return 2.0 / (lo + hi)


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
    "binomial_tail",
    "calibrate",
    "class_balanced_weights",
    "cv_blocks",
    "fit_renormalization",
    "fit_temperature",
    "loss_and_gradients",
    "refit_head",
    "temperature_for",
]

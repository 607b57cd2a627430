"""The recipe's spectral view (edge_agent.physics.spectral): fit the linear template on the
labeled windows, decide without labels whether it describes the machine the model will meet,
and fuse it into the model's probabilities.

The decision is the domain gap: how well a linear classifier tells the labeled windows from the
unlabeled pool by their plain log spectra (cross-validated ROC AUC; they tell the simulator's
machines apart more clearly than the template's ranked view: 0.986-1.0 against 0.95-0.97).
Near 0.5 the pool is the labeled machine (other loads, other times, other bearings of one rig:
CWRU 0.35-0.87), where a template transfers and the fine-tuned model can be confidently wrong;
near 1 the pool is other machines with other resonances (the simulator: 0.986-1.0, 0.94 on the
tests' tiny splits), where a template of the labeled machine misleads; the default gate, 0.90,
lies between. Labels cannot make this call: on both data sets the template and the model are
perfect on validation windows of their own records.

Where the template is fused, the model votes only on windows like the pool it learned from
(`fit_pool_gate`, edge_agent.physics.pool), its log-probability read no lower than a floor; the
template decides alone elsewhere. On CWRU a model sure and wrong on bearings in neither labels
nor pool outvoted the template everywhere else (README "Benchmarks"). And it votes only where
the pool's defect lines side with it, on the windows it and the template name differently, more
often than chance would (`line_referee`, `lines_favour_model`): the fan end's model, weak across
loads, passes the pool gate. Where they vouch, the template also learns the model's calls on the
pool records the model and the lines name alike (`vouched_windows`): a bounded vote cannot
overrule a template sure and wrong about a whole bearing.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import binomtest

from edge_agent.physics.pool import PoolGate, kth_neighbour_distance
from edge_agent.physics.spectral import (
    ABSENT_CLASS_BIAS,
    BOTH,
    TEMPLATE_C,
    SpectralHead,
    log_spectrum,
    ranked_bands,
)
from edge_agent.pipeline.head import softmax
from train.data import machine_geometry
from train.heads import calibrated_temperature, class_logits
from train.line_labels import clear_line_labels, line_named_classes, strongest_lines
from train.splits import WindowSet

if TYPE_CHECKING:
    from edge_agent.physics.bearing_sim import BearingGeometry
    from train.config import TrainConfig
    from train.splits import Split

logger = logging.getLogger(__name__)
GAP_FOLDS = 5
GAP_POOL_WINDOWS = 2000  # pool windows the domain gap compares with the labeled ones
POOL_LABEL_CONFIDENCE = 0.9  # a pool window the template labels for itself: p >= this
GATE_COMPONENTS = 20  # principal components of the pool's log spectra the gate compares in
GATE_NEIGHBOURS = 5  # a window is like the pool when its 5th-nearest pool window is near ...
GATE_QUANTILE = 0.99  # ... no farther than this quantile of the pool windows' own such distance
GATE_DECIMALS = 4  # the gate as the bundle carries it (2,000 x 20 points: ~0.5 MB of JSON)
REFEREE_SIGNIFICANCE = 0.05  # the lines side with the model beyond chance: one-sided sign test


def fit_template(views: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> SpectralHead:
    """Template head (standardization + L2 logistic regression, scikit-learn) on labeled views,
    alone (model_weight 0, temperature 1); a class without labeled windows gets no probability."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError("the spectral template needs labeled windows of at least two classes")
    scaler = StandardScaler().fit(views)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    linear = LogisticRegression(C=TEMPLATE_C, max_iter=3000, random_state=seed)
    linear.fit((views - scaler.mean_) / scale, y)
    weights, bias = class_logits(linear, n_classes, ABSENT_CLASS_BIAS)
    return SpectralHead(scaler.mean_, scale, weights, bias, model_weight=0.0)


def self_trained_template(
    labeled: np.ndarray, y: np.ndarray, pool: np.ndarray, n_classes: int, seed: int, per_class: int
) -> tuple[SpectralHead, dict[int, int]]:
    """The template refitted on the labeled views plus the pool views it labels itself with
    probability >= POOL_LABEL_CONFIDENCE, at most `per_class` of the surest per class (one round
    of self-training), and how many pool windows each class gained. Only sound where the pool
    is the labeled machine, which is where `fit_spectral` calls it."""
    head = fit_template(labeled, y, n_classes, seed)
    if per_class == 0 or len(pool) == 0:
        return head, {}
    probs = softmax(head.view_logits(pool))
    confidence, label = probs.max(axis=1), probs.argmax(axis=1)
    chosen = {}
    for c in range(n_classes):
        sure = np.flatnonzero((label == c) & (confidence >= POOL_LABEL_CONFIDENCE))
        chosen[c] = sure[np.argsort(-confidence[sure], kind="stable")][:per_class]
    keep = np.concatenate(list(chosen.values()))
    if len(keep) == 0:
        return head, {}
    head = fit_template(np.vstack([labeled, pool[keep]]), np.r_[y, label[keep]], n_classes, seed)
    return head, {c: len(idx) for c, idx in chosen.items() if len(idx)}


def product_template(plain: SpectralHead, ranked: SpectralHead) -> SpectralHead:
    """One head on both views (features BOTH) whose probabilities are the normalized geometric
    mean of the two templates': half of each one's logits, side by side."""
    return SpectralHead(
        np.r_[plain.mean, ranked.mean],
        np.r_[plain.scale, ranked.scale],
        np.hstack([plain.weights, ranked.weights]) / 2,
        (plain.bias + ranked.bias) / 2,
        model_weight=0.0,
        features=BOTH,
    )


def paired_template(
    labeled: np.ndarray, y: np.ndarray, pool: np.ndarray, n_classes: int, seed: int, per_class: int
) -> tuple[SpectralHead, dict[str, dict[int, int]]]:
    """`product_template` of a template on the log spectra (N, bands) and one on their ranked
    view, each self-trained on the pool on its own (`self_trained_template`), and how many pool
    windows each class gained in each view."""
    plain, plain_added = self_trained_template(labeled, y, pool, n_classes, seed, per_class)
    ranked, ranked_added = self_trained_template(
        ranked_bands(labeled), y, ranked_bands(pool), n_classes, seed, per_class
    )
    return product_template(plain, ranked), {"plain": plain_added, "ranked": ranked_added}


def spectral_template(cfg: TrainConfig, split: Split) -> SpectralHead:
    """The template alone, temperature-scaled on validation: the baseline row, no pool, no model."""
    from train.loop import MIN_TEMPERATURE

    labeled = log_spectrum(split.labeled.x)
    n_classes = len(split.class_names)
    head, _ = paired_template(labeled, split.labeled.y, labeled[:0], n_classes, cfg.seed, 0)
    val = split.val
    if len(val) >= 2 and set(np.unique(val.y)) <= set(np.unique(split.labeled.y)):
        t = calibrated_temperature(head.logits(val.x), val.y, MIN_TEMPERATURE)
        head = replace(head, temperature=t)
    return head


def domain_gap(labeled: np.ndarray, pool: np.ndarray, seed: int) -> float | None:
    """Cross-validated ROC AUC of a linear classifier telling labeled log spectra from pool ones
    (0.5: alike, 1: apart); None with fewer than GAP_FOLDS windows on either side."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if min(len(labeled), len(pool)) < GAP_FOLDS:
        return None
    x = np.concatenate([labeled, pool])
    side = np.r_[np.zeros(len(labeled)), np.ones(len(pool))]
    clf = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=TEMPLATE_C, max_iter=2000, class_weight="balanced"),
    )
    folds = StratifiedKFold(GAP_FOLDS, shuffle=True, random_state=seed)
    scores = cross_val_predict(clf, x, side, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(side, scores))


def fit_pool_gate(pool: np.ndarray) -> PoolGate | None:
    """The gate of the pool's log spectra (N, bands): their band standardization and first
    GATE_COMPONENTS principal components (scikit-learn), the pool windows projected on them,
    and the GATE_QUANTILE of their distances to their GATE_NEIGHBOURS-th nearest other pool
    window; None with fewer than 3 pool windows."""
    from sklearn.decomposition import PCA

    level = np.asarray(pool, np.float64)
    if len(level) < 3:
        return None
    std = level.std(axis=0)
    center = np.round(level.mean(axis=0), GATE_DECIMALS)
    scale = np.round(np.where(std > 1e-3, std, 1.0), GATE_DECIMALS)
    k = min(GATE_COMPONENTS, len(level) - 1, level.shape[1])
    standardized = (level - center) / scale
    axes = PCA(k, svd_solver="full").fit(standardized).components_
    components = np.round(axes, GATE_DECIMALS + 2)  # unit axes: entries ~ 1 / sqrt(bands)
    points = np.round(standardized @ components.T, GATE_DECIMALS)
    neighbours = min(GATE_NEIGHBOURS, len(level) - 1)
    own = kth_neighbour_distance(points, points, neighbours, leave_self_out=True)
    radius = float(np.ceil(np.quantile(own, GATE_QUANTILE) * 10**GATE_DECIMALS))
    return PoolGate(center, scale, components, points, radius / 10**GATE_DECIMALS, neighbours)


def line_referee(
    model_named: np.ndarray, template_named: np.ndarray, line_named: np.ndarray
) -> dict[str, int]:
    """On the windows where the model and the template name different classes (N,): how many
    there are, and on how many of them the strongest defect line (`strongest_lines`; -1: none
    of the classes) names the model's class and the template's."""
    differ = model_named != template_named
    return {
        "disagree": int(differ.sum()),
        "lines_name_model": int(np.sum(differ & (line_named == model_named))),
        "lines_name_template": int(np.sum(differ & (line_named == template_named))),
    }


def lines_favour_model(lines_name_model: int, lines_name_template: int) -> float:
    """p-value of a one-sided sign test: how likely the lines would name the model's class at
    least `lines_name_model` times out of the windows they name either side's class, were they
    as likely to name each (1.0 where they name neither)."""
    sided = lines_name_model + lines_name_template
    if sided == 0:
        return 1.0
    return float(binomtest(lines_name_model, sided, alternative="greater").pvalue)


def line_thresholds(
    known: WindowSet, class_names: list[str], geometry: BearingGeometry, sample_rate_hz: float
) -> np.ndarray:
    """(C, C) float, [t, m]: the highest level (dB) at which a window's strongest defect line
    names class m in the labeled windows `known` of class t (-inf where it never does; on the
    diagonal -inf). A line naming m is evidence for m over t only above it: from the fan end
    most ball windows show the inner race's line, at levels a ball record's windows reach too."""
    named, level = strongest_lines(known, class_names, geometry, sample_rate_hz)
    other = (named >= 0) & (named != known.y)  # a line naming a class the window is not
    out = np.full((len(class_names),) * 2, -np.inf)
    np.maximum.at(out, (known.y[other], named[other]), level[other])
    return out


def vouched_windows(
    model_named: np.ndarray,
    template_named: np.ndarray,
    line_named: np.ndarray,
    record_ids: list[str],
    line_level: np.ndarray | None = None,
    thresholds: np.ndarray | None = None,
) -> np.ndarray:
    """Indices of the windows the model and the template name differently whose strongest
    defect line (`strongest_lines`) names the model's class, in records where the model and
    the strongest lines each name that class in most windows: a few windows of a ball record
    that the model calls a race and whose race line happens to stand highest do not speak for
    the record. With `line_level` (dB, per window) and `thresholds` (`line_thresholds`), only
    windows whose line stands above the level at which the labels of the template's class show
    it."""
    records = np.asarray(record_ids)
    sided = (model_named != template_named) & (line_named == model_named)
    if line_level is not None and thresholds is not None:
        sided &= line_level > thresholds[template_named, model_named]
    keep = np.zeros(len(records), bool)
    for record in np.unique(records[sided]):
        own = records == record
        for c in np.unique(model_named[own & sided]):
            if np.mean(line_named[own] == c) > 0.5 and np.mean(model_named[own] == c) > 0.5:
                keep |= own & sided & (model_named == c)
    return np.flatnonzero(keep)


def model_vote(
    cfg: TrainConfig,
    split: Split,
    template: SpectralHead,
    pool: WindowSet,
    model_pool_probs: np.ndarray | None,
) -> tuple[float, dict[str, Any], np.ndarray]:
    """The model's weight beside `template` and why. With `spectral_line_referee`: where the
    strongest defect lines of the `pool` windows on which the model (its probabilities of them,
    `model_pool_probs`) and the template disagree name the model's class more often than the
    template's beyond chance (`line_referee`, `lines_favour_model`),
    `spectral_vouched_model_weight`, else 0. Without the referee, or where no line names a class
    (classes by defect size: nothing to referee), `spectral_model_weight`. Where that is 0 the
    model never votes. Also, where the referee vouches and `spectral_vouched_labels` is on,
    the `vouched_windows` of the pool (none elsewhere)."""
    weight = cfg.spectral_model_weight
    none = np.empty(0, int)
    if model_pool_probs is None or weight == 0:
        return weight, {}, none
    if len(model_pool_probs) != len(pool):
        raise ValueError(f"{len(model_pool_probs)} model probabilities for {len(pool)} windows")
    model_named = np.asarray(model_pool_probs).argmax(axis=1)
    template_named = template.logits(pool.x).argmax(axis=1)
    vote: dict[str, Any] = {"agreement": float(np.mean(model_named == template_named))}
    if cfg.spectral_line_referee and line_named_classes(split.class_names):
        geometry = machine_geometry(cfg)
        line_named, line_level = strongest_lines(
            pool, split.class_names, geometry, cfg.sample_rate_hz
        )
        vote.update(line_referee(model_named, template_named, line_named))
        vote["p_value"] = lines_favour_model(vote["lines_name_model"], vote["lines_name_template"])
        if vote["p_value"] >= REFEREE_SIGNIFICANCE:
            logger.info("the model does not vote: the pool's defect lines do not side with it")
            return 0.0, vote, none
        vouched = none
        if cfg.spectral_vouched_labels:
            thresholds = (
                line_thresholds(split.known(), split.class_names, geometry, cfg.sample_rate_hz)
                if cfg.spectral_line_evidence
                else None
            )
            vouched = vouched_windows(
                model_named, template_named, line_named, pool.record_ids, line_level, thresholds
            )
        return cfg.spectral_vouched_model_weight, vote, vouched
    return weight, vote, none


def fit_spectral(
    cfg: TrainConfig,
    split: Split,
    model_val_probs: np.ndarray,
    floor: float,
    *,
    model_pool_probs: np.ndarray | None = None,
) -> tuple[SpectralHead | None, dict[str, Any]]:
    """The spectral head fused with the model if the pool looks like the labeled machine, and a
    report of the decision. Its template learns from the labeled windows, the pool windows
    whose envelope spectrum shows a clear defect line (train.line_labels) and then the pool
    windows it labels itself. `model_val_probs`: the model's (physics-fused) probabilities of
    the validation windows, on which the fused temperature is fitted (never below `floor`).
    `model_pool_probs`, the model's probabilities of `pool_windows(split)`: where given and
    `spectral_line_referee` is on, the model votes only if, on the pool windows where it and
    the template disagree, the defect lines side with it beyond chance (`model_vote`), and then
    with `spectral_vouched_labels` the template is refitted with the model's class on the
    `vouched_windows` too."""
    report: dict[str, Any] = {
        "used": False,
        "max_domain_gap": cfg.spectral_max_domain_gap,
        "model_weight": cfg.spectral_model_weight,
        "model_floor": cfg.spectral_model_floor,
        "line_referee": cfg.spectral_line_referee,
    }
    if not cfg.spectral:
        return None, {**report, "reason": "spectral = false in the config"}
    n_classes = len(split.class_names)
    if len(np.unique(split.labeled.y)) < n_classes:
        return None, {**report, "reason": "not every class has labeled windows"}
    pool_set = pool_windows(split)
    labeled, pool = log_spectrum(split.labeled.x), log_spectrum(pool_set.x)
    gap = domain_gap(labeled, pool, cfg.seed)
    report["domain_gap"] = gap
    if gap is None:
        return None, {**report, "reason": f"fewer than {GAP_FOLDS} labeled or pool windows"}
    if gap > cfg.spectral_max_domain_gap:
        return None, {
            **report,
            "reason": f"domain gap {gap:.3f} > {cfg.spectral_max_domain_gap:.2f}: the pool is "
            "other machines, which a template of the labeled one would mislead",
        }
    found, found_y = clear_line_labels(
        pool_set,
        split.class_names,
        machine_geometry(cfg),
        cfg.sample_rate_hz,
        cfg.spectral_envelope_labels,
    )
    names = split.class_names

    def taught_template(taught: np.ndarray, taught_y: np.ndarray) -> SpectralHead:
        """The template on the labels and the `taught` pool windows, self-trained on the rest."""
        template, added = paired_template(
            np.vstack([labeled, pool[taught]]),
            np.r_[split.labeled.y, taught_y],
            pool[np.setdiff1d(np.arange(len(pool)), taught)],
            n_classes,
            cfg.seed,
            cfg.spectral_pool_labels,
        )
        report["pool_labels"] = {
            view: {names[c]: n for c, n in gained.items()} for view, gained in added.items()
        }
        return template

    def counts(y: np.ndarray) -> dict[str, int]:
        return {names[c]: int(np.sum(y == c)) for c in np.unique(y)}

    template = taught_template(found, found_y)
    report["envelope_labels"] = counts(found_y)
    weight, report["vote"], vouched = model_vote(cfg, split, template, pool_set, model_pool_probs)
    if len(vouched):
        named = np.asarray(model_pool_probs).argmax(axis=1)[vouched]
        template = taught_template(np.r_[found, vouched], np.r_[found_y, named])
        report["vouched_labels"] = counts(named)
    report["model_weight"] = weight
    head = replace(
        template,
        model_weight=weight,
        model_floor=cfg.spectral_model_floor,
        pool=fit_pool_gate(pool) if cfg.spectral_pool_gate else None,
    )
    if len(split.val) >= 2:
        level = head.spectra(split.val.x)
        z = head.spectra_logits(level)
        head = replace(
            head,
            temperature=calibrated_temperature(
                head.fused_logits(model_val_probs, z), split.val.y, floor
            ),
            template_temperature=calibrated_temperature(z, split.val.y, floor),
        )
        report["val_near_pool"] = float(head.near_pool(level).mean())
    logger.info("spectral view kept: domain gap %.3f", gap)
    return head, {**report, "used": True, "reason": f"domain gap {gap:.3f}: passed the gate"}


def pool_windows(split: Split) -> WindowSet:
    """Up to GAP_POOL_WINDOWS hop-spaced pool windows, evenly spread over the pool's records,
    with their shaft speeds."""
    if len(split.pool) == 0:
        return WindowSet.empty(split.labeled.x.shape[-1])
    return split.pool.windows(limit=GAP_POOL_WINDOWS)

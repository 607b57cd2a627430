"""Non-parametric classifiers on embeddings (numpy): nearest class prototype and cosine kNN.

Used as baselines on frozen SimCLR embeddings; `propagated_labels` is how fine-tuning propagates
the few labels to the unlabeled pool.
"""

from __future__ import annotations

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-8)


def prototype_probabilities(
    train_emb: np.ndarray,
    train_y: np.ndarray,
    test_emb: np.ndarray,
    n_classes: int,
    *,
    scale: float = 10.0,
) -> np.ndarray:
    """Nearest class mean by cosine similarity -> softmax(scale * cos). Missing classes get 0."""
    a, b = _unit(train_emb), _unit(test_emb)
    sims = np.full((len(b), n_classes), -np.inf)
    for c in range(n_classes):
        if (train_y == c).any():
            proto = a[train_y == c].mean(0)
            sims[:, c] = b @ (proto / (np.linalg.norm(proto) + 1e-8))
    z = scale * (sims - sims.max(1, keepdims=True))
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def knn_probabilities(
    train_emb: np.ndarray, train_y: np.ndarray, test_emb: np.ndarray, n_classes: int, k: int = 5
) -> np.ndarray:
    """k nearest labeled neighbours by cosine similarity; probability = vote share."""
    a, b = _unit(train_emb), _unit(test_emb)
    k = max(1, min(k, len(a)))
    nearest = np.argsort(-(b @ a.T), axis=1)[:, :k]
    votes = np.zeros((len(b), n_classes))
    np.add.at(votes, (np.repeat(np.arange(len(b)), k), train_y[nearest].ravel()), 1.0)
    return votes / k


def spread_labels(
    train_emb: np.ndarray,
    train_y: np.ndarray,
    pool_emb: np.ndarray,
    *,
    neighbors: int = 10,
    alpha: float = 0.8,
    min_confidence: float = 0.9,
) -> np.ndarray:
    """Label spreading (Zhou et al. 2004, scikit-learn) over the cosine kNN graph of labeled and
    pool embeddings -> a class per pool window, or -1 where no label reaches it or the spread
    distribution is below `min_confidence`.

    Unlike a per-class top-N, a class that is rare in the pool (one normal record) keeps only the
    windows its labels actually reach instead of being filled up with its nearest strangers.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.semi_supervised import LabelSpreading

    if len(pool_emb) == 0:
        return np.zeros(0, np.int64)
    x = np.concatenate([_unit(train_emb), _unit(pool_emb)]).astype(np.float64)
    y = np.concatenate([np.asarray(train_y, np.int64), np.full(len(pool_emb), -1, np.int64)])
    model = LabelSpreading(
        kernel="knn", n_neighbors=min(neighbors, len(x) - 1), alpha=alpha, max_iter=100
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    dist = model.label_distributions_[len(train_emb) :]
    total = dist.sum(1)
    classes = model.classes_[dist.argmax(1)]
    confident = (total > 0) & (dist.max(1) >= min_confidence * np.maximum(total, 1e-12))
    return np.where(confident, classes, -1).astype(np.int64)


def propagated_labels(
    train_emb: np.ndarray, train_y: np.ndarray, pool_emb: np.ndarray, k: int = 5
) -> np.ndarray:
    """A class per pool window from two votes, or -1: label spreading and a unanimous vote of the
    k nearest labeled windows (k at most the smallest class's count; needs labeled windows). A
    window takes the class one vote gives when the other agrees or abstains; where they disagree
    it stays unlabeled.

    Each vote fails alone: with k equal to the labels per class, only a tight class (one normal
    record) can win a unanimous vote, and it collects its nearest strangers; spreading leaves
    records whose kNN graph no label reaches unlabeled (CWRU: other loads). Measured on CWRU
    and the simulator, the combination labels the most windows with the fewest errors.
    """
    counts = np.bincount(train_y)
    k = int(min(k, counts[counts > 0].min()))
    votes = knn_probabilities(train_emb, train_y, pool_emb, counts.size, k=k)
    knn = np.where(votes.max(1, initial=0.0) >= 1.0, votes.argmax(1), -1)
    return combine_votes(spread_labels(train_emb, train_y, pool_emb), knn)


def combine_votes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per window: the class both votes give, or the one vote that does not abstain (-1); -1
    where they name different classes."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    return np.where((a == b) | (b < 0), a, np.where(a < 0, b, -1))

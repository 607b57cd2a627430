"""Non-parametric classifiers on embeddings (numpy): nearest class prototype and cosine kNN.

Used as baselines on frozen SimCLR embeddings, and by fine-tuning to propagate the few labels to
the unlabeled pool.
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

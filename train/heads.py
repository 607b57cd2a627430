"""Heads on top of the encoder: the SimCLR projection head, the classifier head (with its numpy
twin in `edge_agent.pipeline.head`), a multi-task head and temperature scaling."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from itertools import pairwise

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_agent.pipeline.head import Head

logger = logging.getLogger(__name__)

DEFAULT_TASKS: dict[str, int] = {"detection": 2, "location": 4, "size": 4}


class ProjectionHead(nn.Module):
    """MLP from a list of sizes: Linear-BN-ReLU between layers, a plain Linear last.

    [128, 256, 128] is Linear(128, 256) - BN - ReLU - Linear(256, 128).
    (N, sizes[0]) -> (N, sizes[-1]).
    """

    def __init__(self, sizes: Sequence[int]) -> None:
        super().__init__()
        sizes = list(sizes)
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"ProjectionHead needs >= 2 sizes, all >= 1, got {sizes}")
        layers: list[nn.Module] = []
        for cin, cout in pairwise(sizes[:-1]):
            layers += [nn.Linear(cin, cout), nn.BatchNorm1d(cout), nn.ReLU()]
        layers.append(nn.Linear(sizes[-2], sizes[-1]))
        self.layers = nn.Sequential(*layers)
        self.sizes = sizes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ClassifierHead(nn.Module):
    """The reference recipe's head: Linear(D, hidden) - ReLU - Dropout - Linear(hidden, C).

    (N, D) embeddings -> (N, C) logits (no temperature; see `fit_temperature`).
    """

    def __init__(
        self, embedding_dim: int = 128, hidden: int = 64, num_classes: int = 4, dropout: float = 0.3
    ) -> None:
        super().__init__()
        if min(embedding_dim, hidden) < 1 or num_classes < 2 or not 0 <= dropout < 1:
            raise ValueError(
                "ClassifierHead needs embedding_dim, hidden >= 1, num_classes >= 2, "
                f"0 <= dropout < 1, got {embedding_dim=}, {hidden=}, {num_classes=}, {dropout=}"
            )
        self.fc1 = nn.Linear(embedding_dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(torch.relu(self.fc1(x))))


def _numpy(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)


def to_numpy_head(head: ClassifierHead, temperature: float = 1.0) -> Head:
    """Copy the weights into the numpy Head the agent runs (w1 = fc1.weight.T, so x @ w1 + b1)."""
    return Head(
        w1=_numpy(head.fc1.weight.T),
        b1=_numpy(head.fc1.bias),
        w2=_numpy(head.fc2.weight.T),
        b2=_numpy(head.fc2.bias),
        temperature=float(temperature),
    )


def from_numpy_head(h: Head, dropout: float = 0.3) -> ClassifierHead:
    """Rebuild a ClassifierHead from a numpy Head (e.g. to fine-tune a device's refit).

    A per-device emb_mean/emb_scale is folded into fc1, so logits match `h.logits(x) *
    h.temperature`; the temperature itself is not part of ClassifierHead (read `h.temperature`).
    """
    w1 = h.w1.astype(np.float64)
    b1 = h.b1.astype(np.float64)
    if h.emb_scale is not None:  # (x - m) * s @ w1 = x @ (s[:, None] * w1) - (m * s) @ w1
        w1 = h.emb_scale.astype(np.float64)[:, None] * w1
    if h.emb_mean is not None:
        b1 = b1 - h.emb_mean.astype(np.float64) @ w1
    head = ClassifierHead(h.embedding_dim, h.w1.shape[1], h.num_classes, dropout)
    with torch.no_grad():
        head.fc1.weight.copy_(torch.from_numpy(w1.T.copy()))
        head.fc1.bias.copy_(torch.from_numpy(b1))
        head.fc2.weight.copy_(torch.from_numpy(h.w2.T.copy()))
        head.fc2.bias.copy_(torch.from_numpy(h.b2))
    return head


class MultiTaskHead(nn.Module):
    """Independent ClassifierHeads per task (default: detection 2, location 4, size 4 classes).

    (N, D) -> {task: (N, classes)}.
    """

    def __init__(
        self,
        embedding_dim: int = 128,
        hidden: int = 64,
        tasks: Mapping[str, int] | None = None,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        tasks = dict(DEFAULT_TASKS if tasks is None else tasks)
        if not tasks:
            raise ValueError("MultiTaskHead needs at least one task, got {}")
        self.heads = nn.ModuleDict(
            {
                name: ClassifierHead(embedding_dim, hidden, classes, dropout)
                for name, classes in tasks.items()
            }
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(x) for name, head in self.heads.items()}


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200) -> float:
    """Temperature scaling (Guo et al. 2017): the T minimizing NLL of softmax(logits / T).

    logits (N, C) from held-out data, labels (N,) class indices. Optimizes log T with LBFGS,
    so T stays positive. T > 1 softens an over-confident model.
    """
    if logits.ndim != 2 or labels.shape != (logits.shape[0],) or logits.shape[0] == 0:
        raise ValueError(
            f"need logits (N, C) and labels (N,), "
            f"got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(
            f"labels must lie in 0..{logits.shape[1] - 1}, got {labels.min()}..{labels.max()}"
        )
    logits = logits.detach().double()
    labels = labels.detach().long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    before = F.cross_entropy(logits, labels).item()
    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    after = F.cross_entropy(logits / temperature, labels).item()
    logger.info("temperature %.3f: NLL %.4f -> %.4f", temperature, before, after)
    return temperature


def calibrated_temperature(logits: np.ndarray, y: np.ndarray, floor: float) -> float:
    """`fit_temperature` on numpy logits and labels, never below `floor` (1.0 if it diverges)."""
    fitted = float(fit_temperature(torch.from_numpy(logits), torch.from_numpy(y)))
    return max(fitted, floor) if math.isfinite(fitted) else 1.0


def class_logits(linear, n_classes: int, absent_bias: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights (n_classes, F) and bias (n_classes,) of a fitted scikit-learn linear classifier
    whose classes are label indices: a class it never saw gets `absent_bias`; with two classes
    scikit-learn keeps one row (the second class's logit), so the first gets 0."""
    classes = linear.classes_
    weights = np.zeros((n_classes, linear.coef_.shape[1]))
    bias = np.full(n_classes, absent_bias)
    if len(classes) == 2:
        weights[classes[1]], bias[classes[1]] = linear.coef_[0], linear.intercept_[0]
        bias[classes[0]] = 0.0
    else:
        weights[classes], bias[classes] = linear.coef_, linear.intercept_
    return weights, bias

"""Which pretraining epoch to keep: a score that rewards diagnosis, not memory of a recording.

NT-Xent learns to tell windows apart, and the easiest cue on a real rig is the recording: its
load, its bearing, its sensor. With a long budget the embedding sorts windows by recording ever
better while the fault gets lost (CWRU, 100 epochs: a kNN on frozen embeddings falls from 0.94
to 0.84 on 4 classes and from 0.88 to 0.72 across loads, epochs 3 -> 100). A score on windows of
the recordings that gave the labels rises all the while. The score kept here asks the question
a new machine asks: is each labeled window's nearest labeled neighbour *from another recording*
of its class? (leave-one-record-out kNN.)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from train.neighbors import knn_probabilities

logger = logging.getLogger(__name__)
NEIGHBOURS = 5


def scored_classes(y: np.ndarray, records: Sequence[str]) -> list[int]:
    """The classes whose windows come from two recordings or more: the ones a new recording of
    the class can be recognized in."""
    y, records = np.asarray(y), np.asarray(records)
    return [int(c) for c in np.unique(y) if len(np.unique(records[y == c])) >= 2]


def record_knn_score(
    z: np.ndarray, y: np.ndarray, records: Sequence[str], k: int = NEIGHBOURS
) -> float | None:
    """Balanced accuracy of a cosine k-nearest-neighbour vote for each window of `z` (N, D) among
    the windows of *other* records. Classes whose windows all come from one record are not
    scored (they have no other recording to be recognized in) but still vote; None when no
    class has windows from two records."""
    y, records = np.asarray(y), np.asarray(records)
    if not len(y) == len(records) == len(z):
        raise ValueError(f"need one label and record per row: {len(z)}, {len(y)}, {len(records)}")
    scored = scored_classes(y, records)
    if not scored:
        return None
    predicted = np.empty_like(y)
    for record in np.unique(records):
        own = records == record
        votes = knn_probabilities(z[~own], y[~own], z[own], int(y.max()) + 1, k)
        predicted[own] = votes.argmax(axis=1)
    return float(np.mean([np.mean(predicted[y == c] == c) for c in scored]))


class EpochSelector:
    """Keeps the encoder state of the epoch with the best `record_knn_score` (the first of equals)
    and says when `patience` epochs have passed without a gain."""

    def __init__(self, y: np.ndarray, records: Sequence[str], patience: int) -> None:
        if not scored_classes(y, records):
            raise ValueError("every class's labels come from one recording: nothing to score")
        self.y, self.records, self.patience = np.asarray(y), list(records), patience
        self.scores: list[float] = []
        self.best_epoch, self.best_score = 0, -1.0
        self.best_state: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, z: np.ndarray, encoder: nn.Module) -> bool:
        """Score the embedding `z` of the labeled windows after `epoch`; True: stop training."""
        score = record_knn_score(z, self.y, self.records)
        assert score is not None  # scored_classes was checked at construction
        self.scores.append(score)
        if score > self.best_score:
            self.best_epoch, self.best_score = epoch, score
            self.best_state = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
        logger.info(
            "epoch %d: monitor %.3f (best %.3f, epoch %d)",
            epoch,
            score,
            self.best_score,
            self.best_epoch,
        )
        return epoch - self.best_epoch >= self.patience

    def summary(self) -> dict[str, Any]:
        """What the checkpoint and the run report keep (no tensors)."""
        return {
            "score": "leave-one-record-out kNN balanced accuracy on the labeled windows",
            "scores": self.scores,
            "best_epoch": self.best_epoch,
            "best_score": self.best_score,
        }

    def restore(self, saved: dict[str, Any], state: dict[str, torch.Tensor] | None) -> None:
        """Continue from a checkpoint's `summary()` and best encoder state."""
        self.scores = list(saved["scores"])
        self.best_epoch, self.best_score = saved["best_epoch"], saved["best_score"]
        self.best_state = state

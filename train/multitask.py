"""Optional multi-head fine-tuning (as in the CWRU notebook): detection, location and size heads
trained jointly with the flat classifier on the shared encoder.

The task targets come from the class names: "normal" is (normal, normal, none) and
"inner_race_014" is (fault, inner_race, 014). A name without a size ("inner_race") leaves the
size unknown, and unknown targets are left out of that task's loss, so a plant can mix recordings
labeled with and without a fault size. The flat head stays the deployed one (the bundle contract
is unchanged); the task heads are a training signal and a per-task report, and are saved in the
checkpoint for users who want them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from train.heads import MultiTaskHead
from train.metrics import classification_metrics

UNKNOWN = -1
_SIZED = re.compile(r"^(?P<location>.+?)_(?P<size>\d+)$")


def parse_class(name: str, normal_class: str = "normal") -> dict[str, str | None]:
    """One flat class name -> its detection, location and size (None where unknown)."""
    if name == normal_class:
        return {"detection": "normal", "location": "normal", "size": "none"}
    sized = _SIZED.match(name)
    location, size = (sized["location"], sized["size"]) if sized else (name, None)
    return {"detection": "fault", "location": location, "size": size}


@dataclass(frozen=True)
class TaskTargets:
    """Per task: its class names and the flat-class -> task-class map (UNKNOWN where unknown)."""

    names: dict[str, list[str]]
    maps: dict[str, np.ndarray]

    @classmethod
    def from_class_names(cls, class_names: list[str]) -> TaskTargets:
        """Tasks with at least two known classes that do not just repeat the flat labels."""
        parsed = [parse_class(n) for n in class_names]
        names: dict[str, list[str]] = {}
        maps: dict[str, np.ndarray] = {}
        for task in ("detection", "location", "size"):
            values = [p[task] for p in parsed]
            known = sorted(
                {v for v in values if v is not None}, key=lambda v: (v not in ("normal", "none"), v)
            )
            if len(known) < 2 or (len(known) == len(class_names) and None not in values):
                continue
            names[task] = known
            maps[task] = np.array([known.index(v) if v is not None else UNKNOWN for v in values])
        return cls(names, maps)

    def __bool__(self) -> bool:
        return bool(self.names)

    def targets(self, task: str, y: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        table = self.maps[task]
        if isinstance(y, torch.Tensor):
            return torch.as_tensor(table, device=y.device)[y]
        return table[np.asarray(y)]


def build_task_head(
    targets: TaskTargets, embedding_dim: int, hidden: int, dropout: float
) -> MultiTaskHead:
    return MultiTaskHead(
        embedding_dim, hidden, {t: len(n) for t, n in targets.names.items()}, dropout
    )


def task_loss(
    head: MultiTaskHead, targets: TaskTargets, features: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy over the tasks, each ignoring windows whose target is unknown."""
    losses = [
        F.cross_entropy(logits, targets.targets(task, y), ignore_index=UNKNOWN)
        for task, logits in head(features).items()
        if bool((targets.targets(task, y) != UNKNOWN).any())
    ]
    return torch.stack(losses).mean() if losses else features.new_zeros(())


def marginal_probabilities(flat: np.ndarray, targets: TaskTargets, task: str) -> np.ndarray:
    """Task probabilities implied by the flat head: sum the flat classes of each task class."""
    table = targets.maps[task]
    out = np.zeros((len(flat), len(targets.names[task])))
    for c, t in enumerate(table):
        if t != UNKNOWN:
            out[:, t] += flat[:, c]
    return out / np.clip(out.sum(1, keepdims=True), 1e-12, None)


def task_metrics(
    task_probs: dict[str, np.ndarray],
    flat_probs: np.ndarray,
    y: np.ndarray,
    targets: TaskTargets,
    uncertain_below: float,
) -> dict[str, dict[str, Any]]:
    """Per task: metrics of its own head and of the flat head's marginal, on known targets."""
    out: dict[str, dict[str, Any]] = {}
    for task, names in targets.names.items():
        t = targets.targets(task, y)
        known = t != UNKNOWN
        if not known.any():
            continue
        out[task] = {
            "head": classification_metrics(
                task_probs[task][known], t[known], names, uncertain_below
            ),
            "from_flat_head": classification_metrics(
                marginal_probabilities(flat_probs[known], targets, task),
                t[known],
                names,
                uncertain_below,
            ),
        }
    return out

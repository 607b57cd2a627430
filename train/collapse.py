"""Detect representation collapse during self-supervised pretraining.

A collapsed encoder maps every window to (nearly) the same embedding, or to a low-dimensional
subspace; the contrastive loss can still look fine. Two cheap statistics catch both:

- `std_mean`: mean over dimensions of the per-dimension std of L2-normalized embeddings.
  Collapse -> ~0; embeddings spread uniformly on the sphere -> ~1/sqrt(D).
- `effective_rank` (Roy & Vetterli 2007): exp of the entropy of the normalized singular values
  of the L2-normalized embedding matrix (not centered). Between 1 and min(N, D).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


class CollapseError(RuntimeError):
    """Embeddings collapsed: training produced a useless encoder."""


def embedding_stats(z: torch.Tensor) -> dict[str, float]:
    """Statistics of embeddings z (N, D), N >= 2: std_mean, effective_rank, dims, samples."""
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"need embeddings (N, D) with N >= 2, got {tuple(z.shape)}")
    zn = F.normalize(z.detach().to("cpu", torch.float64), dim=1)
    std_mean = zn.std(dim=0).mean().item()
    singular = torch.linalg.svdvals(zn)
    p = singular / singular.sum().clamp_min(1e-12)
    entropy = -(p * p.clamp_min(1e-30).log()).sum().item()
    return {
        "std_mean": std_mean,
        "effective_rank": math.exp(entropy),
        "dims": int(z.shape[1]),
        "samples": int(z.shape[0]),
    }


def check_collapse(
    stats: dict[str, float], min_std_ratio: float = 0.05, min_rank_ratio: float = 0.05
) -> str | None:
    """A loud warning when `stats` (from `embedding_stats`) look collapsed, else None.

    Collapsed: std_mean < min_std_ratio / sqrt(D), or effective_rank < min_rank_ratio * D.
    The std floor is low on purpose: an encoder's embeddings often sit in a narrow cone (a
    shared bias direction) that still spans many directions; the rank tells that apart from a
    point. On CWRU an untrained encoder gives std 0.05-0.06 / sqrt(D) at rank 3.5 of 128 (flagged
    by rank), the first pretraining epoch 0.16 / sqrt(D) at a healthy rank, and it transfers best.
    """
    d = stats["dims"]
    std_floor, rank_floor = min_std_ratio / math.sqrt(d), min_rank_ratio * d
    problems = []
    if stats["std_mean"] < std_floor:
        problems.append(
            f"embedding std {stats['std_mean']:.4f} < {std_floor:.4f} "
            f"(healthy ~ 1/sqrt({d}) = {1 / math.sqrt(d):.4f}): all windows map to nearly one point"
        )
    if stats["effective_rank"] < rank_floor:
        problems.append(
            f"effective rank {stats['effective_rank']:.1f} < {rank_floor:.1f} of {d} dims: "
            "embeddings occupy a tiny subspace"
        )
    if not problems:
        return None
    return (
        "REPRESENTATION COLLAPSE: "
        + "; ".join(problems)
        + ". Check the augmentations (too weak?), the temperature, the learning rate, and that "
        "the two views really differ."
    )


def assert_not_collapsed(z: torch.Tensor, **thresholds: float) -> dict[str, float]:
    """Return `embedding_stats(z)`; raise CollapseError with the warning when collapsed."""
    stats = embedding_stats(z)
    warning = check_collapse(stats, **thresholds)
    if warning:
        raise CollapseError(warning)
    return stats

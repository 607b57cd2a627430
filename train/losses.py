"""Self-supervised losses on two views' embeddings: NT-Xent (SimCLR), SupCon and VICReg.

Embeddings z0, z1: float (B, D), row i of z0 and row i of z1 are two views of one window.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

Gather = Callable[[torch.Tensor], torch.Tensor]


def _check_views(z0: torch.Tensor, z1: torch.Tensor, min_batch: int = 1) -> None:
    if z0.ndim != 2 or z0.shape != z1.shape or z0.shape[0] < min_batch:
        raise ValueError(
            f"need two views of equal shape (B, D) with B >= {min_batch}, "
            f"got {tuple(z0.shape)} and {tuple(z1.shape)}"
        )


def _check_temperature(owner: object, temperature: float) -> float:
    if not temperature > 0:
        raise ValueError(f"{type(owner).__name__} needs temperature > 0, got {temperature=}")
    return float(temperature)


def _this_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class NTXentLoss(nn.Module):
    """SimCLR's normalized-temperature cross entropy over the 2B samples of two views.

    Each sample's positive is the other view of its window; every other sample is a negative.
    With `gather` (e.g. `train.distributed.gather_with_grad`: (B, D) -> (world*B, D), rank-major)
    the negatives come from all ranks while the anchors (and so positives) stay local. Each rank
    then returns the mean over its own 2B anchors; the mean over ranks equals the single-process
    loss on the concatenated batch (equal B on all ranks).
    """

    def __init__(self, temperature: float = 0.5, gather: Gather | None = None) -> None:
        super().__init__()
        self.temperature = _check_temperature(self, temperature)
        self.gather = gather

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        _check_views(z0, z1)
        b = z0.shape[0]
        z0, z1 = F.normalize(z0, dim=1), F.normalize(z1, dim=1)
        anchors = torch.cat([z0, z1])  # (2B, D)
        if self.gather is None:
            candidates, n, offset = anchors, b, 0
        else:
            g0, g1 = self.gather(z0), self.gather(z1)  # (N, D) each, N = world * B
            candidates, n, offset = torch.cat([g0, g1]), g0.shape[0], _this_rank() * b
            if n % b or offset + b > n:
                raise ValueError(
                    f"gather returned {n} rows for a local batch of {b} on rank {offset // b}"
                )
        logits = anchors @ candidates.T / self.temperature  # (2B, 2N)
        i = torch.arange(b, device=z0.device)
        own = torch.cat([offset + i, n + offset + i])  # each anchor's own column
        positive = torch.cat([n + offset + i, offset + i])  # the other view of the same window
        is_self = torch.zeros_like(logits, dtype=torch.bool)
        is_self[torch.arange(2 * b, device=z0.device), own] = True
        return F.cross_entropy(logits.masked_fill(is_self, float("-inf")), positive)


class SupConLoss(nn.Module):
    """Supervised contrastive loss (Khosla et al. 2020, L_out) over two views.

    labels: int (B,), -1 = unlabeled. A labeled sample's positives are its other view and every
    sample of the same class; an unlabeled sample's only positive is its other view. With all
    labels distinct (or all -1) this is exactly NT-Xent at the same temperature.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = _check_temperature(self, temperature)

    def forward(self, z0: torch.Tensor, z1: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_views(z0, z1)
        b = z0.shape[0]
        if labels.shape != (b,):
            raise ValueError(f"labels must have shape ({b},), got {tuple(labels.shape)}")
        z = F.normalize(torch.cat([z0, z1]), dim=1)  # (2B, D)
        logits = z @ z.T / self.temperature  # (2B, 2B)
        eye = torch.eye(2 * b, dtype=torch.bool, device=z.device)
        log_prob = logits.masked_fill(eye, float("-inf")).log_softmax(dim=1)
        window = torch.arange(b, device=z.device).repeat(2)  # which window each row came from
        y = labels.to(z.device).repeat(2)
        same_class = (y[:, None] == y[None, :]) & (y[:, None] >= 0)
        positive = (same_class | (window[:, None] == window[None, :])) & ~eye  # (2B, 2B)
        mean_log_prob = log_prob.masked_fill(~positive, 0).sum(dim=1) / positive.sum(dim=1)
        return -mean_log_prob.mean()


class VICRegLoss(nn.Module):
    """VICReg (Bardes et al. 2022): invariance + variance + covariance, no negatives.

    `sim` weighs the mean squared distance between views, `var` a hinge keeping each dimension's
    std above 1, `cov` the squared off-diagonal covariances (per dimension). Needs B >= 2.
    """

    def __init__(self, sim: float = 25.0, var: float = 25.0, cov: float = 1.0) -> None:
        super().__init__()
        if min(sim, var, cov) < 0:
            raise ValueError(f"VICRegLoss weights must be >= 0, got {sim=}, {var=}, {cov=}")
        self.sim, self.var, self.cov = sim, var, cov

    def terms(self, z0: torch.Tensor, z1: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unweighted terms: invariance, variance, covariance (scalars)."""
        _check_views(z0, z1, min_batch=2)
        d = z0.shape[1]
        variance, covariance = z0.new_zeros(()), z0.new_zeros(())
        for z in (z0, z1):
            z = z - z.mean(dim=0)
            std = torch.sqrt(z.var(dim=0) + 1e-4)  # (D,)
            variance = variance + F.relu(1 - std).mean() / 2
            cov = z.T @ z / (z.shape[0] - 1)  # (D, D)
            off_diagonal = cov - torch.diag(torch.diagonal(cov))
            covariance = covariance + off_diagonal.pow(2).sum() / d
        return {"invariance": F.mse_loss(z0, z1), "variance": variance, "covariance": covariance}

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        t = self.terms(z0, z1)
        return self.sim * t["invariance"] + self.var * t["variance"] + self.cov * t["covariance"]

"""A tiny supervised encoder + head for fixtures that need a real checkpoint quickly."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from edge_agent.pipeline.head import Head
from train.encoder import ReferenceCNN


def train_tiny(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    embedding_dim: int,
    steps: int,
    lr: float,
    seed: int,
) -> tuple[ReferenceCNN, Head]:
    """ReferenceCNN(width=0.25) + a 64-unit head trained jointly on (x, y); eval-mode encoder."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    encoder = ReferenceCNN(embedding_dim=embedding_dim, norm="batch", width=0.25)
    head = nn.Sequential(nn.Linear(embedding_dim, 64), nn.ReLU(), nn.Linear(64, n_classes))
    opt = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(len(xt), 64, replace=False))
        loss = nn.functional.cross_entropy(head(encoder(xt[idx])), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    encoder.eval()
    numpy_head = Head(
        w1=head[0].weight.detach().numpy().T.copy(),
        b1=head[0].bias.detach().numpy().copy(),
        w2=head[2].weight.detach().numpy().T.copy(),
        b2=head[2].bias.detach().numpy().copy(),
    )
    return encoder, numpy_head


def embed(encoder: ReferenceCNN, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return encoder(torch.from_numpy(x)).numpy()


def class_stats(emb: np.ndarray, y: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Reference statistics per class, as the manifest stores them."""
    return {
        name: {
            "count": int((y == k).sum()),
            "mean": emb[y == k].mean(0).tolist(),
            "cov": np.cov(emb[y == k], rowvar=False).tolist(),
        }
        for k, name in enumerate(class_names)
    }

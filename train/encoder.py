"""1-D CNN encoders: window (N, 1, T) -> embedding (N, D).

`build_encoder(name, **kwargs)` rebuilds an encoder from the name and arguments stored in a
checkpoint, so export never has to guess the architecture.
"""

from __future__ import annotations

import torch
from torch import nn


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch' or 'none', got {kind!r}")


class ReferenceCNN(nn.Module):
    """The reference recipe's encoder: three strided convolutions, global average pool, linear.

    Conv1d 1->32 k15 s2, 32->64 k11 s2, 64->128 k7 s2 (each + norm + ReLU), GAP, Linear -> D.
    `width` scales the channel counts (1.0 is the reference).
    """

    def __init__(self, embedding_dim: int = 128, norm: str = "batch", width: float = 1.0) -> None:
        super().__init__()
        if embedding_dim < 1 or width <= 0:
            raise ValueError(
                f"need embedding_dim >= 1 and width > 0, got {embedding_dim=}, {width=}"
            )
        c1, c2, c3 = (max(4, round(c * width)) for c in (32, 64, 128))
        layers: list[nn.Module] = []
        for cin, cout, k in ((1, c1, 15), (c1, c2, 11), (c2, c3, 7)):
            layers += [
                nn.Conv1d(cin, cout, k, stride=2, padding=k // 2),
                _norm(norm, cout),
                nn.ReLU(),
            ]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c3, embedding_dim)
        self.embedding_dim = embedding_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=-1))  # (N, C3, T/8) -> (N, C3) -> (N, D)


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(cin, cout, 7, stride=stride, padding=3, bias=False),
            _norm(norm, cout),
            nn.ReLU(),
            nn.Conv1d(cout, cout, 7, padding=3, bias=False),
            _norm(norm, cout),
        )
        self.skip = (
            nn.Identity()
            if cin == cout and stride == 1
            else nn.Sequential(
                nn.Conv1d(cin, cout, 1, stride=stride, bias=False), _norm(norm, cout)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class ResNet1D(nn.Module):
    """A small 1-D ResNet: wide-kernel stem (stride 4), residual stages, GAP, linear -> D."""

    def __init__(
        self,
        embedding_dim: int = 128,
        channels: tuple[int, ...] = (32, 64, 128),
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("ResNet1D needs at least one stage in channels")
        self.stem = nn.Sequential(
            nn.Conv1d(1, channels[0], 31, stride=4, padding=15, bias=False),
            _norm(norm, channels[0]),
            nn.ReLU(),
        )
        stages, cin = [], channels[0]
        for cout in channels:
            stages.append(_ResBlock(cin, cout, stride=2, norm=norm))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, embedding_dim)
        self.embedding_dim = embedding_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.stages(self.stem(x)).mean(dim=-1))


ENCODERS: dict[str, type[nn.Module]] = {"cnn": ReferenceCNN, "resnet1d": ResNet1D}


def build_encoder(name: str, **kwargs) -> nn.Module:
    """Look up an encoder by name; an unknown name lists the valid ones."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; valid: {', '.join(ENCODERS)}")
    if "channels" in kwargs:
        kwargs["channels"] = tuple(kwargs["channels"])
    return ENCODERS[name](**kwargs)

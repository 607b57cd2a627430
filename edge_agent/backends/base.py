"""The inference-backend interface: an encoder runtime that turns windows into embeddings.

Only the encoder runs in a backend; the head is numpy (pipeline.head), applied by the agent.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from edge_agent.contract.bundle import Quantization


class BackendError(RuntimeError):
    """A backend that cannot load or run; the message says what is wrong and what to do."""


@runtime_checkable
class Backend(Protocol):
    name: ClassVar[str]

    def __init__(
        self, path: Path, threads: int = 1, quantization: Quantization | None = None
    ) -> None: ...

    def embed(self, windows: np.ndarray) -> np.ndarray:
        """float32 (N, 1, W) normalized windows -> float32 (N, D) embeddings."""
        ...


def check_windows(windows: np.ndarray) -> np.ndarray:
    """Validate encoder input: float32 (N, 1, W) with N >= 1, else ValueError naming the shape."""
    x = np.asarray(windows, dtype=np.float32)
    if x.ndim != 3 or x.shape[1] != 1 or x.shape[0] == 0 or x.shape[2] == 0:
        raise ValueError(f"embed expects float32 (N, 1, W) with N >= 1, got shape {x.shape}")
    return np.ascontiguousarray(x)


def check_model_file(path: Path, backend: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise BackendError(f"{backend} backend: model file {path} not found")
    return path

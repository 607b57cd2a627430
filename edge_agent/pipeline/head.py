"""The classifier head in numpy: embedding -> 64 ReLU -> classes, with a temperature.

It stays in float outside the quantized encoder graph because every device refits its own copy
(see calibration/refit.py). Dropout is a training-time thing and has no place here. A head
refitted on a device may carry that device's spectral template (calibration/device_template.py)
and the reach of the labels it was fitted on (calibration/reach.py), saved and rolled back with it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from edge_agent.calibration.reach import LabelReach
    from edge_agent.physics.spectral import SpectralHead

HEAD_KEYS = ("w1", "b1", "w2", "b2", "temperature", "emb_mean", "emb_scale")
TEMPLATE_PREFIX = "template_"  # head file keys of the device template (SpectralHead.to_dict)
REACH_KEYS = ("reach_views", "reach_radius")  # head file keys of the labels' reach


@dataclass(frozen=True)
class Head:
    """Weights of the two-layer head. Shapes: w1 (D, H), b1 (H,), w2 (H, C), b2 (C,).

    `emb_mean`/`emb_scale` (D,) re-normalize embeddings per device (identity by default).
    `template`: this device's spectral template, fused with the head's probabilities by the
    channel (None: no device template). `reach`: where the labels it was refitted on vouch for
    it (None: the factory head, or labels without spectral views).
    """

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    temperature: float = 1.0
    emb_mean: np.ndarray | None = None
    emb_scale: np.ndarray | None = None
    template: SpectralHead | None = None
    reach: LabelReach | None = None

    def __post_init__(self) -> None:
        d, h = self.w1.shape
        if self.b1.shape != (h,) or self.w2.shape[0] != h or self.b2.shape != (self.w2.shape[1],):
            raise ValueError(
                f"inconsistent head shapes: w1 {self.w1.shape}, b1 {self.b1.shape}, "
                f"w2 {self.w2.shape}, b2 {self.b2.shape}"
            )
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        for name in ("emb_mean", "emb_scale"):
            value = getattr(self, name)
            if value is not None and value.shape != (d,):
                raise ValueError(f"{name} must have shape ({d},), got {value.shape}")
        if self.template is not None and self.template.num_classes != self.num_classes:
            raise ValueError(
                f"the template has {self.template.num_classes} classes, the head {self.num_classes}"
            )

    @property
    def embedding_dim(self) -> int:
        return int(self.w1.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.w2.shape[1])

    def adapt(self, embeddings: np.ndarray) -> np.ndarray:
        """Apply the per-device embedding re-normalization (identity when unset)."""
        x = np.asarray(embeddings, dtype=np.float32)
        if self.emb_mean is not None:
            x = x - self.emb_mean
        if self.emb_scale is not None:
            x = x * self.emb_scale
        return x

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, C) logits divided by the temperature."""
        hidden = np.maximum(self.adapt(embeddings) @ self.w1 + self.b1, 0.0)
        return (hidden @ self.w2 + self.b2) / np.float32(self.temperature)

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, C) calibrated class probabilities."""
        return softmax(self.logits(embeddings))

    def fold_input_affine(self, mean: np.ndarray, scale: np.ndarray) -> Head:
        """Absorb x -> (x - mean) * scale into the first layer; same logits, plain embeddings in."""
        mean, scale = np.asarray(mean, np.float32), np.asarray(scale, np.float32)
        w1 = scale[:, None] * self.w1
        b1 = self.b1 - (mean * scale) @ self.w1
        return replace(self, w1=w1.astype(np.float32), b1=b1.astype(np.float32))

    def with_temperature(self, temperature: float) -> Head:
        return replace(self, temperature=float(temperature))

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {k: getattr(self, k) for k in ("w1", "b1", "w2", "b2")}
        arrays["temperature"] = np.float32(self.temperature)
        d = self.embedding_dim
        arrays["emb_mean"] = self.emb_mean if self.emb_mean is not None else np.zeros(d, np.float32)
        arrays["emb_scale"] = (
            self.emb_scale if self.emb_scale is not None else np.ones(d, np.float32)
        )
        if self.template is not None:
            for key, value in self.template.to_dict().items():
                arrays[f"{TEMPLATE_PREFIX}{key}"] = np.asarray(value)
        if self.reach is not None:
            arrays["reach_views"] = self.reach.views
            arrays["reach_radius"] = np.float64(self.reach.radius)
        return arrays

    def save(self, path: Path) -> None:
        """Write as .npz (no pickle). Callers that need atomicity write to a temp path first."""
        with open(path, "wb") as fh:
            np.savez(fh, **self.to_arrays())

    @classmethod
    def load(cls, path: Path) -> Head:
        """Read a head .npz written by `save`; a missing key raises ValueError naming it."""
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("w1", "b1", "w2", "b2", "temperature") if k not in data]
            if missing:
                raise ValueError(f"{path}: head file lacks {missing}")
            template = {
                k.removeprefix(TEMPLATE_PREFIX): data[k][()] if data[k].ndim == 0 else data[k]
                for k in data.files
                if k.startswith(TEMPLATE_PREFIX)
            }
            reach = {k: data[k] for k in REACH_KEYS if k in data.files}
            if reach and len(reach) != len(REACH_KEYS):
                raise ValueError(f"{path}: head file has {sorted(reach)}, not all of {REACH_KEYS}")
            arrays = {
                k: np.asarray(data[k], dtype=np.float32)
                for k in data.files
                if not k.startswith(TEMPLATE_PREFIX) and k not in REACH_KEYS
            }
        return cls(
            w1=arrays["w1"],
            b1=arrays["b1"],
            w2=arrays["w2"],
            b2=arrays["b2"],
            temperature=float(arrays["temperature"]),
            emb_mean=arrays.get("emb_mean"),
            emb_scale=arrays.get("emb_scale"),
            template=_template(template) if template else None,
            reach=_reach(reach) if reach else None,
        )


def _template(data: dict) -> SpectralHead:
    from edge_agent.physics.spectral import SpectralHead  # it imports softmax from here

    return SpectralHead.from_dict({**data, "features": str(data.get("features"))})


def _reach(data: dict) -> LabelReach:
    from edge_agent.calibration.reach import LabelReach

    return LabelReach(data["reach_views"], float(data["reach_radius"]))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)

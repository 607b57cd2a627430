"""Heads: shapes, the torch <-> numpy head round trip and temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edge_agent.pipeline.head import Head
from train.heads import (
    ClassifierHead,
    MultiTaskHead,
    ProjectionHead,
    fit_temperature,
    from_numpy_head,
    to_numpy_head,
)


def test_projection_head_is_built_from_sizes() -> None:
    head = ProjectionHead([128, 256, 64])
    kinds = [type(m).__name__ for m in head.layers]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert head(torch.randn(8, 128)).shape == (8, 64)
    assert [type(m).__name__ for m in ProjectionHead([16, 8]).layers] == ["Linear"]
    with pytest.raises(ValueError, match=r"\[128\]"):
        ProjectionHead([128])


def test_classifier_head_shapes_and_validation() -> None:
    head = ClassifierHead(embedding_dim=32, hidden=16, num_classes=5)
    assert head(torch.randn(3, 32)).shape == (3, 5)
    with pytest.raises(ValueError, match=r"dropout=1\.0"):
        ClassifierHead(dropout=1.0)


def test_numpy_head_matches_torch_head_over_temperature() -> None:
    torch.manual_seed(0)
    head = ClassifierHead(embedding_dim=32, hidden=16, num_classes=4).eval()
    x = torch.randn(10, 32)
    numpy_head = to_numpy_head(head, temperature=1.7)
    assert numpy_head.w1.shape == (32, 16) and numpy_head.w1.dtype == np.float32
    with torch.no_grad():
        expected = (head(x) / 1.7).numpy()
    np.testing.assert_allclose(numpy_head.logits(x.numpy()), expected, atol=1e-5)


def test_round_trip_through_numpy_keeps_logits() -> None:
    torch.manual_seed(1)
    head = ClassifierHead(embedding_dim=8, hidden=6, num_classes=3).eval()
    back = from_numpy_head(to_numpy_head(head, temperature=1.0)).eval()
    x = torch.randn(5, 8)
    with torch.no_grad():
        assert torch.allclose(back(x), head(x), atol=1e-6)


def test_from_numpy_head_folds_device_normalization() -> None:
    rng = np.random.default_rng(0)
    h = Head(
        w1=rng.normal(size=(8, 6)).astype(np.float32),
        b1=rng.normal(size=6).astype(np.float32),
        w2=rng.normal(size=(6, 3)).astype(np.float32),
        b2=rng.normal(size=3).astype(np.float32),
        temperature=2.0,
        emb_mean=rng.normal(size=8).astype(np.float32),
        emb_scale=rng.uniform(0.5, 2, size=8).astype(np.float32),
    )
    x = rng.normal(size=(5, 8)).astype(np.float32)
    with torch.no_grad():
        logits = from_numpy_head(h).eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits / 2.0, h.logits(x), atol=1e-4)


def test_multitask_head_returns_one_output_per_task() -> None:
    out = MultiTaskHead(embedding_dim=16, hidden=8)(torch.randn(4, 16))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "detection": (4, 2),
        "location": (4, 4),
        "size": (4, 4),
    }
    custom = MultiTaskHead(embedding_dim=16, tasks={"fault": 3})(torch.randn(2, 16))
    assert list(custom) == ["fault"] and custom["fault"].shape == (2, 3)


def calibrated(n: int = 4000, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose softmax is the true label distribution (labels drawn from it)."""
    gen = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(n, classes, generator=gen)
    labels = torch.multinomial(logits.softmax(dim=1), 1, generator=gen).squeeze(1)
    return logits, labels


def test_fit_temperature_softens_overconfident_logits() -> None:
    logits, labels = calibrated()
    overconfident = 5 * logits
    t = fit_temperature(overconfident, labels)
    assert 3.5 < t < 6.5
    assert F.cross_entropy(overconfident / t, labels) < F.cross_entropy(overconfident, labels)


def test_fit_temperature_keeps_calibrated_logits() -> None:
    logits, labels = calibrated(seed=1)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.1)


def test_fit_temperature_rejects_bad_labels() -> None:
    with pytest.raises(ValueError, match=r"0\.\.3, got 0\.\.4"):
        fit_temperature(torch.zeros(3, 4), torch.tensor([0, 4, 1]))

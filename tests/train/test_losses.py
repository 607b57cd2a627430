"""Contrastive losses against slow references, hand-derived values and symmetry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from train.losses import NTXentLoss, SupConLoss, VICRegLoss


def views(b: int = 8, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=gen), torch.randn(b, d, generator=gen)


def ntxent_reference(z0: torch.Tensor, z1: torch.Tensor, temperature: float) -> torch.Tensor:
    """Slow and obvious: for each of the 2B samples, -log softmax of its positive among the rest."""
    z = torch.cat([z0, z1])
    b, n = z0.shape[0], 2 * z0.shape[0]
    total = torch.zeros(())
    for i in range(n):
        positive = (i + b) % n
        sims = {j: F.cosine_similarity(z[i], z[j], dim=0) / temperature for j in range(n) if j != i}
        denominator = sum(torch.exp(s) for s in sims.values())
        total = total - torch.log(torch.exp(sims[positive]) / denominator)
    return total / n


def supcon_reference(z0, z1, labels, temperature) -> torch.Tensor:
    z = torch.cat([z0, z1])
    y = labels.repeat(2).tolist()
    b, n = z0.shape[0], 2 * z0.shape[0]
    total = torch.zeros(())
    for i in range(n):
        positives = [
            j for j in range(n) if j != i and (j % b == i % b or (y[i] >= 0 and y[j] == y[i]))
        ]
        sims = {j: F.cosine_similarity(z[i], z[j], dim=0) / temperature for j in range(n) if j != i}
        log_denominator = torch.log(sum(torch.exp(s) for s in sims.values()))
        total = total - sum(sims[p] - log_denominator for p in positives) / len(positives)
    return total / n


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_ntxent_matches_slow_reference(temperature: float) -> None:
    z0, z1 = views()
    loss = NTXentLoss(temperature)(z0, z1)
    assert torch.allclose(loss, ntxent_reference(z0, z1, temperature), atol=1e-5)


def test_ntxent_hand_derived_values() -> None:
    # B = 1: the positive is the only candidate, so the softmax is certain.
    assert NTXentLoss()(torch.randn(1, 4), torch.randn(1, 4)).item() == pytest.approx(0, abs=1e-6)
    # Four mutually orthogonal embeddings: each anchor sees 3 candidates with logit 0.
    eye = torch.eye(4)
    assert NTXentLoss(0.5)(eye[:2], eye[2:]).item() == pytest.approx(math.log(3), abs=1e-6)
    # Identical views, orthogonal windows: positive logit 1/t, 2B-2 negatives at 0.
    t, b = 0.5, 3
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2 * b - 2))
    assert NTXentLoss(t)(eye[:b], eye[:b]).item() == pytest.approx(expected, abs=1e-6)


def test_ntxent_is_symmetric_and_scale_invariant() -> None:
    z0, z1 = views()
    loss = NTXentLoss()
    assert torch.allclose(loss(z0, z1), loss(z1, z0))
    assert torch.allclose(loss(z0, z1), loss(3 * z0, 0.1 * z1), atol=1e-6)


def test_ntxent_aligned_views_score_lower_than_random() -> None:
    z0, z1 = views(b=32, d=64)
    loss = NTXentLoss(0.5)
    assert loss(z0, z0 + 0.01 * z1) < loss(z0, z1) - 1.0


def test_ntxent_rejects_mismatched_views() -> None:
    with pytest.raises(ValueError, match=r"\(8, 16\) and \(8, 8\)"):
        NTXentLoss()(torch.zeros(8, 16), torch.zeros(8, 8))
    with pytest.raises(ValueError, match="temperature=0"):
        NTXentLoss(temperature=0)


def test_ntxent_with_identity_gather_equals_local_loss() -> None:
    z0, z1 = views()
    assert torch.allclose(NTXentLoss(gather=lambda z: z)(z0, z1), NTXentLoss()(z0, z1))


def test_supcon_matches_slow_reference() -> None:
    z0, z1 = views(b=6)
    labels = torch.tensor([0, 1, 0, -1, 2, 1])
    loss = SupConLoss(0.2)(z0, z1, labels)
    assert torch.allclose(loss, supcon_reference(z0, z1, labels, 0.2), atol=1e-5)


def test_supcon_with_distinct_or_no_labels_is_ntxent() -> None:
    z0, z1 = views()
    ntxent = NTXentLoss(0.1)(z0, z1)
    assert torch.allclose(SupConLoss(0.1)(z0, z1, torch.arange(8)), ntxent, atol=1e-6)
    assert torch.allclose(SupConLoss(0.1)(z0, z1, torch.full((8,), -1)), ntxent, atol=1e-6)


def test_supcon_rewards_class_clusters() -> None:
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(4).repeat(4)  # 16 windows, 4 classes
    centers = torch.randn(4, 32, generator=gen)
    clustered = centers[labels] + 0.1 * torch.randn(16, 32, generator=gen)
    loss = SupConLoss(0.1)
    shuffled = labels[torch.randperm(16, generator=gen)]
    assert loss(clustered, clustered, labels) < loss(clustered, clustered, shuffled)


def test_vicreg_variance_term_flags_collapse() -> None:
    vicreg = VICRegLoss()
    collapsed = torch.ones(32, 16)
    spread = 3 * torch.randn(32, 16, generator=torch.Generator().manual_seed(0))
    assert vicreg.terms(collapsed, collapsed)["variance"].item() == pytest.approx(1, abs=0.02)
    assert vicreg.terms(spread, spread)["variance"].item() < 1e-3
    assert vicreg.terms(spread, spread)["invariance"].item() == 0


def test_vicreg_covariance_term_flags_redundant_dimensions() -> None:
    gen = torch.Generator().manual_seed(0)
    independent = torch.randn(256, 8, generator=gen)
    redundant = torch.randn(256, 1, generator=gen).repeat(1, 8)
    vicreg = VICRegLoss()
    assert (
        vicreg.terms(redundant, redundant)["covariance"]
        > 10 * vicreg.terms(independent, independent)["covariance"]
    )
    # A constant offset between views costs exactly sim * offset**2 on top of the other terms.
    t = vicreg.terms(independent, independent + 0.1)
    assert t["invariance"].item() == pytest.approx(0.01, rel=1e-4)
    expected = 25 * 0.01 + 25 * t["variance"] + t["covariance"]
    assert torch.allclose(vicreg(independent, independent + 0.1), expected)


def test_losses_give_gradients() -> None:
    z0, z1 = (z.requires_grad_() for z in views())
    (
        NTXentLoss()(z0, z1) + SupConLoss()(z0, z1, torch.arange(8) % 3) + VICRegLoss()(z0, z1)
    ).backward()
    assert torch.isfinite(z0.grad).all() and z0.grad.abs().sum() > 0

"""Collapse detection: collapsed embeddings are flagged, healthy ones pass."""

from __future__ import annotations

import math

import pytest
import torch

from train.collapse import CollapseError, assert_not_collapsed, check_collapse, embedding_stats

D = 64


def gaussian(n: int = 512, d: int = D, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_random_gaussian_embeddings_pass() -> None:
    stats = embedding_stats(gaussian())
    assert stats["dims"] == D and stats["samples"] == 512
    assert stats["std_mean"] == pytest.approx(1 / math.sqrt(D), rel=0.1)
    assert stats["effective_rank"] > 0.8 * D
    assert check_collapse(stats) is None


def test_constant_embeddings_are_detected() -> None:
    z = torch.ones(256, D) * 3.0 + 1e-6 * gaussian(256)
    stats = embedding_stats(z)
    assert stats["std_mean"] < 1e-5
    warning = check_collapse(stats)
    assert warning is not None and "COLLAPSE" in warning and "embedding std" in warning
    assert stats["effective_rank"] == pytest.approx(1, abs=0.01)


def test_rank_one_embeddings_are_detected_by_rank() -> None:
    # Windows spread along one line through the origin: the per-dimension std looks healthy,
    # only the effective rank shows the collapse.
    direction = gaussian(1, seed=1)
    z = gaussian(512, 1, seed=2) * direction
    stats = embedding_stats(z)
    assert stats["std_mean"] > 0.2 / math.sqrt(D)
    assert stats["effective_rank"] < 1.01
    warning = check_collapse(stats)
    assert warning is not None and "effective rank" in warning and "embedding std" not in warning


def test_a_narrow_cone_of_many_directions_is_not_collapse_but_a_point_is() -> None:
    # Embeddings around a shared direction (a bias), spread over every dimension: the spread is
    # a fifth of the uniform sphere's, as after a first pretraining epoch, and the rank healthy.
    shared = 5.0 * gaussian(1, seed=4) / math.sqrt(D)
    cone = embedding_stats(shared + gaussian(512, seed=5) / math.sqrt(D))
    assert 0.1 / math.sqrt(D) < cone["std_mean"] < 0.3 / math.sqrt(D)
    assert check_collapse(cone) is None
    point = embedding_stats(shared + 0.01 * gaussian(512, seed=5) / math.sqrt(D))
    assert point["std_mean"] < 0.05 / math.sqrt(D)
    assert "embedding std" in (check_collapse(point) or "")


def test_low_rank_threshold_is_relative_to_dims() -> None:
    z = gaussian(512, 2) @ gaussian(2, D, seed=3)  # rank 2 in 64 dims: 2 < 0.05 * 64 = 3.2
    assert check_collapse(embedding_stats(z)) is not None
    assert check_collapse(embedding_stats(z), min_rank_ratio=0.01) is None


def test_assert_not_collapsed_raises_with_the_warning() -> None:
    assert assert_not_collapsed(gaussian())["dims"] == D
    with pytest.raises(CollapseError, match="REPRESENTATION COLLAPSE"):
        assert_not_collapsed(torch.ones(32, D))


def test_embedding_stats_rejects_a_single_sample() -> None:
    with pytest.raises(ValueError, match=r"\(1, 64\)"):
        embedding_stats(torch.ones(1, D))

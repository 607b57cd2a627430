"""DDP helpers on CPU: two gloo processes check the gather, the global-negative NT-Xent's
gradients and that DDP keeps replicas identical; plus the single-process fallback."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from train.distributed import (
    DistContext,
    cleanup,
    gather_with_grad,
    init_distributed,
    shard_indices,
    wrap_ddp,
)
from train.encoder import ReferenceCNN
from train.losses import NTXentLoss

WORLD, B, D = 2, 4, 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def global_views(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(WORLD * B, D, generator=gen), torch.randn(WORLD * B, D, generator=gen)


def same_on_all_ranks(t: torch.Tensor) -> bool:
    copies = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(copies, t.contiguous())
    return all(torch.equal(c, copies[0]) for c in copies)


def check_gather(ctx: DistContext) -> None:
    x = torch.full((B, D), float(ctx.rank)) + torch.arange(B * D).view(B, D)
    gathered = gather_with_grad(x)
    expected = torch.cat(
        [torch.full((B, D), float(r)) + torch.arange(B * D).view(B, D) for r in range(WORLD)]
    )
    assert torch.equal(gathered, expected), f"rank {ctx.rank}: gather gave {gathered}"


def check_ntxent_gradients(ctx: DistContext) -> None:
    z0_all, z1_all = global_views()
    local = slice(ctx.rank * B, (ctx.rank + 1) * B)
    z0, z1 = z0_all[local].clone().requires_grad_(), z1_all[local].clone().requires_grad_()
    loss = NTXentLoss(0.5, gather=gather_with_grad)(z0, z1)
    loss.backward()

    ref0, ref1 = z0_all.clone().requires_grad_(), z1_all.clone().requires_grad_()
    reference = NTXentLoss(0.5)(ref0, ref1)  # single process, concatenated batch
    reference.backward()

    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    assert torch.allclose(mean_loss / WORLD, reference, atol=1e-6), (mean_loss / WORLD, reference)
    # Convention: a rank's embedding gradient is world_size x the single-process gradient
    # (DDP's averaging of parameter gradients divides it back; see train/distributed.py).
    assert torch.allclose(z0.grad, WORLD * ref0.grad[local], atol=1e-6)
    assert torch.allclose(z1.grad, WORLD * ref1.grad[local], atol=1e-6)


def check_ddp_parameter_gradients(ctx: DistContext) -> None:
    """Through DDP, parameter gradients equal those of the single-process loss on all data."""
    torch.manual_seed(0)
    model = nn.Linear(D, D)
    reference = nn.Linear(D, D)
    reference.load_state_dict(model.state_dict())
    ddp = wrap_ddp(model, ctx)
    x0_all, x1_all = global_views(seed=1)
    local = slice(ctx.rank * B, (ctx.rank + 1) * B)
    NTXentLoss(gather=gather_with_grad)(ddp(x0_all[local]), ddp(x1_all[local])).backward()
    NTXentLoss()(reference(x0_all), reference(x1_all)).backward()
    assert torch.allclose(model.weight.grad, reference.weight.grad, atol=1e-6)
    assert torch.allclose(model.bias.grad, reference.bias.grad, atol=1e-6)


def check_ddp_training_keeps_replicas_identical(ctx: DistContext) -> None:
    torch.manual_seed(ctx.rank)  # different initial weights: DDP must broadcast rank 0's
    model = wrap_ddp(ReferenceCNN(embedding_dim=16, width=0.25), ctx)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = NTXentLoss(gather=gather_with_grad)
    gen = torch.Generator().manual_seed(100 + ctx.rank)  # each rank its own data
    for _ in range(2):
        x = torch.randn(B, 1, 256, generator=gen)
        noise = 0.1 * torch.randn(x.shape, generator=gen)
        loss = loss_fn(model(x), model(x + noise))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert same_on_all_ranks(params), "replicas diverged"
    assert not torch.equal(params, torch.cat([p.flatten() for p in before])), "no training step"


def worker(rank: int, port: int) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    ctx = init_distributed(backend="gloo")
    try:
        assert (ctx.rank, ctx.world_size, ctx.is_main) == (rank, WORLD, rank == 0)
        check_gather(ctx)
        check_ntxent_gradients(ctx)
        check_ddp_parameter_gradients(ctx)
        check_ddp_training_keeps_replicas_identical(ctx)
    finally:
        cleanup()


@pytest.mark.timeout(120)
def test_two_gloo_processes() -> None:
    mp.spawn(worker, args=(free_port(),), nprocs=WORLD, join=True)


def test_single_process_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed()
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    x = torch.randn(3, 4)
    assert gather_with_grad(x) is x
    model = nn.Linear(4, 2)
    assert wrap_ddp(model, ctx) is model


def test_missing_torchrun_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="RANK is not; launch with torchrun"):
        init_distributed()


@pytest.mark.parametrize("n", [0, 1, 10, 11, 1000])
def test_shard_indices_are_disjoint_equal_and_cover(n: int) -> None:
    world = 3
    shards = [
        shard_indices(n, DistContext(rank=r, world_size=world), seed=7, epoch=2)
        for r in range(world)
    ]
    assert all(len(s) == n // world for s in shards)
    union = np.concatenate(shards)
    assert len(np.unique(union)) == len(union) == n - n % world
    assert union.min(initial=0) >= 0 and union.max(initial=0) <= max(n - 1, 0)
    again = shard_indices(n, DistContext(rank=1, world_size=world), seed=7, epoch=2)
    assert np.array_equal(again, shards[1])


def test_shard_indices_reshuffle_each_epoch() -> None:
    ctx = DistContext(rank=0, world_size=2)
    assert not np.array_equal(shard_indices(100, ctx, 0, 0), shard_indices(100, ctx, 0, 1))

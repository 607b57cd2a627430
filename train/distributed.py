"""Scale-out on DistributedDataParallel: process group set-up, differentiable all-gather, sharding.

Launch with `torchrun --nproc_per_node N ...`; without torchrun's environment (WORLD_SIZE unset)
everything falls back to a single process and these helpers become no-ops.

Gradient convention for contrastive losses with global negatives: each rank computes
`NTXentLoss(gather=gather_with_grad)` on its local anchors and backpropagates it. The all-gather's
backward sums the gradients that all ranks' losses send to a rank's embeddings, so that rank's
embedding gradient is d(sum_r loss_r)/dz = world_size * d(L)/dz, where L = mean_r loss_r is the
single-process loss on the concatenated batch. DDP then averages parameter gradients over ranks
(dividing by world_size), so the parameter gradients equal those of L on one big batch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: rank of world_size, its local GPU index and device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    is_main: bool = True

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None:
        raise ValueError(
            f"WORLD_SIZE is set but {name} is not; launch with torchrun, which sets "
            f"{', '.join(TORCHRUN_VARS)}"
        )
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def init_distributed(backend: str | None = None) -> DistContext:
    """Join the process group described by torchrun's environment variables.

    backend: None picks nccl when CUDA is available, else gloo. WORLD_SIZE unset: a single
    process on cuda:0 (if available) or cpu, with no process group.
    """
    cuda = torch.cuda.is_available()
    if "WORLD_SIZE" not in os.environ:
        device = torch.device("cuda", 0) if cuda else torch.device("cpu")
        return DistContext(device=device)
    rank, world_size = _env_int("RANK"), _env_int("WORLD_SIZE")
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise ValueError(f"WORLD_SIZE is set but {name} is not; launch with torchrun")
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= RANK < WORLD_SIZE, got RANK={rank}, WORLD_SIZE={world_size}")
    backend = backend or ("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    logger.info(
        "rank %d/%d (local %d) on %s, backend %s", rank, world_size, local_rank, device, backend
    )
    return DistContext(rank, world_size, local_rank, device, is_main=rank == 0)


def cleanup() -> None:
    """Leave the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather x (B, ...) from every rank -> (world_size * B, ...), rank-major, differentiable.

    Uses torch.distributed.nn.functional.all_gather, whose backward sums each rank's gradient
    contributions (reduce-scatter on NCCL, all-to-all on gloo). Identity without a process group.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return torch.cat(dist_nn.all_gather(x), dim=0)


def wrap_ddp(model: nn.Module, ctx: DistContext) -> nn.Module:
    """Move model to ctx.device and wrap it in DDP (BatchNorm -> SyncBatchNorm on CUDA only).

    Without a process group the model is returned unwrapped, on ctx.device.
    """
    model = model.to(ctx.device)
    if not (dist.is_available() and dist.is_initialized()):
        return model
    if ctx.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(
            model, device_ids=[ctx.local_rank], find_unused_parameters=False
        )
    return DistributedDataParallel(model, find_unused_parameters=False)


def shard_indices(n: int, ctx: DistContext, seed: int, epoch: int) -> np.ndarray:
    """This rank's indices into a dataset of n items for one epoch, int64 (n // world_size,).

    A permutation seeded by (seed, epoch), cut to a multiple of world_size (so every rank takes
    the same number of steps; up to world_size - 1 items sit out, different ones each epoch),
    then dealt out: ranks get disjoint subsets that together cover the kept items.
    """
    if n < 0 or seed < 0 or epoch < 0:
        raise ValueError(f"need n, seed, epoch >= 0, got {n=}, {seed=}, {epoch=}")
    order = np.random.default_rng([seed, epoch]).permutation(n)
    kept = n - n % ctx.world_size
    return order[:kept][ctx.rank :: ctx.world_size].astype(np.int64)

"""Multi-process SimCLR pretraining: `torchrun --nproc_per_node N -m train.distributed_main ...`.

Each rank samples its own crops from the unlabeled pool (seeded by rank), DistributedDataParallel
averages the gradients, and NT-Xent takes its negatives from every rank's embeddings (a
differentiable all-gather), so N ranks with batch B train like one process with batch N x B.
NCCL on GPUs, gloo on CPU; rank 0 writes `runs/<name>/pretrained.pt` (use it with
`faultwatch train finetune --pretrained ...`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from train.config import load_config
from train.data import build_split
from train.distributed import cleanup, init_distributed
from train.loop import pretrain
from train.runs import PRETRAINED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="torchrun ... -m train.distributed_main", description=__doc__
    )
    parser.add_argument("--config", type=Path, help="TOML training config")
    parser.add_argument("--set", action="append", default=[], help="override field=value")
    parser.add_argument("--backend", choices=["nccl", "gloo"], default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    ctx = init_distributed(args.backend)
    logging.basicConfig(
        level=logging.INFO if ctx.is_main else logging.WARNING, format="%(message)s"
    )
    try:
        cfg = load_config(args.config, args.set)
        split = build_split(cfg)
        result = pretrain(
            cfg,
            split,
            checkpoint=cfg.run_dir() / PRETRAINED,
            resume=args.resume,
            dist=ctx,
            show_progress=ctx.is_main,
        )
        if ctx.is_main:
            print(
                f"rank 0 of {ctx.world_size}: {cfg.run_dir() / PRETRAINED} "
                f"({result.views_per_second:.0f} views/s across ranks)"
            )
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`python -m bench throughput`: SimCLR pretraining throughput (augmented views per second,
augmentation on the training device included) with the reference CNN.

Runs real pretraining steps (sample crops -> two augmented views -> encoder + projection ->
NT-Xent -> AdamW step) on a synthetic pool, so data loading costs nothing beyond a crop.
The pool is white noise: it times the steps and says nothing about accuracy, so the collapse
check (which noise would trip) is off here. Writes bench/results/throughput.json.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from train.config import load_config
from train.loop import pretrain
from train.splits import Segment, SegmentPool, Split, WindowSet

console = Console()


def synthetic_split(
    window: int, n_segments: int = 16, seconds: float = 10.0, rate: int = 12_000
) -> Split:
    rng = np.random.default_rng(0)
    segments = [
        Segment(f"s{i}", rng.normal(size=int(seconds * rate)).astype(np.float32), -1, 0)
        for i in range(n_segments)
    ]
    empty = WindowSet.empty(window)
    return Split(
        ["normal", "fault"],
        empty,
        empty,
        empty,
        SegmentPool(segments, window, window, "zscore"),
        {},
    )


def measure(
    device: str,
    batch: int,
    steps: int,
    threads: int | None,
    width: float,
    norm: str,
    compile_: bool = False,
    amp: bool = True,
) -> dict:
    if threads:
        torch.set_num_threads(threads)
    cfg = load_config(
        None,
        None,
        device=device,
        batch_size=batch,
        epochs=1,
        steps_per_epoch=steps,
        width=width,
        norm=norm,
        compile=compile_,
        amp=amp,
        log_every=10_000,
        pretrain_monitor=False,  # a speed run: every step trains, no epoch is chosen
    )
    split = synthetic_split(cfg.window)
    result = pretrain(cfg, split, show_progress=False, collapse_check=False)
    return {
        "device": device,
        "batch": batch,
        "steps": steps,
        "threads": torch.get_num_threads(),
        "width": width,
        "norm": norm,
        "compile": compile_,
        "amp": amp and device != "cpu" and torch.cuda.is_available(),
        "views_per_second": result.views_per_second,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench throughput", description=__doc__)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument(
        "--norm",
        nargs="+",
        default=["none", "batch"],
        help="none = the reference recipe's CNN exactly; batch = our default",
    )
    parser.add_argument("--compile", action="store_true", help="also measure with torch.compile")
    parser.add_argument(
        "--no-amp", action="store_true", help="also measure CUDA without bf16 autocast"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/throughput.json"))
    args = parser.parse_args(argv)
    rows = [
        measure(args.device, b, args.steps, args.threads, args.width, n, c, amp)
        for amp in ([True, False] if args.no_amp else [True])
        for c in ([False, True] if args.compile else [False])
        for n in args.norm
        for b in args.batch
    ]
    table = Table(title=f"pretraining throughput ({platform.processor() or platform.machine()})")
    for col in ("device", "norm", "compile", "amp", "batch", "threads", "views/s"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["device"],
            r["norm"],
            str(r["compile"]),
            str(r["amp"]),
            str(r["batch"]),
            str(r["threads"]),
            f"{r['views_per_second']:.0f}",
        )
    console.print(table)
    console.print("note: random-noise pool, speed only; accuracy and collapse are not measured")
    if torch.cuda.is_available():
        console.print(f"GPU: {torch.cuda.get_device_name()}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "cpu_count": torch.get_num_threads()}, indent=1))
    return 0

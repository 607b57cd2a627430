"""Multi-process pretraining through torchrun: 2 CPU processes, gloo, gathered NT-Xent negatives."""

import socket
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_ranks_pretrain_and_save(tmp_path):
    overrides = [
        "labels_per_class=2",
        "unlabeled_windows=40",
        "sim_seconds_per_record=1.0",
        "window=512",
        "hop=256",
        "width=0.25",
        "embedding_dim=8",
        "projection_dims=[16, 8]",
        "batch_size=8",
        "epochs=2",
        "steps_per_epoch=2",
        f"out_dir='{tmp_path}'",
        "run_name='ddp'",
        "device='cpu'",
    ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "train.distributed_main",
        "--backend",
        "gloo",
    ]
    for item in overrides:
        cmd += ["--set", item]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "rank 0 of 2" in result.stdout
    state = torch.load(tmp_path / "ddp" / "pretrained.pt", weights_only=False)
    assert state["step"] == 4  # 2 epochs x 2 steps, counted once (not per rank)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in state["history"])

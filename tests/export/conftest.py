"""A small fine-tuned run folder, built once per session in a few seconds.

Synthetic, separable data: each class is a sine at its own frequency (shifted a little by two
operating conditions) plus noise, z-scored with `edge_agent.contract.preprocess.normalize`. A
ReferenceCNN(width=0.25) and a 64-unit head are trained jointly for a few steps, so accuracy is
far above chance and INT8 models have real decisions to agree with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edge_agent.contract.preprocess import normalize
from tests.tiny_model import class_stats, embed, train_tiny

CLASS_NAMES = ["normal", "inner_race", "outer_race", "ball"]
CLASS_HZ = [500.0, 1300.0, 2500.0, 4000.0]
CONDITION_SPEED = [0.95, 1.05]  # two operating conditions (shaft speed factor)
SAMPLE_RATE_HZ = 12_000
WINDOW = 512
EMBEDDING_DIM = 32


def synthetic_windows(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(n, 1, WINDOW) normalized windows and (n,) labels, classes and conditions balanced."""
    labels = np.arange(n) % len(CLASS_NAMES)
    speed = np.array(CONDITION_SPEED)[(np.arange(n) // len(CLASS_NAMES)) % len(CONDITION_SPEED)]
    freq = np.array(CLASS_HZ)[labels] * speed * rng.uniform(0.97, 1.03, n)
    t = np.arange(WINDOW) / SAMPLE_RATE_HZ
    phase = rng.uniform(0, 2 * np.pi, n)
    amplitude = rng.uniform(0.02, 0.2, n)  # in g; normalization removes it
    signal = amplitude[:, None] * np.sin(2 * np.pi * freq[:, None] * t + phase[:, None])
    signal += 0.3 * amplitude[:, None] * rng.standard_normal((n, WINDOW))
    return normalize(signal.astype(np.float32)), labels.astype(np.int64)


def train_fixture_model(seed: int = 0, steps: int = 40) -> dict:
    """Train encoder + head briefly; return the checkpoint dict and the data splits."""
    rng = np.random.default_rng(seed)
    train_x, train_y = synthetic_windows(512, rng)
    test_x, test_y = synthetic_windows(160, rng)
    encoder, numpy_head = train_tiny(
        train_x,
        train_y,
        len(CLASS_NAMES),
        embedding_dim=EMBEDDING_DIM,
        steps=steps,
        lr=3e-3,
        seed=seed,
    )
    accuracy = float((numpy_head.logits(embed(encoder, test_x)).argmax(1) == test_y).mean())
    stats = class_stats(embed(encoder, train_x), train_y, CLASS_NAMES)
    checkpoint = {
        "kind": "finetuned",
        "encoder": {
            "name": "cnn",
            "kwargs": {"embedding_dim": EMBEDDING_DIM, "norm": "batch", "width": 0.25},
        },
        "encoder_state": encoder.state_dict(),
        "head": numpy_head.to_arrays(),
        "class_names": CLASS_NAMES,
        "normal_class": "normal",
        "preprocess": {
            "sample_rate_hz": SAMPLE_RATE_HZ,
            "window": WINDOW,
            "hop": WINDOW // 2,
            "normalization": "zscore",
        },
        "config": {"steps": steps, "lr": 3e-3, "batch_size": 64},
        "provenance": {"data": "synthetic sines (tests)", "split": "by seed", "seed": seed},
        "metrics": {"test_accuracy": accuracy},
        "reference_stats": stats,
        "open_set": {"unknown_above": 2.5, "quantile": 0.99},
    }
    calib_idx = rng.choice(len(train_x), 128, replace=False)
    return {
        "checkpoint": checkpoint,
        "calibration": train_x[calib_idx],
        "heldout": (test_x, test_y),
        "accuracy": accuracy,
    }


def write_run(folder: Path, trained: dict, calibration: np.ndarray | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(trained["checkpoint"], folder / "finetuned.pt")
    calib = trained["calibration"] if calibration is None else calibration
    np.savez(folder / "calibration.npz", x=calib)
    x, y = trained["heldout"]
    np.savez(folder / "heldout.npz", x=x, y=y)
    return folder


@pytest.fixture(scope="session")
def trained() -> dict:
    torch.set_num_threads(1)  # 2 shared cores: threads only contend
    result = train_fixture_model()
    assert result["accuracy"] > 0.9, f"fixture model too weak: {result['accuracy']:.2f}"
    return result


@pytest.fixture(scope="session")
def make_run():
    """write_run(folder, trained, calibration=None) -> folder: a run folder from parts."""
    return write_run


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory, trained: dict) -> Path:
    """A run folder: finetuned.pt, calibration.npz (128 windows), heldout.npz (160 windows)."""
    return write_run(tmp_path_factory.mktemp("run"), trained)


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory, run_dir: Path) -> dict:
    """`faultwatch export` of the fixture run to all three formats, through the CLI."""
    from export.cli import app

    out = tmp_path_factory.mktemp("bundles")
    result = CliRunner().invoke(
        app,
        ["--checkpoint", str(run_dir), "--out", str(out), "--name", "fixture", "--version", "1"],
    )
    assert result.exit_code == 0, result.output
    return {"output": result.output, "folder": out / "fixture-1", "out": out}

"""A real, tiny model bundle for the agent tests, built once per test process, and agent configs.

The bundle: a ReferenceCNN(width=0.25, embedding_dim=16) and a 64-unit head trained jointly for a
few dozen steps on simulator windows (normal, inner_race, outer_race at 12 kHz, window 1024, hop
512), exported with the project's own exporter (`export.bundle.export_bundle`: fp32 ONNX + INT8
ONNX, parity gate) into `<tmp>/agent-bundle/tiny-1/`. Training uses the machine of simulator seed
SEED with another run seed, so the agent's simulator (seed SEED) sees the same machine, new noise.

In a test module:

    @pytest.fixture(scope="session")
    def agent_bundle(request, tmp_path_factory):
        return agent_bundle_folder(request, tmp_path_factory)
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w

SEED = 7
SAMPLE_RATE_HZ = 12_000
WINDOW = 1024
HOP = 512
CLASS_NAMES = ["normal", "inner_race", "outer_race"]
EMBEDDING_DIM = 16
SEVERITY = 0.6

_cache: dict[str, Path] = {}


def simulated_windows(fault: str, seconds: float, run_seed: int) -> np.ndarray:
    """Normalized (N, 1, WINDOW) windows of the SEED machine with `fault`."""
    from edge_agent.contract.preprocess import frame, normalize
    from edge_agent.physics.bearing_sim import BearingSimulator, Conditions

    sim = BearingSimulator(
        Conditions(fault=fault, severity=SEVERITY),  # type: ignore[arg-type]
        SAMPLE_RATE_HZ,
        seed=run_seed,
        machine_seed=SEED,
    )
    return normalize(frame(sim.read(int(seconds * SAMPLE_RATE_HZ)), WINDOW, HOP))


def _train_checkpoint() -> dict[str, Any]:
    from edge_agent.contract.bundle import ClassStats
    from edge_agent.pipeline.openset import OpenSetScorer, threshold_for
    from tests.tiny_model import class_stats, embed, train_tiny

    rng = np.random.default_rng(0)
    xs, ys = [], []
    for k, fault in enumerate(CLASS_NAMES):
        w = simulated_windows(fault, 5.0, run_seed=SEED + 100)
        xs.append(w)
        ys.append(np.full(len(w), k))
    x, y = np.concatenate(xs), np.concatenate(ys)
    encoder, numpy_head = train_tiny(
        x, y, len(CLASS_NAMES), embedding_dim=EMBEDDING_DIM, steps=60, lr=1e-2, seed=0
    )
    emb = embed(encoder, x)
    accuracy = float((numpy_head.logits(emb).argmax(1) == y).mean())
    assert accuracy > 0.95, f"bundle fixture model too weak: {accuracy:.2f}"
    stats = class_stats(emb, y, CLASS_NAMES)
    scorer = OpenSetScorer({k: ClassStats(**v) for k, v in stats.items()})
    unknown_above = threshold_for(scorer.score(emb), 0.99)
    return {
        "checkpoint": {
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
                "hop": HOP,
                "normalization": "zscore",
            },
            "provenance": {"data": "simulator (agent tests)", "seed": SEED},
            "metrics": {"train_accuracy": accuracy},
            "reference_stats": stats,
            "open_set": {"unknown_above": unknown_above, "quantile": 0.99},
        },
        "calibration": x[rng.choice(len(x), 96, replace=False)],
        "heldout": (x[::3], y[::3]),
    }


def build_agent_bundle(base: Path) -> Path:
    """Train, export (fp32 + int8 ONNX) and return the verified bundle folder (cached)."""
    if "folder" in _cache:
        return _cache["folder"]
    import torch

    from export.bundle import ExportOptions, export_bundle, load_run
    from export.formats import FORMATS

    trained = _train_checkpoint()
    run = base / "run"
    run.mkdir(parents=True)
    torch.save(trained["checkpoint"], run / "finetuned.pt")
    np.savez(run / "calibration.npz", x=trained["calibration"])
    np.savez(run / "heldout.npz", x=trained["heldout"][0], y=trained["heldout"][1])
    options = ExportOptions(
        formats=[FORMATS["onnx"], FORMATS["onnx-int8"]],
        out=base / "bundles",
        name="tiny",
        version="1",
        min_agreement=0.9,
        max_accuracy_drop_points=10.0,
    )
    result = export_bundle(load_run(run), options)
    assert result.ok, f"fixture export failed: {result.failures}"
    _cache["folder"] = result.folder  # type: ignore[assignment]
    return result.folder  # type: ignore[return-value]


def _source_key() -> str:
    """Hash of the code that shapes the bundle: a change rebuilds the cached one."""
    root = Path(__file__).resolve().parents[2]
    paths = [
        Path(__file__),
        root / "train" / "encoder.py",
        root / "edge_agent" / "contract" / "bundle.py",
    ]
    paths += [root / "edge_agent" / "contract" / "formats.py"]
    paths += sorted((root / "export").glob("*.py"))
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def agent_bundle_folder(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Folder of the tiny verified bundle (its .tar.gz lies beside it), for a session fixture.

    Read-only: copy it to tamper with it. Built once per process and kept in pytest's cache
    folder between runs (rebuilt when the code behind it changes or it no longer verifies)."""
    from edge_agent.contract.bundle import BundleError, verify

    if "folder" in _cache:
        return _cache["folder"]
    cache = getattr(request.config, "cache", None)  # None with -p no:cacheprovider
    if cache is None:
        return build_agent_bundle(tmp_path_factory.mktemp("agent-bundle"))
    cached = Path(cache.mkdir(f"faultwatch-agent-bundle-{_source_key()}"))
    folder = cached / "bundles" / "tiny-1"
    try:
        verify(folder)
        _cache["folder"] = folder
        return folder
    except BundleError:
        pass
    built = build_agent_bundle(tmp_path_factory.mktemp("agent-bundle"))
    for stale in cached.parent.glob("faultwatch-agent-bundle-*"):
        if stale != cached:
            shutil.rmtree(stale, ignore_errors=True)
    shutil.rmtree(cached / "bundles", ignore_errors=True)
    shutil.copytree(built.parent, cached / "bundles")
    _cache["folder"] = folder
    return folder


def bundle_with(agent_bundle: Path, folder: Path, **fields: Any) -> Path:
    """A copy of the agent bundle at `folder` whose manifest has `fields` set (unsigned)."""
    import json

    shutil.copytree(agent_bundle, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, **fields}))
    return folder


def write_config(
    folder: Path,
    bundle: Path,
    port: int,
    source: dict[str, Any] | None = None,
    **sections: Any,
) -> Path:
    """Write `folder/agent.toml` for a device `dev-test` on 127.0.0.1:`port`; returns its path.

    source: the [source] table (default: a fast simulator of seed SEED). Keyword arguments replace
    or add top-level fields and tables (e.g. inference={...}, telemetry_interval_s=0.5).
    """
    config: dict[str, Any] = {
        "state_dir": str(folder / "state"),
        "log_level": "INFO",
        "device": {"id": "dev-test", "type": "dev"},
        "sensor": {"sensitivity_mv_per_g": 100.0, "full_scale_volts": 5.0},
        "source": source
        or {"type": "simulator", "sample_rate_hz": SAMPLE_RATE_HZ, "seed": SEED, "realtime": False},
        "inference": {"bundle": str(bundle), "backend": "onnx", "precision": "int8"},
        "decisions": {"k": 3, "n": 5, "drift_window": 20},
        "mqtt": {
            "host": "127.0.0.1",
            "port": port,
            "site": "s1",
            "asset": "a1",
            "device": "dev-test",
        },
    }
    config.update(sections)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "agent.toml"
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    return path


def simulator_source(schedule: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """A fast simulator [source] table of seed SEED with the given schedule steps."""
    return {
        "type": "simulator",
        "sample_rate_hz": SAMPLE_RATE_HZ,
        "seed": SEED,
        "realtime": False,
        "chunk_samples": 1024,
        "schedule": schedule,
        **fields,
    }


FAULT_SCHEDULE = [
    {"at_s": 0.0, "fault": "normal", "severity": SEVERITY},
    {"at_s": 3.0, "fault": "inner_race", "severity": SEVERITY},
    {"at_s": 6.0, "gain": 1e-9, "noise_floor_g": 0.0},  # the cable comes off: a flat line
]

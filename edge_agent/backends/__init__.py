"""Encoder runtimes behind one interface; the TOML's `inference.backend` picks one.

backend = load_backend(folder, manifest, "onnx", threads=2)   # verified bundle folder
embeddings = backend.embed(windows)                            # (N, 1, W) -> (N, D)
self_test(folder, manifest, backend, "int8.onnx")              # before activating a new bundle
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_agent.backends.base import Backend, BackendError
from edge_agent.backends.onnx import OnnxBackend
from edge_agent.backends.tflite import TfliteBackend
from edge_agent.contract.bundle import BundleError, Manifest
from edge_agent.contract.formats import encoder_format
from edge_agent.pipeline.head import Head

logger = logging.getLogger(__name__)

BACKENDS: dict[str, type] = {"onnx": OnnxBackend, "tflite": TfliteBackend}

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendError",
    "OnnxBackend",
    "TfliteBackend",
    "load_backend",
    "self_test",
]


def load_backend(
    bundle_folder: Path,
    manifest: Manifest,
    name: str,
    threads: int = 1,
    *,
    precision: str = "int8",
    providers: Sequence[str] | None = None,
) -> Backend:
    """Load the bundle's encoder for backend `name` and warm it up with one dummy window.

    The format comes from `contract.formats.encoder_format(name, precision)`.
    providers: onnxruntime execution providers (onnx only). Sets `backend.warmup_ms`.
    Raises BackendError for an unknown name, a precision the backend does not run, a missing
    encoder or runtime, or an encoder whose output does not match the manifest's embedding_dim.
    """
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
    try:
        fmt = encoder_format(name, precision)
    except ValueError as exc:
        raise BackendError(str(exc)) from exc
    try:
        entry = manifest.encoder(fmt.name)
    except BundleError as exc:
        raise BackendError(f"{bundle_folder}: {exc}; pick another backend or precision") from exc
    options = {}
    if name == "onnx" and providers:
        options["providers"] = tuple(providers)
    backend = BACKENDS[name](
        Path(bundle_folder) / entry.file,
        threads=threads,
        quantization=entry.quantization,
        **options,
    )
    window = manifest.preprocessing.window
    start = time.perf_counter()
    out = backend.embed(np.zeros((1, 1, window), dtype=np.float32))
    backend.warmup_ms = (time.perf_counter() - start) * 1000
    if out.shape != (1, manifest.embedding_dim):
        raise BackendError(
            f"{entry.file}: gives embeddings of shape {out.shape[1:]} but the manifest says "
            f"embedding_dim {manifest.embedding_dim}; the bundle is inconsistent, re-export it"
        )
    logger.info(
        "backend %s: %s, %d thread(s), warm-up %.1f ms",
        name,
        entry.file,
        threads,
        backend.warmup_ms,
    )
    return backend


def self_test_windows(window: int, n: int = 4) -> np.ndarray:
    """Deterministic (n, 1, window) float32 windows at the scale of normalized input.

    Silence, a unit sine, then seeded unit-variance noise: the same on every device and run.
    """
    t = np.arange(window, dtype=np.float32)
    rows = [np.zeros(window), np.sqrt(2) * np.sin(2 * np.pi * t / 32)]
    rows += list(np.random.default_rng(0).standard_normal((max(n - 2, 0), window)))
    return np.stack(rows[:n]).astype(np.float32)[:, None, :]


SELF_TEST_TOLERANCE = 0.1  # relative L2 error per window (int8 rounding may differ by CPU)


def self_test(
    folder: Path, manifest: Manifest, backend: Backend, encoder: str | None = None
) -> None:
    """Check a loaded backend on the bundle in `folder` before it goes live.

    Runs `self_test_windows(manifest.preprocessing.window)` through the encoder and the bundle's
    factory head; BackendError unless the embeddings are finite with shape (N, embedding_dim) and
    the probabilities finite with shape (N, classes). (Bundles ship no sample windows.)
    """
    x = self_test_windows(manifest.preprocessing.window)
    where = f"{Path(folder).name} self-test"
    try:
        emb = np.asarray(backend.embed(x))
    except Exception as exc:  # any runtime failure is the finding
        raise BackendError(f"{where}: the encoder fails on test windows: {exc}") from exc
    want = (len(x), manifest.embedding_dim)
    if emb.shape != want:
        raise BackendError(
            f"{where}: embeddings have shape {emb.shape}, expected {want} (embedding_dim); "
            "re-export the bundle"
        )
    if not np.isfinite(emb).all():
        bad = int((~np.isfinite(emb).all(axis=1)).sum())
        raise BackendError(
            f"{where}: {bad} of {len(x)} test windows give NaN/inf embeddings; the encoder is "
            "broken on this runtime: try another backend or precision, or re-export"
        )
    try:
        with np.errstate(all="ignore"):  # non-finite results are reported below
            probs = Head.load(Path(folder) / manifest.head_file).probabilities(emb)
    except (OSError, ValueError) as exc:
        raise BackendError(f"{where}: the head does not run: {exc}") from exc
    if probs.shape != (len(x), len(manifest.class_names)) or not np.isfinite(probs).all():
        raise BackendError(
            f"{where}: the head gives non-finite or mis-shaped probabilities {probs.shape}; "
            "re-export the bundle"
        )
    if manifest.self_test is not None and encoder is not None:
        _match_recording(Path(folder) / manifest.self_test, encoder, emb, where)


def _match_recording(path: Path, encoder: str, emb: np.ndarray, where: str) -> None:
    """The embeddings must match what the export recorded for this encoder format."""
    try:
        with np.load(path) as recorded:
            want = recorded[encoder] if encoder in recorded.files else None
    except (OSError, ValueError) as exc:
        raise BackendError(f"{where}: cannot read the recorded outputs {path.name}: {exc}") from exc
    if want is None:
        return  # the export did not record this format (older exporter): shape checks only
    if want.shape != emb.shape:
        raise BackendError(f"{where}: recorded outputs have shape {want.shape}, got {emb.shape}")
    scale = np.maximum(np.linalg.norm(want, axis=1), 1e-3)
    error = np.linalg.norm(emb - want, axis=1) / scale  # relative, per window
    if error.max() > SELF_TEST_TOLERANCE:
        raise BackendError(
            f"{where}: the {encoder} encoder does not reproduce the exported outputs (relative "
            f"error {error.max():.3f} > {SELF_TEST_TOLERANCE}); this runtime computes something "
            "else: try another backend or precision, or re-export"
        )

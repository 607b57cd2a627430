"""Encoder runtimes behind one interface; the TOML's `inference.backend` picks one.

backend = load_backend(folder, manifest, "onnx", threads=2)   # verified bundle folder
embeddings = backend.embed(windows)                            # (N, 1, W) -> (N, D)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_agent.backends.base import Backend, BackendError, encoder_format
from edge_agent.backends.onnx import OnnxBackend
from edge_agent.backends.tflite import TfliteBackend
from edge_agent.contract.bundle import BundleError, Manifest

logger = logging.getLogger(__name__)

BACKENDS: dict[str, type] = {"onnx": OnnxBackend, "tflite": TfliteBackend}

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendError",
    "OnnxBackend",
    "TfliteBackend",
    "encoder_format",
    "load_backend",
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

    onnx runs `int8.onnx` (precision="fp32": `fp32.onnx`); tflite runs `int8.tflite`.
    providers: onnxruntime execution providers (onnx only). Sets `backend.warmup_ms`.
    Raises BackendError for an unknown name, a missing encoder or runtime, or an encoder whose
    output does not match the manifest's embedding_dim.
    """
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
    if name == "tflite" and precision != "int8":
        raise BackendError(f"tflite backend only runs int8 encoders, not {precision!r}")
    fmt = encoder_format(name, precision)
    try:
        entry = manifest.encoder(fmt)
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

"""ONNX Runtime backend: fp32 or QDQ-int8 encoders, CPU by default (CUDA/TensorRT on Jetson)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edge_agent.backends.base import BackendError, check_model_file, check_windows
from edge_agent.contract.bundle import Quantization

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "onnx backend needs onnxruntime: pip install onnxruntime "
    "(Jetson: the onnxruntime-gpu wheel for your JetPack)"
)


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendError(f"{INSTALL_HINT} ({exc})") from exc
    return onnxruntime


class OnnxBackend:
    """onnxruntime session with `threads` intra-op threads and one inter-op thread.

    Runs the batch in one call (or window by window when the model has a fixed batch of 1).
    A model with int8 input/output is (de)quantized with `quantization`.
    """

    name: ClassVar[str] = "onnx"

    def __init__(
        self,
        path: Path,
        threads: int = 1,
        quantization: Quantization | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        ort = import_onnxruntime()
        path = check_model_file(path, self.name)
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        available = ort.get_available_providers()
        missing = [p for p in providers if p not in available]
        if missing:
            raise BackendError(
                f"onnx backend: execution provider(s) {missing} are not in this onnxruntime "
                f"build; available: {available}. Fix inference.providers"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=options, providers=list(providers)
            )
        except Exception as exc:  # onnxruntime raises its own (pybind) exception types
            raise BackendError(
                f"{path}: onnxruntime cannot load this model ({exc}); re-export the bundle"
            ) from exc
        self.path, self.threads, self.quantization = path, threads, quantization
        self.providers = self.session.get_providers()
        model_input = self.session.get_inputs()[0]
        model_output = self.session.get_outputs()[0]
        self.input_name = model_input.name
        self.input_int8 = model_input.type == "tensor(int8)"
        self.output_int8 = model_output.type == "tensor(int8)"
        batch, window = model_input.shape[0], model_input.shape[-1]
        self.fixed_batch = batch if isinstance(batch, int) else None
        self.window = window if isinstance(window, int) else None
        if (self.input_int8 or self.output_int8) and quantization is None:
            raise BackendError(
                f"{path}: the model has int8 input/output but the manifest gives no "
                "quantization parameters; re-export the bundle"
            )

    def embed(self, windows: np.ndarray) -> np.ndarray:
        """float32 (N, 1, W) -> float32 (N, D)."""
        x = check_windows(windows)
        if self.window is not None and x.shape[2] != self.window:
            raise ValueError(
                f"model expects windows of {self.window} samples, got {x.shape[2]}; "
                "the bundle's preprocessing.window must match"
            )
        if self.fixed_batch is not None and self.fixed_batch != len(x):
            if self.fixed_batch != 1:
                raise ValueError(
                    f"model has a fixed batch of {self.fixed_batch}, got {len(x)} windows"
                )
            return np.concatenate([self._run(x[i : i + 1]) for i in range(len(x))])
        return self._run(x)

    def _run(self, x: np.ndarray) -> np.ndarray:
        q = self.quantization
        feed = x
        if self.input_int8 and q is not None:
            scaled = np.round(x / q.input_scale) + q.input_zero_point
            feed = np.clip(scaled, -128, 127).astype(np.int8)
        out = self.session.run(None, {self.input_name: feed})[0]
        if self.output_int8 and q is not None:
            out = (out.astype(np.float32) - q.output_zero_point) * np.float32(q.output_scale)
        return np.asarray(out, dtype=np.float32).reshape(len(x), -1)

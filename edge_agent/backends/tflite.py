"""LiteRT (TFLite) backend for full-integer int8 encoders: batch 1, quantize in, dequantize out."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edge_agent.backends.base import BackendError, check_model_file, check_windows
from edge_agent.contract.bundle import Quantization

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "tflite backend needs ai-edge-litert: pip install ai-edge-litert (or tflite-runtime on numpy<2)"
)


def import_interpreter() -> Any:
    """The Interpreter class of ai-edge-litert, else tflite-runtime; BackendError if neither."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as exc:
            raise BackendError(f"{INSTALL_HINT} ({exc})") from exc
    return Interpreter


class TfliteBackend:
    """Runs a .tflite encoder one window at a time (the exported graph has batch 1).

    int8 input: q = clip(round(x / scale) + zero_point); int8 output: (q - zero_point) * scale.
    Scales come from the interpreter; the manifest's `quantization` fills in if it has none.
    """

    name: ClassVar[str] = "tflite"

    def __init__(
        self, path: Path, threads: int = 1, quantization: Quantization | None = None
    ) -> None:
        interpreter_cls = import_interpreter()
        path = check_model_file(path, self.name)
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        try:
            self.interpreter = interpreter_cls(model_path=str(path), num_threads=threads)
            self.interpreter.allocate_tensors()
        except Exception as exc:  # the runtime raises plain ValueError/RuntimeError
            raise BackendError(
                f"{path}: the TFLite runtime cannot load this model ({exc}); re-export the bundle"
            ) from exc
        self.path, self.threads = path, threads
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        if int(self.input["shape"][0]) != 1:
            shape = [1, *[int(s) for s in self.input["shape"][1:]]]
            self.interpreter.resize_tensor_input(self.input["index"], shape)
            self.interpreter.allocate_tensors()
            self.input = self.interpreter.get_input_details()[0]
        self.input_shape = tuple(int(s) for s in self.input["shape"])
        self.in_scale, self.in_zp = self._qparams(self.input, quantization, "input", path)
        self.out_scale, self.out_zp = self._qparams(self.output, quantization, "output", path)

    @staticmethod
    def _qparams(
        detail: dict, manifest: Quantization | None, which: str, path: Path
    ) -> tuple[float, int]:
        """(scale, zero_point) of an int8/uint8 tensor; (0.0, 0) for a float tensor."""
        if detail["dtype"] not in (np.int8, np.uint8):
            return 0.0, 0
        scale, zero_point = detail["quantization"]
        recorded = (
            (getattr(manifest, f"{which}_scale"), getattr(manifest, f"{which}_zero_point"))
            if manifest is not None
            else None
        )
        if scale > 0:
            if recorded is not None and not np.isclose(recorded[0], scale, rtol=1e-5):
                logger.warning(
                    "%s: %s scale %.6g in the model differs from %.6g in the manifest; "
                    "using the model's",
                    path.name,
                    which,
                    scale,
                    recorded[0],
                )
            return float(scale), int(zero_point)
        if recorded is None:
            raise BackendError(
                f"{path}: int8 {which} has no scale in the model or the manifest; "
                "re-export the bundle"
            )
        return float(recorded[0]), int(recorded[1])

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        dtype = self.input["dtype"]
        if dtype not in (np.int8, np.uint8):
            return x.astype(dtype)
        info = np.iinfo(dtype)
        scaled = np.round(x / self.in_scale) + self.in_zp
        return np.clip(scaled, info.min, info.max).astype(dtype)

    def embed(self, windows: np.ndarray) -> np.ndarray:
        """float32 (N, 1, W) -> float32 (N, D)."""
        x = check_windows(windows)
        per_window = int(np.prod(self.input_shape))
        if x.shape[1] * x.shape[2] != per_window:
            raise ValueError(
                f"model expects windows of shape {self.input_shape[1:]}, got {x.shape[1:]}; "
                "the bundle's preprocessing.window must match"
            )
        out = []
        for i in range(len(x)):
            self.interpreter.set_tensor(
                self.input["index"], self._quantize(x[i].reshape(self.input_shape))
            )
            self.interpreter.invoke()
            out.append(self.interpreter.get_tensor(self.output["index"]).reshape(-1))
        y = np.stack(out)
        if self.output["dtype"] in (np.int8, np.uint8):
            y = (y.astype(np.float32) - self.out_zp) * np.float32(self.out_scale)
        return y.astype(np.float32, copy=False)

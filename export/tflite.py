"""Full-integer INT8 TFLite export with litert-torch (PT2E quantization) and its runner.

The encoder is captured with `torch.export` at a fixed batch of 1, annotated by litert-torch's
`PT2EQuantizer` (per-channel symmetric int8 weights, int8 activations), calibrated window by
window (batch 1) and converted with `litert_torch.convert(..., quant_config=QuantConfig(...))`.
The result takes int8 input and gives int8 output: real = scale * (q - zero_point), with the
scales read back from the interpreter and recorded in the bundle manifest.

litert-torch is the optional `tflite` extra; without it the exporter raises MissingDependency.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_agent.contract.bundle import Quantization
from export.errors import ExportError, MissingDependency

logger = logging.getLogger(__name__)

INSTALL_HINT = "tflite-int8 needs litert-torch: pip install 'faultwatch[tflite]'"
RUNTIME_HINT = "running tflite-int8 needs ai-edge-litert: pip install 'faultwatch[tflite]'"


class _DropHarmless(logging.Filter):
    """Drop a library logger's records that contain one of `fragments` (known, harmless)."""

    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(f in message for f in self.fragments)


# Importing torchao logs "Failed to load .../_C_*.so" for optional CUDA/other-ABI kernels that
# CPU PT2E quantization never uses, and torch warns that torchao registers an Enum as a pytree
# constant. Both read like breakage on our CLI; everything else from these loggers still shows.
logging.getLogger("torchao").addFilter(_DropHarmless("Failed to load "))
logging.getLogger("torch.utils._pytree").addFilter(_DropHarmless("is an Enum subclass"))


def export_tflite_int8(
    encoder: torch.nn.Module, path: Path, calibration: np.ndarray
) -> Quantization:
    """Convert `encoder` to a full-integer .tflite at `path`; return its input/output qparams.

    calibration: (N, 1, W) float32 normalized windows, fed one at a time (batch 1).
    """
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")  # no progress chatter on our CLI
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # converter's C++ INFO lines; warnings stay
    try:
        import litert_torch
        from litert_torch.quantize.pt2e_quantizer import (
            PT2EQuantizer,
            get_symmetric_quantization_config,
        )
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as exc:
        raise MissingDependency(INSTALL_HINT) from exc

    windows = np.ascontiguousarray(calibration, dtype=np.float32)
    model = copy.deepcopy(encoder).cpu().eval()
    sample = (torch.from_numpy(windows[:1]),)
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch pytree deprecation chatter
        captured = torch.export.export(model, sample).module()  # BN folds in prepare_pt2e
        prepared = prepare_pt2e(captured, quantizer)
        for i in range(len(windows)):
            prepared(torch.from_numpy(windows[i : i + 1]))
        quantized = move_exported_model_to_eval(convert_pt2e(prepared, fold_quantize=False))
        # Exported graph modules refuse .eval(); the graph already has eval semantics, so
        # clear the flag litert-torch checks before warning about "training mode".
        quantized.training = False
        edge_model = litert_torch.convert(
            quantized, sample, quant_config=QuantConfig(pt2e_quantizer=quantizer)
        )
    edge_model.export(str(path))
    interpreter = load_interpreter(path)
    _require_int8_io(interpreter, path)
    return read_quantization(interpreter)


def load_interpreter(path: Path, num_threads: int = 1) -> Any:
    """A TFLite interpreter from ai-edge-litert (or tflite-runtime), tensors allocated."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as exc:
            raise MissingDependency(RUNTIME_HINT) from exc
    interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter


def _require_int8_io(interpreter: Any, path: Path) -> None:
    kinds = [d["dtype"] for d in interpreter.get_input_details() + interpreter.get_output_details()]
    if any(k != np.int8 for k in kinds):
        names = [np.dtype(k).name for k in kinds]
        raise ExportError(
            f"{Path(path).name}: expected int8 input and output, got {names}; "
            "this litert-torch version does not quantize the model interface (use 0.10.0)"
        )


def read_quantization(interpreter: Any) -> Quantization:
    """Scale and zero point of the model's int8 input and output (real = scale * (q - zp))."""
    (in_scale, in_zp) = interpreter.get_input_details()[0]["quantization"]
    (out_scale, out_zp) = interpreter.get_output_details()[0]["quantization"]
    return Quantization(
        input_scale=float(in_scale),
        input_zero_point=int(in_zp),
        output_scale=float(out_scale),
        output_zero_point=int(out_zp),
    )


class TfliteInt8Runner:
    """Runs a full-integer encoder one window at a time: (N, 1, W) float32 -> (N, D) float32.

    Windows are quantized with the model's input scale/zero point (round, clip to int8) and
    embeddings dequantized with the output ones.
    """

    def __init__(self, path: Path, num_threads: int = 1) -> None:
        self.interpreter = load_interpreter(path, num_threads)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.quantization = read_quantization(self.interpreter)

    def quantize(self, windows: np.ndarray) -> np.ndarray:
        q = self.quantization
        scaled = np.round(np.asarray(windows, np.float32) / q.input_scale) + q.input_zero_point
        return np.clip(scaled, -128, 127).astype(np.int8)

    def run_one(self, window_q: np.ndarray) -> np.ndarray:
        """(1, 1, W) int8 -> (1, D) int8, the model's raw output."""
        self.interpreter.set_tensor(self.input["index"], window_q)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])

    def embed(self, windows: np.ndarray) -> np.ndarray:
        q = self.quantization
        x = self.quantize(windows)
        out = np.concatenate([self.run_one(x[i : i + 1]) for i in range(len(x))])
        return (out.astype(np.float32) - q.output_zero_point) * np.float32(q.output_scale)

"""Static INT8 quantization of the FP32 ONNX encoder with onnxruntime.

`quant_pre_process` (shape inference + graph cleanup), then `quantize_static` in QDQ format with
per-channel int8 weights and int8 activations, calibrated on representative normalized windows.
The quantized model keeps float32 input and output, so it is a drop-in for the FP32 file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from enum import Enum
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization import CalibrationMethod as OrtCalibrationMethod
from onnxruntime.quantization.shape_inference import quant_pre_process

from export.errors import ExportError

logger = logging.getLogger(__name__)

DEFAULT_CALIBRATION_CAP = 512


class CalibrationMethod(str, Enum):
    """How activation ranges are chosen from the calibration windows."""

    minmax = "minmax"  # full observed range: nothing clips, coarser steps
    entropy = "entropy"  # KL-divergence-optimal clipping of each histogram
    percentile = "percentile"  # clip at the 99.999th percentile

    def to_ort(self) -> OrtCalibrationMethod:
        return {
            CalibrationMethod.minmax: OrtCalibrationMethod.MinMax,
            CalibrationMethod.entropy: OrtCalibrationMethod.Entropy,
            CalibrationMethod.percentile: OrtCalibrationMethod.Percentile,
        }[self]


def select_calibration(
    windows: np.ndarray, cap: int = DEFAULT_CALIBRATION_CAP, seed: int = 0
) -> np.ndarray:
    """Pick at most `cap` windows (N, 1, W), deterministically, keeping the file's order.

    calibration.npz already mixes every class and operating condition of the training pool, so
    a seeded uniform subset (not the first `cap`, which may be one class) stays representative.
    """
    x = np.asarray(windows, dtype=np.float32)
    if x.ndim != 3 or x.shape[1] != 1:
        raise ExportError(f"calibration windows must be (N, 1, W), got shape {x.shape}")
    if len(x) == 0:
        raise ExportError("calibration.npz holds no windows; re-run fine-tuning to write it")
    if cap < 1:
        raise ExportError(f"calibration cap must be >= 1, got {cap}")
    if not np.isfinite(x).all():
        raise ExportError("calibration windows contain NaN or inf; check calibration.npz")
    if len(x) <= cap:
        return x
    keep = np.sort(np.random.default_rng(seed).choice(len(x), size=cap, replace=False))
    return x[keep]


class WindowReader(CalibrationDataReader):
    """Feeds calibration windows to onnxruntime in batches: {'window': (B, 1, W) float32}."""

    def __init__(self, windows: np.ndarray, input_name: str = "window", batch: int = 64) -> None:
        self.windows = np.ascontiguousarray(windows, dtype=np.float32)
        self.input_name, self.batch = input_name, batch
        self.start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.start >= len(self.windows):
            return None
        chunk = self.windows[self.start : self.start + self.batch]
        self.start += self.batch
        return {self.input_name: chunk}

    def rewind(self) -> None:
        self.start = 0


def quantize_onnx(
    fp32_path: Path,
    out_path: Path,
    calibration: np.ndarray,
    method: CalibrationMethod | str = CalibrationMethod.minmax,
) -> Path:
    """FP32 ONNX -> static INT8 QDQ ONNX at `out_path`, calibrated on (N, 1, W) windows."""
    method = CalibrationMethod(method)
    with tempfile.TemporaryDirectory(prefix="faultwatch-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        # Entropy/Percentile calibrators print progress to stdout; keep CLI output clean.
        with contextlib.redirect_stdout(io.StringIO()) as chatter:
            quantize_static(
                str(prepared),
                str(out_path),
                WindowReader(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=method.to_ort(),
                calibration_providers=["CPUExecutionProvider"],
            )
        logger.debug("quantize_static said: %s", chatter.getvalue().strip())
    return Path(out_path)

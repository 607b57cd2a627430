"""FP32 ONNX export of the encoder: window (N, 1, W) float32 -> embedding (N, D) float32.

Uses torch's `torch.export`-based exporter (the default since torch 2.9; the TorchScript one is
deprecated). Its optimizer folds eval-mode BatchNorm into the convolutions. The opset is fixed
at 18: the lowest this exporter implements (asking for 17 triggers a version conversion that
fails on ReduceMean), and onnxruntime's static quantization handles it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export.errors import ExportError

logger = logging.getLogger(__name__)

OPSET = 18
INPUT_NAME = "window"
OUTPUT_NAME = "embedding"


def export_onnx(
    encoder: torch.nn.Module,
    path: Path,
    window: int,
    check_windows: np.ndarray | None = None,
) -> float | None:
    """Write `encoder` (eval mode, on CPU) to `path`; check it; return max |onnx - torch|.

    The batch axis is dynamic. With `check_windows` (N, 1, window) both models run on them and an
    output differing by more than 1e-4 (relative to the output's magnitude) raises ExportError.
    """
    model = copy.deepcopy(encoder).cpu().eval()
    example = torch.zeros(2, 1, window)  # batch 2: a batch of 1 would be specialized away
    batch = torch.export.Dim("batch", min=1)
    path = Path(path)
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)  # "torchvision is not installed" is not our concern
    try:
        with contextlib.redirect_stdout(io.StringIO()) as chatter, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch pytree deprecation chatter
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=OPSET,
                dynamo=True,
                dynamic_shapes=({0: batch},),
                optimize=True,
                external_data=False,
                verbose=False,
            )
    finally:
        registration.setLevel(level)
    logger.debug("torch.onnx.export said: %s", chatter.getvalue().strip())
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    if check_windows is None or len(check_windows) == 0:
        return None
    return _compare_with_torch(model, path, check_windows)


def _compare_with_torch(model: torch.nn.Module, path: Path, windows: np.ndarray) -> float:
    with torch.no_grad():
        expected = model(torch.from_numpy(np.ascontiguousarray(windows, np.float32))).numpy()
    actual = embed_onnx(onnx_session(path), windows)
    diff = float(np.abs(actual - expected).max())
    tolerance = 1e-4 * max(1.0, float(np.abs(expected).max()))
    if not diff <= tolerance:
        raise ExportError(
            f"{path.name}: ONNX output differs from torch by {diff:.2e} (tolerance "
            f"{tolerance:.1e}) on {len(windows)} held-out windows; the export is wrong, "
            "please report it with the checkpoint"
        )
    return diff


def onnx_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    """A CPU onnxruntime session; `threads=1` pins intra- and inter-op pools to one thread."""
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def embed_onnx(session: ort.InferenceSession, windows: np.ndarray, batch: int = 256) -> np.ndarray:
    """(N, 1, W) float32 -> (N, D) float32 embeddings, in chunks of `batch` windows."""
    x = np.ascontiguousarray(windows, dtype=np.float32)
    name = session.get_inputs()[0].name
    chunks = [session.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(chunks).astype(np.float32, copy=False)

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from export.bundle import load_run
from export.formats import ExportError
from export.onnx import embed_onnx, onnx_session
from export.parity import compare, embed_torch, gate
from export.quantize import CalibrationMethod, quantize_onnx, select_calibration


def _labelled_windows(n: int) -> np.ndarray:
    """Windows whose first sample is their row index, so a subset can be traced back."""
    x = np.zeros((n, 1, 16), np.float32)
    x[:, 0, 0] = np.arange(n)
    return x


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), cap=st.integers(1, 200))
def test_calibration_subset_is_capped_deterministic_and_ordered(n, cap):
    x = _labelled_windows(n)
    picked = select_calibration(x, cap)
    rows = picked[:, 0, 0].astype(int)
    assert len(picked) == min(n, cap)
    assert np.all(np.diff(rows) > 0)  # distinct rows, in file order
    np.testing.assert_array_equal(select_calibration(x, cap), picked)


def test_calibration_subset_covers_a_class_sorted_file():
    x = _labelled_windows(4000)  # imagine 4 classes of 1000 windows, sorted by class
    classes = select_calibration(x, 512)[:, 0, 0].astype(int) // 1000
    assert np.bincount(classes, minlength=4).min() > 80


@pytest.mark.parametrize(
    ("windows", "message"),
    [
        (np.zeros((0, 1, 16), np.float32), "no windows"),
        (np.zeros((4, 16), np.float32), "must be \\(N, 1, W\\)"),
        (np.full((4, 1, 16), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_calibration_windows_are_refused(windows, message):
    with pytest.raises(ExportError, match=message):
        select_calibration(windows)


def _agreement(run, path: Path) -> tuple[float, float]:
    reference = embed_torch(run.encoder, run.heldout_x)
    emb = embed_onnx(onnx_session(path), run.heldout_x)
    report = compare(reference, {"int8": emb}, run.head, run.heldout_y)
    return report.models[0].agreement, report.models[0].cosine_mean


def test_bundle_int8_onnx_is_qdq_int8_and_agrees_with_torch(exported, run_dir):
    path = exported["folder"] / "encoder.int8.onnx"
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    int8_weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 4  # three convolutions and the linear layer
    agreement, cosine = _agreement(load_run(run_dir), path)
    assert agreement >= 0.97
    assert cosine > 0.99


@pytest.mark.parametrize("method", [CalibrationMethod.entropy, CalibrationMethod.percentile])
def test_other_calibration_methods_give_working_models(method, exported, run_dir, tmp_path):
    run = load_run(run_dir)
    out = quantize_onnx(
        exported["folder"] / "encoder.fp32.onnx", tmp_path / "q.onnx", run.calibration, method
    )
    agreement, _ = _agreement(run, out)
    assert agreement >= 0.95


def test_gate_fails_when_calibrated_on_unnormalized_windows(exported, run_dir, tmp_path):
    """Calibrating on windows in g (x 1e-3) instead of z-scores clips every real input."""
    run = load_run(run_dir)
    out = quantize_onnx(
        exported["folder"] / "encoder.fp32.onnx", tmp_path / "bad.onnx", run.calibration * 1e-3
    )
    reference = embed_torch(run.encoder, run.heldout_x)
    emb = embed_onnx(onnx_session(out), run.heldout_x)
    failures = gate(compare(reference, {"onnx-int8": emb}, run.head, run.heldout_y))
    assert any(f.startswith("onnx-int8: agreement with fp32") for f in failures)
    assert any(f.startswith("onnx-int8: accuracy drop") for f in failures)

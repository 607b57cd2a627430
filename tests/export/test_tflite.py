from __future__ import annotations

import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_agent.contract.bundle import verify
from export.bundle import load_run
from export.cli import app
from export.formats import MissingDependency
from export.parity import compare, embed_torch
from export.tflite import INSTALL_HINT, TfliteInt8Runner, export_tflite_int8, load_interpreter


def test_tflite_is_full_integer_batch_one_with_recorded_qparams(exported):
    path = exported["folder"] / "encoder.int8.tflite"
    interpreter = load_interpreter(path)
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    assert list(inp["shape"]) == [1, 1, 512] and list(out["shape"]) == [1, 32]
    recorded = verify(exported["folder"]).encoder("int8.tflite")
    assert recorded.batch == "1"
    assert recorded.quantization.input_scale == pytest.approx(inp["quantization"][0])
    assert recorded.quantization.input_zero_point == inp["quantization"][1]
    assert recorded.quantization.output_scale == pytest.approx(out["quantization"][0])
    assert recorded.quantization.output_zero_point == out["quantization"][1]


def test_tflite_decisions_agree_with_torch_on_heldout_windows(exported, run_dir):
    run = load_run(run_dir)
    runner = TfliteInt8Runner(exported["folder"] / "encoder.int8.tflite")
    emb = runner.embed(run.heldout_x)
    report = compare(embed_torch(run.encoder, run.heldout_x), {"t": emb}, run.head, run.heldout_y)
    assert report.models[0].agreement >= 0.97
    assert report.models[0].cosine_mean > 0.99


def test_input_quantization_rounds_and_saturates(exported):
    runner = TfliteInt8Runner(exported["folder"] / "encoder.int8.tflite")
    q = runner.quantization
    x = np.array([0.0, q.input_scale, 1e6, -1e6], np.float32)
    assert runner.quantize(x).tolist() == [
        q.input_zero_point,
        q.input_zero_point + 1,
        127,
        -128,
    ]


def test_missing_litert_torch_gives_the_install_hint(monkeypatch, run_dir, tmp_path):
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # import litert_torch -> ImportError
    run = load_run(run_dir)
    with pytest.raises(MissingDependency, match="pip install 'faultwatch\\[tflite\\]'"):
        export_tflite_int8(run.encoder, tmp_path / "x.tflite", run.calibration)


def test_cli_without_litert_torch_still_writes_the_onnx_bundle(monkeypatch, run_dir, tmp_path):
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    args = ["--checkpoint", str(run_dir), "--out", str(tmp_path), "--formats", "onnx,tflite-int8"]
    result = CliRunner().invoke(app, [*args, "--name", "m", "--version", "2"])
    assert result.exit_code == 0, result.output
    assert INSTALL_HINT in result.output
    manifest = verify(tmp_path / "m-2")
    assert [e.format for e in manifest.encoders] == ["fp32.onnx"]
    assert (tmp_path / "m-2.tar.gz").is_file()

from __future__ import annotations

import numpy as np
import onnx
import torch

from export.bundle import load_run
from export.onnx import INPUT_NAME, OPSET, OUTPUT_NAME, embed_onnx, onnx_session


def test_fp32_onnx_matches_torch_on_heldout_windows(exported, run_dir):
    run = load_run(run_dir)
    with torch.no_grad():
        expected = run.encoder(torch.from_numpy(run.heldout_x)).numpy()
    actual = embed_onnx(onnx_session(exported["folder"] / "encoder.fp32.onnx"), run.heldout_x)
    assert actual.shape == expected.shape == (len(run.heldout_x), 32)
    assert np.abs(actual - expected).max() < 1e-4


def test_fp32_onnx_has_named_io_dynamic_batch_and_folded_batchnorm(exported, run_dir):
    path = exported["folder"] / "encoder.fp32.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    ops = {n.op_type for n in model.graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops

    session = onnx_session(path, threads=1)
    assert [i.name for i in session.get_inputs()] == [INPUT_NAME]
    assert [o.name for o in session.get_outputs()] == [OUTPUT_NAME]
    windows = load_run(run_dir).heldout_x
    one = session.run(None, {INPUT_NAME: windows[:1]})[0]
    seven = session.run(None, {INPUT_NAME: windows[:7]})[0]
    assert one.shape == (1, 32) and seven.shape == (7, 32)
    np.testing.assert_allclose(one[0], seven[0], atol=1e-5)
